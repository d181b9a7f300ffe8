package postgres

import (
	"github.com/pgwarden/pgwarden/pkg/statusapi"

	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// LSN is a write-ahead log location (pg_lsn); 0 is InvalidXLogRecPtr and
// stands for NULL in the results of this package.
type LSN uint64

// String formats l as PostgreSQL does: "16/B374D848".
func (l LSN) String() string { return fmt.Sprintf("%X/%X", uint32(l>>32), uint32(l)) }

// MarshalText makes an LSN appear as in PostgreSQL in JSON and logs.
func (l LSN) MarshalText() ([]byte, error) { return []byte(l.String()), nil }

// UnmarshalText parses the PostgreSQL form.
func (l *LSN) UnmarshalText(b []byte) error {
	v, err := ParseLSN(string(b))
	if err != nil {
		return err
	}
	*l = v
	return nil
}

// ParseLSN parses PostgreSQL's text form of a pg_lsn, "16/B374D848".
func ParseLSN(s string) (LSN, error) {
	v, err := statusapi.ParseLSN(s)
	return LSN(v), err
}

// parseNullLSN parses a pg_lsn selected as text; NULL gives 0.
func parseNullLSN(s *string) (LSN, error) {
	if s == nil {
		return 0, nil
	}
	return ParseLSN(*s)
}

// ReplicationRole is the name the manager gives its replication role.
const ReplicationRole = "pgwarden_replication"

// rewindFunctions are what pg_rewind calls on its source server; granting
// EXECUTE on them lets the replication role run pg_rewind without being a
// superuser (see the pg_rewind documentation).
var rewindFunctions = []string{
	"pg_catalog.pg_ls_dir(text, boolean, boolean)",
	"pg_catalog.pg_stat_file(text, boolean)",
	"pg_catalog.pg_read_binary_file(text)",
	"pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean)",
}

// quietSettings keep a statement out of the server's log for the rest of the
// transaction. Setting them needs a superuser (they are PGC_SUSET).
var quietSettings = []string{
	"SET LOCAL log_statement = 'none'",
	"SET LOCAL log_min_duration_statement = -1",
	"SET LOCAL log_min_duration_sample = -1",
	"SET LOCAL log_transaction_sample_rate = 0",
	"SET LOCAL log_min_error_statement = 'panic'",
}

// beginner is what *pgx.Conn, *pgxpool.Pool and pgx.Tx have to start a transaction.
type beginner interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

// EnsureReplicationRole creates the role name, or updates it, so that it is
// LOGIN REPLICATION NOSUPERUSER NOCREATEDB NOCREATEROLE without expiry, its
// password is password, and it may execute the functions pg_rewind calls on
// its source (so rewinding never needs the superuser). Run it on the primary
// as a superuser.
//
// The password never reaches the server: the SCRAM-SHA-256 verifier is
// computed here (ScramVerifier) and sent in CREATE/ALTER ROLE ... PASSWORD,
// which the server stores as it is. The stored verifier is left alone when it
// already matches password, so calling this at every start changes nothing.
// When q can begin a transaction (*pgx.Conn, *pgxpool.Pool, pgx.Tx), the
// statements run in one with statement logging switched off, so not even the
// verifier reaches the server's log; pg_stat_activity and extensions such as
// pg_stat_statements (track_utility) may still see the statement's text, which
// holds the verifier, never the password. (Given a pgx.Tx, the statements run
// in a savepoint, and statement logging stays off until that transaction ends.)
func EnsureReplicationRole(ctx context.Context, q Querier, name, password string) error {
	if err := validRoleName(name); err != nil {
		return fmt.Errorf("cannot ensure replication role: %w", err)
	}
	if password == "" {
		return fmt.Errorf("cannot ensure replication role %s: the password is empty", name)
	}
	if !scramPasswordExact(password) {
		return fmt.Errorf("cannot ensure replication role %s: %w", name, ErrPasswordNotASCII)
	}
	if b, ok := q.(beginner); ok {
		tx, err := b.Begin(ctx)
		if err != nil {
			return fmt.Errorf("cannot ensure replication role %s: %w", name, err)
		}
		defer tx.Rollback(context.WithoutCancel(ctx))
		for _, s := range quietSettings {
			if _, err := tx.Exec(ctx, s); err != nil {
				return fmt.Errorf("cannot ensure replication role %s: %w", name, err)
			}
		}
		// Local durability is enough, and waiting for a synchronous standby here would never end
		// while there is none: a new synchronous cluster's first primary creates this role before
		// any replica exists, and a replica needs it to clone.
		if _, err := tx.Exec(ctx, "SET LOCAL synchronous_commit = 'local'"); err != nil {
			return fmt.Errorf("cannot ensure replication role %s: %w", name, err)
		}
		if err := ensureReplicationRole(ctx, tx, name, password); err != nil {
			return err
		}
		if err := tx.Commit(ctx); err != nil {
			return fmt.Errorf("cannot ensure replication role %s: %w", name, err)
		}
		return nil
	}
	return ensureReplicationRole(ctx, q, name, password)
}

func ensureReplicationRole(ctx context.Context, q Querier, name, password string) error {
	fail := func(err error) error { return fmt.Errorf("cannot ensure replication role %s: %w", name, err) }
	var stored *string
	err := q.QueryRow(ctx, "SELECT rolpassword FROM pg_catalog.pg_authid WHERE rolname = $1", name).Scan(&stored)
	exists := err == nil
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return fail(err)
	}
	ident := pgx.Identifier{name}.Sanitize()
	const attrs = "LOGIN REPLICATION NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS VALID UNTIL 'infinity'"
	passwordClause := ""
	if !exists || stored == nil || !scramVerifierMatches(*stored, password) {
		v, err := ScramVerifier(password)
		if err != nil {
			return fail(err)
		}
		// The verifier is base64, digits and "$:-"; quote it all the same.
		passwordClause = " PASSWORD " + quoteLiteral(v)
	}
	stmt := "ALTER ROLE " + ident + " WITH " + attrs + passwordClause
	if !exists {
		stmt = "CREATE ROLE " + ident + " WITH " + attrs + passwordClause
	}
	if _, err := q.Exec(ctx, stmt); err != nil {
		return fail(err)
	}
	for _, f := range rewindFunctions {
		if _, err := q.Exec(ctx, "GRANT EXECUTE ON FUNCTION "+f+" TO "+ident); err != nil {
			return fail(err)
		}
	}
	return nil
}

func validRoleName(name string) error {
	switch {
	case name == "":
		return errors.New("no role name given")
	case len(name) > 63:
		return fmt.Errorf("role name %q is longer than 63 bytes", name)
	case strings.HasPrefix(strings.ToLower(name), "pg_"):
		return fmt.Errorf("role name %q is reserved (pg_ prefix)", name)
	case strings.ContainsAny(name, "\x00\n\r"):
		return fmt.Errorf("role name %q is not one line", name)
	}
	return nil
}

// quoteLiteral quotes s as an SQL string literal (standard_conforming_strings on).
func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// ReplStatus is a server's replication state, read in one query.
type ReplStatus struct {
	// InRecovery: the server is a standby (or still recovering).
	InRecovery bool
	// TimeLineID: on a primary, the timeline it writes (from the name of the
	// current WAL file); on a standby, the timeline of the WAL its walreceiver
	// last received, or, without a walreceiver, the timeline of its last
	// restartpoint (which may lag behind the one it replays).
	TimeLineID uint32
	// ReceiveLSN is pg_last_wal_receive_lsn(): WAL received and flushed by
	// the walreceiver; 0 (NULL) until the startup process first asks for
	// streaming after the server started. Asking sets it to where streaming
	// will start (the beginning of a WAL segment) before anything arrives.
	ReceiveLSN LSN
	// ReplayLSN is pg_last_wal_replay_lsn(): the end of the last record replayed.
	ReplayLSN LSN
	// CurrentLSN is pg_current_wal_lsn() on a primary, 0 on a standby.
	CurrentLSN LSN
	// WalReceiverStatus is pg_stat_wal_receiver.status ("streaming",
	// "starting", "waiting", ...), "" when no walreceiver runs.
	WalReceiverStatus string
	// UpstreamHost and UpstreamPort are where the walreceiver is connected
	// (a host name, an address or a socket directory); "" and 0 when none.
	UpstreamHost string
	UpstreamPort int
	// ReplayLag is how old the last replayed transaction is, 0 when all that
	// was received has been replayed or nothing is known; on a primary, 0.
	ReplayLag time.Duration
}

// replStatusQuery reads everything at once. pg_current_wal_lsn() raises an
// error during recovery, so it is asked for only when the CTE, evaluated once,
// said the server is not in recovery (promotion cannot be undone, so it stays
// so). Seeing pg_stat_wal_receiver's sender_host needs a superuser or
// pg_read_all_stats.
const replStatusQuery = `WITH r AS MATERIALIZED (SELECT pg_catalog.pg_is_in_recovery() AS rec)
SELECT r.rec,
	pg_catalog.pg_last_wal_receive_lsn()::text,
	pg_catalog.pg_last_wal_replay_lsn()::text,
	CASE WHEN r.rec THEN NULL ELSE pg_catalog.pg_current_wal_lsn()::text END,
	CASE WHEN r.rec THEN NULL ELSE pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn()) END,
	(SELECT timeline_id FROM pg_catalog.pg_control_checkpoint()),
	w.status, w.received_tli, w.sender_host, w.sender_port,
	CASE WHEN NOT r.rec OR pg_catalog.pg_last_wal_receive_lsn() = pg_catalog.pg_last_wal_replay_lsn() THEN 0
		ELSE coalesce(extract(epoch FROM now() - pg_catalog.pg_last_xact_replay_timestamp()), 0) END::float8
FROM r LEFT JOIN pg_catalog.pg_stat_wal_receiver w ON true`

// ReplicationStatus reads the server's replication state (see ReplStatus).
func ReplicationStatus(ctx context.Context, q Querier) (ReplStatus, error) {
	var (
		st                                ReplStatus
		receive, replay, current, walfile *string
		checkpointTLI                     *int64
		wrStatus, senderHost              *string
		receivedTLI, senderPort           *int64
		lagSeconds                        float64
	)
	err := q.QueryRow(ctx, replStatusQuery).Scan(&st.InRecovery, &receive, &replay, &current, &walfile,
		&checkpointTLI, &wrStatus, &receivedTLI, &senderHost, &senderPort, &lagSeconds)
	if err != nil {
		return ReplStatus{}, fmt.Errorf("cannot read replication status: %w", err)
	}
	if st.ReceiveLSN, err = parseNullLSN(receive); err == nil {
		if st.ReplayLSN, err = parseNullLSN(replay); err == nil {
			st.CurrentLSN, err = parseNullLSN(current)
		}
	}
	if err != nil {
		return ReplStatus{}, fmt.Errorf("cannot read replication status: %w", err)
	}
	switch {
	case walfile != nil && len(*walfile) >= 8:
		tli, err := strconv.ParseUint((*walfile)[:8], 16, 32)
		if err != nil {
			return ReplStatus{}, fmt.Errorf("cannot read replication status: WAL file name %q: %w", *walfile, err)
		}
		st.TimeLineID = uint32(tli)
	case receivedTLI != nil && *receivedTLI > 0:
		st.TimeLineID = uint32(*receivedTLI)
	case checkpointTLI != nil:
		st.TimeLineID = uint32(*checkpointTLI)
	}
	if wrStatus != nil {
		st.WalReceiverStatus = *wrStatus
	}
	if senderHost != nil {
		st.UpstreamHost = *senderHost
	}
	if senderPort != nil {
		st.UpstreamPort = int(*senderPort)
	}
	if lagSeconds > 0 {
		st.ReplayLag = time.Duration(lagSeconds * float64(time.Second))
	}
	return st, nil
}

// ErrNotInRecovery: the server is not a standby (already promoted, or a primary).
var ErrNotInRecovery = errors.New("the server is not in recovery")

// replayPollInterval is how often WaitReplayCaughtUp looks: replay of what is
// already received takes milliseconds to seconds, and a query costs little.
const replayPollInterval = 100 * time.Millisecond

// caughtUpQuery tells whether replay has caught up. The startup process waits
// with wait event RecoveryWalStream (for the walreceiver) or
// RecoveryRetrieveRetryInterval (between attempts at pg_wal, the archive and
// streaming) only when no further WAL record is available to it: it has
// replayed all WAL it can read. Seeing its wait event needs a superuser or
// pg_read_all_stats.
const caughtUpQuery = `SELECT pg_catalog.pg_is_in_recovery(),
	pg_catalog.pg_last_wal_receive_lsn()::text,
	pg_catalog.pg_last_wal_replay_lsn()::text,
	EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity WHERE backend_type = 'startup'
		AND wait_event IN ('RecoveryWalStream', 'RecoveryRetrieveRetryInterval'))`

// WaitReplayCaughtUp waits until the standby has replayed all WAL it holds,
// or ctx ends. Call it before promoting, after the old primary is stopped.
//
// When streaming was asked for since the server started, that is
// pg_last_wal_replay_lsn() >= pg_last_wal_receive_lsn(): everything received
// is replayed. (The startup process asks for streaming only after it replayed
// all WAL it found in pg_wal, so WAL there never lies beyond the receive LSN.)
// When pg_last_wal_receive_lsn() is NULL (no primary_conninfo, or recovery
// still reads what pg_wal held at start: the server restarted since the old
// primary stopped), the WAL to replay is what recovery reads from pg_wal (and
// an archive): replay has caught up when the startup process waits for more
// WAL, which it does only after it failed to read a further record from every
// source. A server not in recovery gives ErrNotInRecovery.
func WaitReplayCaughtUp(ctx context.Context, q Querier) error {
	tick := time.NewTicker(replayPollInterval)
	defer tick.Stop()
	for {
		var (
			inRecovery, startupWaits bool
			receive, replay          *string
		)
		if err := q.QueryRow(ctx, caughtUpQuery).Scan(&inRecovery, &receive, &replay, &startupWaits); err != nil {
			return fmt.Errorf("cannot wait for replay to catch up: %w", err)
		}
		if !inRecovery {
			return fmt.Errorf("cannot wait for replay to catch up: %w", ErrNotInRecovery)
		}
		rec, err1 := parseNullLSN(receive)
		rep, err2 := parseNullLSN(replay)
		if err := errors.Join(err1, err2); err != nil {
			return fmt.Errorf("cannot wait for replay to catch up: %w", err)
		}
		if receive != nil && rep >= rec || receive == nil && startupWaits {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cannot wait for replay to catch up (received %s, replayed %s): %w", rec, rep, ctx.Err())
		case <-tick.C:
		}
	}
}

// PromoteTimeoutError: the promotion did not complete within the wait given
// to Promote. It goes on in the server; IsInRecovery tells when it is done.
type PromoteTimeoutError struct{ Wait time.Duration }

func (e *PromoteTimeoutError) Error() string {
	return fmt.Sprintf("promotion did not complete within %v", e.Wait)
}

// Promote promotes the standby with pg_promote(wait => true), waiting up to
// wait (rounded up to whole seconds, at least one) for the promotion to
// complete: the server then accepts writes on a new timeline. A server not in
// recovery gives ErrNotInRecovery; a promotion still going on after wait gives
// a *PromoteTimeoutError. ctx should allow more than wait.
func Promote(ctx context.Context, q Querier, wait time.Duration) error {
	seconds := int((wait + time.Second - 1) / time.Second)
	if seconds < 1 {
		seconds = 1
	}
	var done bool
	err := q.QueryRow(ctx, "SELECT pg_catalog.pg_promote(true, $1)", seconds).Scan(&done)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "55000" { // object_not_in_prerequisite_state: "recovery is not in progress"
		return fmt.Errorf("cannot promote: %w", ErrNotInRecovery)
	}
	if err != nil {
		return fmt.Errorf("cannot promote: %w", err)
	}
	if !done {
		return fmt.Errorf("cannot promote: %w", &PromoteTimeoutError{Wait: time.Duration(seconds) * time.Second})
	}
	return nil
}
