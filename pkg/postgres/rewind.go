package postgres

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// TimelineSwitch is one line of a timeline history file: timeline TimeLineID
// ended at SwitchLSN, where the next timeline of the history begins.
type TimelineSwitch struct {
	TimeLineID uint32
	SwitchLSN  LSN
}

// parseTimelineHistory parses a timeline history file: lines of
// "<parent tli> <switch point> <reason>", comments (#) and blank lines.
func parseTimelineHistory(content string) ([]TimelineSwitch, error) {
	var h []TimelineSwitch
	for i, line := range strings.Split(content, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 2 {
			return nil, fmt.Errorf("timeline history line %d: %q has no switch point", i+1, line)
		}
		tli, err := strconv.ParseUint(f[0], 10, 32)
		if err != nil || tli == 0 {
			return nil, fmt.Errorf("timeline history line %d: bad timeline %q", i+1, f[0])
		}
		lsn, err := ParseLSN(f[1])
		if err != nil {
			return nil, fmt.Errorf("timeline history line %d: %w", i+1, err)
		}
		if n := len(h); n > 0 && (uint32(tli) <= h[n-1].TimeLineID || lsn < h[n-1].SwitchLSN) {
			return nil, fmt.Errorf("timeline history line %d: timelines or switch points go backwards", i+1)
		}
		h = append(h, TimelineSwitch{TimeLineID: uint32(tli), SwitchLSN: lsn})
	}
	return h, nil
}

// SourceTimeline is where a server's WAL stands, as its walsender tells.
type SourceTimeline struct {
	SystemIdentifier uint64
	// TimeLineID is the timeline the server writes (or, on a standby, replays).
	TimeLineID uint32
	// FlushLSN is IDENTIFY_SYSTEM's xlogpos: WAL flushed on the server.
	FlushLSN LSN
	// History is the history of TimeLineID, oldest first; nil on timeline 1.
	History []TimelineSwitch
}

// IdentifySource asks a server over a physical replication connection, as
// user with the password from passfile (looked up as libpq does for a
// replication connection), for its system identifier, timeline and flushed
// WAL (IDENTIFY_SYSTEM) and its timeline's history (TIMELINE_HISTORY). The
// replication role needs nothing else. The connection uses no TLS and SCRAM
// only, like ConnConfig; PG* environment variables do not steer it.
func IdentifySource(ctx context.Context, host string, port int, user, passfile string) (SourceTimeline, error) {
	fail := func(err error) (SourceTimeline, error) {
		return SourceTimeline{}, fmt.Errorf("cannot identify the timeline of %s:%d: %w", host, port, err)
	}
	if err := checkUpstream(host, port, user, passfile); err != nil {
		return fail(err)
	}
	if err := checkPassfile(passfile); err != nil {
		return fail(err)
	}
	password, err := passfileLookup(passfile, host, port, "replication", user)
	if err != nil {
		return fail(err)
	}
	dsn := fmt.Sprintf("host=%s port=%d user=%s dbname=replication sslmode=disable connect_timeout=%d target_session_attrs=any require_auth=scram-sha-256",
		quoteDSN(host), port, quoteDSN(user), toolConnectTimeout)
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return fail(err)
	}
	cfg.Password = password
	cfg.TLSConfig = nil
	cfg.Fallbacks = nil
	cfg.ValidateConnect = nil
	cfg.RuntimeParams = map[string]string{"replication": "true", "application_name": ApplicationName}
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return fail(err)
	}
	defer conn.Close(context.WithoutCancel(ctx))

	row, err := replicationCommandRow(ctx, conn, "IDENTIFY_SYSTEM", 3)
	if err != nil {
		return fail(err)
	}
	var st SourceTimeline
	sysid, err1 := strconv.ParseUint(string(row[0]), 10, 64)
	tli, err2 := strconv.ParseUint(string(row[1]), 10, 32)
	flush, err3 := ParseLSN(string(row[2]))
	if err := errors.Join(err1, err2, err3); err != nil {
		return fail(fmt.Errorf("unexpected IDENTIFY_SYSTEM answer: %w", err))
	}
	st.SystemIdentifier, st.TimeLineID, st.FlushLSN = sysid, uint32(tli), flush
	if st.TimeLineID > 1 {
		row, err := replicationCommandRow(ctx, conn, fmt.Sprintf("TIMELINE_HISTORY %d", st.TimeLineID), 2)
		if err != nil {
			return fail(err)
		}
		if st.History, err = parseTimelineHistory(string(row[1])); err != nil {
			return fail(err)
		}
	}
	return st, nil
}

// replicationCommandRow runs a replication command and returns its one row.
func replicationCommandRow(ctx context.Context, conn *pgconn.PgConn, command string, minColumns int) ([][]byte, error) {
	results, err := conn.Exec(ctx, command).ReadAll()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", command, err)
	}
	if len(results) != 1 || len(results[0].Rows) != 1 || len(results[0].Rows[0]) < minColumns {
		return nil, fmt.Errorf("%s: unexpected answer", command)
	}
	return results[0].Rows[0], nil
}

// NotShutDownError: NeedsRewind needs the end of the local WAL, which is
// known only for a primary that was shut down cleanly (state "shut down").
type NotShutDownError struct{ State ClusterState }

func (e *NotShutDownError) Error() string {
	return fmt.Sprintf("the data directory is %q, not cleanly shut down as a primary: the end of its WAL is unknown", e.State)
}

// SystemMismatchError: the two servers are not copies of one cluster;
// neither streaming nor pg_rewind can join them, only a fresh clone.
type SystemMismatchError struct{ Local, Source uint64 }

func (e *SystemMismatchError) Error() string {
	return fmt.Sprintf("the data directory belongs to database system %d, the source is %d", e.Local, e.Source)
}

// NeedsRewind decides whether a former primary, cleanly shut down (local,
// from ReadControlData), can stream from source as it is, or must first be
// rewound (Rewind). The rule:
//
//  1. Every switch in the local history must be in the source's history, at
//     the same LSN: otherwise the timelines were made independently, and the
//     local data diverged.
//  2. Local and source on the same timeline: rewind only if the local WAL
//     ends after the source's flushed WAL (local.FinalLSN > source.FlushLSN).
//     Like pg_rewind, this trusts that one timeline has one history, which
//     holds as long as only promotion makes a writer (pgwarden promotes only
//     under the primary Lease).
//  3. Otherwise the source's history must list the local timeline, and the
//     local WAL must end at or before the point where the source left it:
//     rewind if local.FinalLSN > that switch point, or if it is not listed.
//
// In a clean switchover the standby received the old primary's shutdown
// checkpoint and promoted right after it, so the switch point equals
// FinalLSN: no rewind. A primary that wrote on after the standby's promotion,
// or whose last WAL the standby never received, ends after the switch point:
// rewind. A local state other than "shut down" gives a *NotShutDownError
// (rewinding is then the safe choice: pg_rewind finds itself that nothing
// needs doing), different systems a *SystemMismatchError (re-clone).
func NeedsRewind(local ControlData, source SourceTimeline) (bool, error) {
	if local.State != StateShutDown {
		return false, &NotShutDownError{State: local.State}
	}
	if local.SystemIdentifier != source.SystemIdentifier {
		return false, &SystemMismatchError{Local: local.SystemIdentifier, Source: source.SystemIdentifier}
	}
	switchOf := func(tli uint32) (LSN, bool) {
		for _, s := range source.History {
			if s.TimeLineID == tli {
				return s.SwitchLSN, true
			}
		}
		return 0, false
	}
	for _, s := range local.History {
		if at, ok := switchOf(s.TimeLineID); !ok || at != s.SwitchLSN {
			return true, nil
		}
	}
	if local.TimeLineID == source.TimeLineID {
		return local.FinalLSN > source.FlushLSN, nil
	}
	at, ok := switchOf(local.TimeLineID)
	return !ok || local.FinalLSN > at, nil
}

// RewindOptions are the inputs of Rewind.
type RewindOptions struct {
	// DataDir is the former primary's data directory, with no postgres running on it.
	DataDir string
	// SourceHost and SourcePort are the server to rewind to (the new primary).
	SourceHost string
	SourcePort int
	// User is the replication role (EnsureReplicationRole grants it what
	// pg_rewind needs); Passfile (absolute) holds its password and must be
	// readable by RunAs.
	User     string
	Passfile string
	// RunAs runs pg_rewind and owns the files; nil runs as the current user,
	// which must then not be root.
	RunAs *User
}

// Rewind makes DataDir follow the source's timeline with pg_rewind, copying
// back what changed since the timelines forked; the source is connected to
// as User, database postgres, password from the passfile.
//
// The target should be shut down cleanly, as the manager does on demotion
// (fast shutdown). A target left in a crash state ("in production" after an
// immediate shutdown or a kill) is handed to pg_rewind as it is: since
// PostgreSQL 13 pg_rewind first runs `postgres --single` on it to finish crash
// recovery and shut it down cleanly (what --no-ensure-shutdown would skip,
// only to fail on such a target). Single-user mode refuses standby.signal,
// so a target in a crash state with standby.signal or recovery.signal is
// refused here before anything runs (a crashed standby needs no rewind: start
// it as a standby). When the timelines did not diverge, pg_rewind changes
// nothing and succeeds.
//
// pg_rewind copies the source's configuration files (pgwarden.conf,
// pg_hba.conf, postgresql.auto.conf, ...) and leaves a backup_label, so that
// the next start replays from the last common checkpoint. Before starting the
// server the caller must rewrite its own configuration (WriteConfig with
// StandbyConfig.Settings), check AutoConfOverrides and write standby.signal:
// started as a primary, it would leave recovery on the source's timeline and
// accept writes. If Rewind fails (a *CommandError with pg_rewind's output,
// never a password) the data directory may be half rewound: the fallback is
// to remove it and Clone.
func Rewind(ctx context.Context, bin Bin, opts RewindOptions) error {
	if err := checkRewind(ctx, bin, opts); err != nil {
		return fmt.Errorf("cannot rewind: %w", err)
	}
	_, err := runTool(ctx, bin, opts.RunAs, "pg_rewind",
		"--target-pgdata="+opts.DataDir,
		"--source-server="+libpqConninfo(opts.SourceHost, opts.SourcePort, opts.User, opts.Passfile, "postgres", ApplicationName),
	)
	if err != nil {
		return fmt.Errorf("cannot rewind %s to %s:%d: %w", opts.DataDir, opts.SourceHost, opts.SourcePort, err)
	}
	return nil
}

func checkRewind(ctx context.Context, bin Bin, opts RewindOptions) error {
	if !filepath.IsAbs(opts.DataDir) {
		return fmt.Errorf("data directory %q is not an absolute path", opts.DataDir)
	}
	if err := checkUpstream(opts.SourceHost, opts.SourcePort, opts.User, opts.Passfile); err != nil {
		return err
	}
	if err := checkPassfile(opts.Passfile); err != nil {
		return err
	}
	if opts.RunAs == nil && geteuid() == 0 {
		return errors.New("pg_rewind must not run as root: give the user to run it as")
	}
	if err := checkReplicationMajor(bin); err != nil {
		return err
	}
	if err := checkExecutable(bin.Path("pg_rewind")); err != nil {
		return err
	}
	state, err := InspectDataDir(opts.DataDir, bin.Major)
	if err != nil {
		return err
	}
	if state != Existing {
		return fmt.Errorf("data directory %s is %s", opts.DataDir, state)
	}
	cd, err := ReadControlData(ctx, bin, opts.DataDir, opts.RunAs)
	if err != nil {
		return err
	}
	if !cd.State.CleanlyShutDown() {
		for _, signal := range []string{StandbySignalFile, "recovery.signal"} {
			if _, err := os.Lstat(filepath.Join(opts.DataDir, signal)); err == nil {
				return fmt.Errorf("data directory %s is %q and has %s: pg_rewind's single-user crash recovery refuses it", opts.DataDir, cd.State, signal)
			}
		}
	}
	return nil
}
