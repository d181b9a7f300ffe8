package postgres

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// replTestParams keep the test servers small and quick to converge.
var replTestParams = map[string]string{
	"shared_buffers":              "16MB",
	"fsync":                       "off", // tests do not survive power loss
	"wal_retrieve_retry_interval": "500ms",
}

// replTimeout bounds each step of the replication tests on a loaded machine.
const replTimeout = time.Minute

// replNode is one test server: its data directory, socket directory and, while
// it runs, the server and a superuser connection.
type replNode struct {
	name, dataDir, sock string
	srv                 *server
	conn                *pgx.Conn
}

func newReplNode(t *testing.T, root, name string, u *User) *replNode {
	t.Helper()
	if err := os.Mkdir(filepath.Join(root, name), 0o755); err != nil {
		t.Fatal(err)
	}
	return &replNode{name: name, dataDir: filepath.Join(root, name, "pgdata"), sock: socketDir(t, u)}
}

// start writes the node's configuration (managed: standby settings or nil)
// and starts postgres as u.
func (n *replNode) start(t *testing.T, bin Bin, u *User, params, managed map[string]string) {
	t.Helper()
	if _, err := WriteConfig(n.dataDir, Config{Port: 5432, SocketDir: n.sock, Parameters: params, Managed: managed}, u); err != nil {
		t.Fatal(err)
	}
	if over, err := AutoConfOverrides(n.dataDir, managed); err != nil || len(over) > 0 {
		t.Fatalf("%s: AutoConfOverrides = %v, %v; want none", n.name, over, err)
	}
	n.srv = startPostgres(t, bin, n.dataDir, n.sock, u)
	cfg, err := ConnConfig(n.sock, 5432, "postgres", templatePassword)
	if err != nil {
		t.Fatal(err)
	}
	n.conn = n.srv.connect(t, cfg)
}

// stop shuts the node down (fast) and waits for postgres to exit.
func (n *replNode) stop(t *testing.T) {
	t.Helper()
	n.conn.Close(context.Background())
	n.srv.stop(t)
	if !n.srv.status.Success() {
		t.Fatalf("%s: postgres exited with %v; log:\n%s", n.name, n.srv.status, n.srv.log.String())
	}
}

func (n *replNode) exec(t *testing.T, sql string, args ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), replTimeout)
	defer cancel()
	if _, err := n.conn.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("%s: %s: %v", n.name, sql, err)
	}
}

func (n *replNode) status(t *testing.T) ReplStatus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), replTimeout)
	defer cancel()
	st, err := ReplicationStatus(ctx, n.conn)
	if err != nil {
		t.Fatalf("%s: %v", n.name, err)
	}
	return st
}

// rows returns the ids in table t, comma-separated in order.
func (n *replNode) rows(t *testing.T) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), replTimeout)
	defer cancel()
	var s string
	if err := n.conn.QueryRow(ctx, "SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM t").Scan(&s); err != nil {
		t.Fatalf("%s: %v", n.name, err)
	}
	return s
}

// replWaitUntil polls cond every 50 ms until it holds or replTimeout passes;
// what and the last state cond describes go into the failure.
func replWaitUntil(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.NewTimer(replTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		ok, state := cond()
		if ok {
			return
		}
		select {
		case <-deadline.C:
			t.Fatalf("timed out after %v waiting for %s; last: %s", replTimeout, what, state)
		case <-tick.C:
		}
	}
}

func (n *replNode) waitRows(t *testing.T, want string) {
	t.Helper()
	replWaitUntil(t, n.name+" to have rows "+want, func() (bool, string) {
		got := n.rows(t)
		return got == want, got
	})
}

// waitStreaming waits until n streams from upstream on timeline tli.
func (n *replNode) waitStreaming(t *testing.T, upstream *replNode, tli uint32) {
	t.Helper()
	replWaitUntil(t, fmt.Sprintf("%s to stream from %s on timeline %d", n.name, upstream.name, tli), func() (bool, string) {
		st := n.status(t)
		return st.InRecovery && st.WalReceiverStatus == "streaming" && st.UpstreamHost == upstream.sock && st.TimeLineID == tli,
			fmt.Sprintf("%+v", st)
	})
}

// standbySettings points at upstream as the replication role.
func standbySettings(t *testing.T, upstream *replNode, passfile, appName string) map[string]string {
	t.Helper()
	s, err := StandbyConfig{PrimaryHost: upstream.sock, PrimaryPort: 5432, User: ReplicationRole,
		Passfile: passfile, ApplicationName: appName}.Settings()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// replCopyTree copies the stopped data directory src to dst, owned by u.
func replCopyTree(t *testing.T, src, dst string, u *User) {
	t.Helper()
	err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		target := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		if d.IsDir() {
			if err := os.MkdirAll(target, info.Mode().Perm()); err != nil {
				return err
			}
		} else if err := copyFile(path, target, info.Mode().Perm()); err != nil {
			return err
		}
		return u.Chown(target)
	})
	if err != nil {
		t.Fatalf("cannot copy %s: %v", src, err)
	}
}

func replCheckNoSecret(t *testing.T, what, text string, secrets ...string) {
	t.Helper()
	for _, s := range secrets {
		if strings.Contains(text, s) {
			t.Errorf("%s holds a secret %q:\n%s", what, s, text)
		}
	}
}

// TestReplicationRole creates and updates the replication role on a real
// server logging every statement, and logs in with it.
func TestReplicationRole(t *testing.T) {
	bin, u := realBin(t), runAs(t)
	root := pgTempDir(t)
	n := newReplNode(t, root, "primary", u)
	copyDataDir(t, n.dataDir, u)
	params := maps(replTestParams, map[string]string{"log_statement": "all"})
	n.start(t, bin, u, params, nil)
	ctx, cancel := context.WithTimeout(context.Background(), replTimeout)
	defer cancel()

	const password, password2 = "repl-Secret-1 'q' \\ :x", "repl-Secret-2"
	login := func(pw string) error {
		cfg, err := ConnConfig(n.sock, 5432, ReplicationRole, pw)
		if err != nil {
			t.Fatal(err)
		}
		c, err := pgxConnect(cfg)
		if err == nil {
			c.Close(ctx)
		}
		return err
	}
	authFailed := func(err error) bool {
		var pgErr *pgconn.PgError
		return errors.As(err, &pgErr) && pgErr.Code == "28P01"
	}
	stored := func() string {
		var v string
		var super, repl, canLogin bool
		err := n.conn.QueryRow(ctx, "SELECT rolpassword, rolsuper, rolreplication, rolcanlogin FROM pg_authid WHERE rolname = $1",
			ReplicationRole).Scan(&v, &super, &repl, &canLogin)
		if err != nil {
			t.Fatal(err)
		}
		if super || !repl || !canLogin {
			t.Errorf("role: superuser %v, replication %v, login %v; want false, true, true", super, repl, canLogin)
		}
		return v
	}

	if err := EnsureReplicationRole(ctx, n.conn, ReplicationRole, password); err != nil {
		t.Fatal(err)
	}
	v1 := stored()
	if !strings.HasPrefix(v1, "SCRAM-SHA-256$4096:") || strings.Contains(v1, password) {
		t.Errorf("rolpassword = %q, want a SCRAM-SHA-256 verifier", v1)
	}
	if err := login(password); err != nil {
		t.Errorf("login with the password: %v", err)
	}
	if err := login("wrong"); !authFailed(err) {
		t.Errorf("login with a wrong password: %v, want 28P01", err)
	}

	t.Run("pg_rewind functions", func(t *testing.T) {
		cfg, _ := ConnConfig(n.sock, 5432, ReplicationRole, password)
		c, err := pgxConnect(cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(ctx)
		for _, q := range []string{
			"SELECT count(*) FROM pg_catalog.pg_ls_dir('global', false, false)",
			"SELECT (pg_catalog.pg_stat_file('global/pg_control', false)).size",
			"SELECT length(pg_catalog.pg_read_binary_file('PG_VERSION'))",
			"SELECT length(pg_catalog.pg_read_binary_file('global/pg_control', 0, 8, false))",
		} {
			var n int64
			if err := c.QueryRow(ctx, q).Scan(&n); err != nil || n <= 0 {
				t.Errorf("%s = %d, %v", q, n, err)
			}
		}
	})

	t.Run("idempotent", func(t *testing.T) {
		if err := EnsureReplicationRole(ctx, n.conn, ReplicationRole, password); err != nil {
			t.Fatal(err)
		}
		if v := stored(); v != v1 {
			t.Errorf("the verifier changed though the password did not")
		}
	})

	t.Run("password change", func(t *testing.T) {
		n.exec(t, "ALTER ROLE "+ReplicationRole+" SUPERUSER") // must be undone
		if err := EnsureReplicationRole(ctx, n.conn, ReplicationRole, password2); err != nil {
			t.Fatal(err)
		}
		if v := stored(); v == v1 {
			t.Errorf("the verifier did not change")
		}
		if err := login(password2); err != nil {
			t.Errorf("login with the new password: %v", err)
		}
		if err := login(password); !authFailed(err) {
			t.Errorf("login with the old password: %v, want 28P01", err)
		}
	})

	t.Run("same format as the server's", func(t *testing.T) {
		// A throwaway password hashed by the server itself, recomputed here with its salt.
		n.exec(t, "CREATE ROLE scram_probe PASSWORD 'probe-pass'")
		var server string
		if err := n.conn.QueryRow(ctx, "SELECT rolpassword FROM pg_authid WHERE rolname = 'scram_probe'").Scan(&server); err != nil {
			t.Fatal(err)
		}
		saltText := strings.SplitN(strings.SplitN(server, "$", 3)[1], ":", 2)[1]
		salt, err := base64.StdEncoding.DecodeString(saltText)
		if err != nil {
			t.Fatal(err)
		}
		mine, err := scramVerifier("probe-pass", salt, 4096)
		if err != nil || mine != server {
			t.Errorf("verifier = %q, %v; the server made %q", mine, err, server)
		}
	})

	t.Run("refused", func(t *testing.T) {
		for _, c := range []struct{ name, password string }{{"pg_repl", "x"}, {"", "x"}, {"r", ""}, {"r", "pässword"}} {
			if err := EnsureReplicationRole(ctx, n.conn, c.name, c.password); err == nil {
				t.Errorf("EnsureReplicationRole(%q, %q) succeeded", c.name, c.password)
			}
		}
	})

	// The statement log is on, yet it holds neither password nor even a
	// verifier (the probe's CREATE ROLE shows a plaintext password, a test's own).
	// The log arrives through a pipe, in order: once the marker is there, so is all before it.
	n.exec(t, "SELECT 'log marker'")
	replWaitUntil(t, "the statement log to show the marker", func() (bool, string) {
		return strings.Contains(n.srv.log.String(), "log marker"), "not logged"
	})
	log := n.srv.log.String()
	replCheckNoSecret(t, "the server log", log, password, password2, "SCRAM-SHA-256$4096:")
}

// TestStandbyWithoutUpstream: a standby without an upstream (none known yet:
// no primary_conninfo, so its receive LSN stays NULL) has caught up once it
// replayed its own WAL; it promotes; promoting again is ErrNotInRecovery.
// TestReplicationRoleWithoutSynchronousStandby: the first primary of a synchronous cluster
// creates the replication role before any standby exists (a standby needs the role to clone);
// the commit must not wait for a synchronous standby that cannot come.
func TestReplicationRoleWithoutSynchronousStandby(t *testing.T) {
	bin, u := realBin(t), runAs(t)
	root := pgTempDir(t)
	n := newReplNode(t, root, "primary", u)
	copyDataDir(t, n.dataDir, u)
	n.start(t, bin, u, replTestParams, map[string]string{"synchronous_standby_names": `ANY 1 ("nobody")`})
	defer n.stop(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := EnsureReplicationRole(ctx, n.conn, ReplicationRole, "repl-Secret-1"); err != nil {
		t.Fatalf("EnsureReplicationRole with a synchronous standby required and none connected: %v", err)
	}
	var sync string
	if err := n.conn.QueryRow(ctx, "SHOW synchronous_commit").Scan(&sync); err != nil || sync != "on" {
		t.Fatalf("synchronous_commit of the session afterwards = %q, %v; want on (SET LOCAL only)", sync, err)
	}
}

func TestStandbyWithoutUpstream(t *testing.T) {
	bin, u := realBin(t), runAs(t)
	root := pgTempDir(t)
	n := newReplNode(t, root, "lonely", u)
	copyDataDir(t, n.dataDir, u)
	if err := WriteStandbySignal(n.dataDir, u); err != nil {
		t.Fatal(err)
	}
	n.start(t, bin, u, replTestParams, nil)
	ctx, cancel := context.WithTimeout(context.Background(), replTimeout)
	defer cancel()

	st := n.status(t)
	if !st.InRecovery || st.ReceiveLSN != 0 || st.ReplayLSN == 0 || st.CurrentLSN != 0 || st.TimeLineID != 1 {
		t.Errorf("ReplicationStatus = %+v; want in recovery on timeline 1, replayed something, received nothing", st)
	}
	start := time.Now()
	if err := WaitReplayCaughtUp(ctx, n.conn); err != nil {
		t.Fatal(err)
	}
	t.Logf("caught up (nothing streamed) after %v", time.Since(start))

	start = time.Now()
	if err := Promote(ctx, n.conn, 30*time.Second); err != nil {
		t.Fatalf("Promote: %v\nlog:\n%s", err, n.srv.log.String())
	}
	t.Logf("promoted in %v", time.Since(start))
	st = n.status(t)
	if st.InRecovery || st.TimeLineID != 2 || st.CurrentLSN == 0 {
		t.Errorf("after promotion: %+v; want a primary on timeline 2", st)
	}
	if has, _ := HasStandbySignal(n.dataDir); has {
		t.Errorf("standby.signal still there after promotion")
	}
	if err := Promote(ctx, n.conn, time.Second); !errors.Is(err, ErrNotInRecovery) {
		t.Errorf("second Promote = %v, want ErrNotInRecovery", err)
	}
	if err := WaitReplayCaughtUp(ctx, n.conn); !errors.Is(err, ErrNotInRecovery) {
		t.Errorf("WaitReplayCaughtUp on a primary = %v, want ErrNotInRecovery", err)
	}
}

// TestReplicationSwitchoverAndRewind plays the instance manager's role
// changes on real servers, without Kubernetes:
//
//	A primary; B and C cloned from A, streaming;
//	C switches upstream to B by config rewrite and reload;
//	switchover: A stops cleanly, B has all of A's WAL, B promotes (C follows);
//	A rejoins B without rewind;
//	divergence: a copy of the stopped A (A2) runs as a primary again and
//	writes; it needs a rewind; failed rewinds say why; A2 is rewound and streams from B.
func TestReplicationSwitchoverAndRewind(t *testing.T) {
	bin, u := realBin(t), runAs(t)
	root := pgTempDir(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const replPassword = "repl pass: 'with' \\ specials"
	passfile := filepath.Join(root, "secrets", "pgpass")

	a, b, c := newReplNode(t, root, "a", u), newReplNode(t, root, "b", u), newReplNode(t, root, "c", u)
	copyDataDir(t, a.dataDir, u)
	a.start(t, bin, u, replTestParams, nil)
	if err := EnsureReplicationRole(ctx, a.conn, ReplicationRole, replPassword); err != nil {
		t.Fatal(err)
	}
	if err := WritePassfile(passfile, "", 0, ReplicationRole, replPassword, u); err != nil {
		t.Fatal(err)
	}
	a.exec(t, "CREATE TABLE t (id int PRIMARY KEY, origin text)")
	a.exec(t, "INSERT INTO t VALUES (1, 'a')")

	clone := func(n, from *replNode) {
		t.Helper()
		start := time.Now()
		err := Clone(ctx, bin, CloneOptions{DataDir: n.dataDir, Host: from.sock, Port: 5432, User: ReplicationRole,
			Passfile: passfile, RunAs: u, ApplicationName: n.name + "-clone"})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("cloned %s from %s in %v", n.name, from.name, time.Since(start))
		if err := WriteStandbySignal(n.dataDir, u); err != nil {
			t.Fatal(err)
		}
	}
	clone(b, a)
	clone(c, a)
	b.start(t, bin, u, replTestParams, standbySettings(t, a, passfile, "b"))
	c.start(t, bin, u, replTestParams, standbySettings(t, a, passfile, "c"))

	t.Run("clones stream", func(t *testing.T) {
		replWaitUntil(t, "A to stream to b and c", func() (bool, string) {
			var got string
			err := a.conn.QueryRow(ctx, `SELECT coalesce(string_agg(application_name || ':' || state, ',' ORDER BY application_name), '')
				FROM pg_stat_replication`).Scan(&got)
			return err == nil && got == "b:streaming,c:streaming", fmt.Sprint(got, err)
		})
		a.exec(t, "INSERT INTO t VALUES (2, 'a')")
		b.waitRows(t, "1,2")
		c.waitRows(t, "1,2")
		b.waitStreaming(t, a, 1)
		st := b.status(t)
		if st.ReceiveLSN == 0 || st.ReplayLSN == 0 || st.CurrentLSN != 0 || st.UpstreamPort != 5432 {
			t.Errorf("B: ReplicationStatus = %+v", st)
		}
		if st := a.status(t); st.InRecovery || st.TimeLineID != 1 || st.CurrentLSN == 0 || st.WalReceiverStatus != "" {
			t.Errorf("A: ReplicationStatus = %+v", st)
		}
	})

	t.Run("standby switches upstream on reload", func(t *testing.T) {
		var before, after time.Time
		if err := c.conn.QueryRow(ctx, "SELECT pg_postmaster_start_time()").Scan(&before); err != nil {
			t.Fatal(err)
		}
		if _, err := WriteConfig(c.dataDir, Config{Port: 5432, SocketDir: c.sock, Parameters: replTestParams,
			Managed: standbySettings(t, b, passfile, "c")}, u); err != nil {
			t.Fatal(err)
		}
		if err := Reload(ctx, c.conn); err != nil {
			t.Fatal(err)
		}
		c.waitStreaming(t, b, 1)
		replWaitUntil(t, "B to stream to c", func() (bool, string) {
			var n int
			err := b.conn.QueryRow(ctx, "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'c' AND state = 'streaming'").Scan(&n)
			return err == nil && n == 1, fmt.Sprint(n, err)
		})
		a.exec(t, "INSERT INTO t VALUES (3, 'a')")
		c.waitRows(t, "1,2,3") // through B
		if err := c.conn.QueryRow(ctx, "SELECT pg_postmaster_start_time()").Scan(&after); err != nil {
			t.Fatal(err)
		}
		if !after.Equal(before) {
			t.Errorf("C restarted (%v, then %v)", before, after)
		}
	})
	if t.Failed() {
		t.FailNow()
	}

	var finalA ControlData
	var source SourceTimeline
	t.Run("switchover", func(t *testing.T) {
		if err := Checkpoint(ctx, a.conn); err != nil {
			t.Fatal(err)
		}
		a.stop(t)
		var err error
		if finalA, err = ReadControlData(ctx, bin, a.dataDir, u); err != nil {
			t.Fatal(err)
		}
		if finalA.State != StateShutDown || finalA.TimeLineID != 1 || finalA.FinalLSN <= finalA.CheckpointLSN {
			t.Fatalf("A's control data: %+v", finalA)
		}
		// The rule: B holds all A wrote once it received up to A's FinalLSN.
		// A's walsender waited for B to flush it before A exited.
		st := b.status(t)
		if st.ReceiveLSN < finalA.FinalLSN {
			t.Fatalf("B received %s, less than A's final LSN %s (checkpoint at %s)", st.ReceiveLSN, finalA.FinalLSN, finalA.CheckpointLSN)
		}
		if st.ReceiveLSN != finalA.FinalLSN {
			t.Errorf("B received %s, A's final LSN is %s: FinalLSN should be exactly the end of A's WAL", st.ReceiveLSN, finalA.FinalLSN)
		}
		start := time.Now()
		if err := WaitReplayCaughtUp(ctx, b.conn); err != nil {
			t.Fatal(err)
		}
		t.Logf("B caught up in %v; final LSN of A %s (checkpoint %s)", time.Since(start), finalA.FinalLSN, finalA.CheckpointLSN)
		start = time.Now()
		if err := Promote(ctx, b.conn, 30*time.Second); err != nil {
			t.Fatalf("Promote: %v\nlog:\n%s", err, b.srv.log.String())
		}
		t.Logf("promoted B in %v", time.Since(start))
		if st := b.status(t); st.InRecovery || st.TimeLineID != 2 {
			t.Fatalf("B after promotion: %+v", st)
		}
		if source, err = IdentifySource(ctx, b.sock, 5432, ReplicationRole, passfile); err != nil {
			t.Fatal(err)
		}
		if source.TimeLineID != 2 || len(source.History) != 1 || source.History[0].TimeLineID != 1 ||
			source.SystemIdentifier != finalA.SystemIdentifier {
			t.Fatalf("IdentifySource(B) = %+v", source)
		}
		if sw := source.History[0].SwitchLSN; sw != finalA.FinalLSN {
			t.Errorf("B left timeline 1 at %s, A's final LSN is %s", sw, finalA.FinalLSN)
		}
		need, err := NeedsRewind(finalA, source)
		if err != nil || need {
			t.Fatalf("NeedsRewind(A) = %v, %v; want false", need, err)
		}
		b.exec(t, "INSERT INTO t VALUES (10, 'b')")
		c.waitStreaming(t, b, 2) // a cascaded standby follows its upstream's promotion
		c.waitRows(t, "1,2,3,10")
	})
	if t.Failed() {
		t.FailNow()
	}

	// The stopped A, copied before it rejoins: it plays the old primary that comes back as a primary.
	a2, a3 := newReplNode(t, root, "a2", u), newReplNode(t, root, "a3", u)
	replCopyTree(t, a.dataDir, a2.dataDir, u)
	replCopyTree(t, a.dataDir, a3.dataDir, u)

	t.Run("old primary rejoins without rewind", func(t *testing.T) {
		if err := WriteStandbySignal(a.dataDir, u); err != nil {
			t.Fatal(err)
		}
		a.start(t, bin, u, replTestParams, standbySettings(t, b, passfile, "a"))
		a.waitStreaming(t, b, 2)
		b.exec(t, "INSERT INTO t VALUES (11, 'b')")
		a.waitRows(t, "1,2,3,10,11")
	})

	t.Run("diverged old primary is rewound", func(t *testing.T) {
		a2.start(t, bin, u, replTestParams, nil) // a primary again, on timeline 1
		a2.exec(t, "INSERT INTO t VALUES (100, 'a2 diverged')")
		a2.stop(t)
		b.exec(t, "INSERT INTO t VALUES (12, 'b')")
		cd, err := ReadControlData(ctx, bin, a2.dataDir, u)
		if err != nil {
			t.Fatal(err)
		}
		if need, err := NeedsRewind(cd, source); err != nil || !need {
			t.Fatalf("NeedsRewind(A2) = %v, %v; want true (final LSN %s, switch %s)", need, err, cd.FinalLSN, source.History[0].SwitchLSN)
		}

		// Failures first: the data directory is left as it was, the error says why.
		badPassfile := filepath.Join(root, "secrets", "bad-pgpass")
		const badPassword = "not-the-password"
		if err := WritePassfile(badPassfile, "", 0, ReplicationRole, badPassword, u); err != nil {
			t.Fatal(err)
		}
		for _, f := range []struct {
			name, host, passfile, want string
		}{
			{"unreachable", filepath.Join(root, "nowhere"), passfile, "No such file or directory"},
			{"bad password", b.sock, badPassfile, "password authentication failed"},
		} {
			err := Rewind(ctx, bin, RewindOptions{DataDir: a2.dataDir, SourceHost: f.host, SourcePort: 5432,
				User: ReplicationRole, Passfile: f.passfile, RunAs: u})
			var cmdErr *CommandError
			if !errors.As(err, &cmdErr) || !strings.Contains(err.Error(), f.want) {
				t.Errorf("%s: Rewind = %v; want a *CommandError saying %q", f.name, err, f.want)
			}
			if err != nil {
				t.Logf("%s: %v", f.name, err)
				replCheckNoSecret(t, "the error", err.Error(), replPassword, badPassword)
			}
			if after, err := ReadControlData(ctx, bin, a2.dataDir, u); err != nil || after.CheckpointLSN != cd.CheckpointLSN || after.State != StateShutDown {
				t.Errorf("%s: the data directory changed: %+v, %v", f.name, after, err)
			}
			_, err = IdentifySource(ctx, f.host, 5432, ReplicationRole, f.passfile)
			if err == nil {
				t.Errorf("%s: IdentifySource succeeded", f.name)
			} else {
				replCheckNoSecret(t, "the error", err.Error(), replPassword, badPassword)
			}
		}

		start := time.Now()
		if err := Rewind(ctx, bin, RewindOptions{DataDir: a2.dataDir, SourceHost: b.sock, SourcePort: 5432,
			User: ReplicationRole, Passfile: passfile, RunAs: u}); err != nil {
			t.Fatal(err)
		}
		t.Logf("rewound A2 in %v", time.Since(start))
		if err := WriteStandbySignal(a2.dataDir, u); err != nil {
			t.Fatal(err)
		}
		// pg_rewind copied B's configuration files; start writes A2's own again.
		a2.start(t, bin, u, replTestParams, standbySettings(t, b, passfile, "a2"))
		a2.waitStreaming(t, b, 2)
		b.exec(t, "INSERT INTO t VALUES (13, 'b')")
		a2.waitRows(t, "1,2,3,10,11,12,13")
	})

	// The failover case: the old primary wrote on, then was stopped with an
	// immediate shutdown (fenced). pg_rewind finishes its crash recovery first.
	t.Run("crashed old primary is rewound", func(t *testing.T) {
		a3.start(t, bin, u, replTestParams, nil)
		a3.exec(t, "INSERT INTO t VALUES (200, 'a3 diverged')")
		a3.conn.Close(ctx)
		a3.srv.cmd.Process.Signal(syscall.SIGQUIT) // immediate shutdown
		<-a3.srv.done
		cd, err := ReadControlData(ctx, bin, a3.dataDir, u)
		if err != nil {
			t.Fatal(err)
		}
		var notShutDown *NotShutDownError
		if _, err := NeedsRewind(cd, source); cd.State != StateInProduction || !errors.As(err, &notShutDown) {
			t.Fatalf("state %q: NeedsRewind = %v; want *NotShutDownError", cd.State, err)
		}
		if err := WriteStandbySignal(a3.dataDir, u); err != nil {
			t.Fatal(err)
		}
		err = Rewind(ctx, bin, RewindOptions{DataDir: a3.dataDir, SourceHost: b.sock, SourcePort: 5432,
			User: ReplicationRole, Passfile: passfile, RunAs: u})
		if err == nil || !strings.Contains(err.Error(), StandbySignalFile) {
			t.Errorf("Rewind of a crashed data directory with standby.signal = %v; want refused", err)
		}
		if err := RemoveStandbySignal(a3.dataDir); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if err := Rewind(ctx, bin, RewindOptions{DataDir: a3.dataDir, SourceHost: b.sock, SourcePort: 5432,
			User: ReplicationRole, Passfile: passfile, RunAs: u}); err != nil {
			t.Fatal(err)
		}
		t.Logf("rewound crashed A3 in %v", time.Since(start))
		if err := WriteStandbySignal(a3.dataDir, u); err != nil {
			t.Fatal(err)
		}
		a3.start(t, bin, u, replTestParams, standbySettings(t, b, passfile, "a3"))
		a3.waitStreaming(t, b, 2)
		b.exec(t, "INSERT INTO t VALUES (14, 'b')")
		a3.waitRows(t, "1,2,3,10,11,12,13,14")
	})

	t.Run("clone failures", func(t *testing.T) {
		badPassfile := filepath.Join(root, "secrets", "bad-pgpass")
		dir := filepath.Join(root, "failed", "pgdata")
		err := Clone(ctx, bin, CloneOptions{DataDir: dir, Host: b.sock, Port: 5432, User: ReplicationRole, Passfile: badPassfile, RunAs: u})
		var cmdErr *CommandError
		if !errors.As(err, &cmdErr) || !strings.Contains(err.Error(), "password authentication failed") {
			t.Errorf("Clone with a bad password = %v; want a *CommandError", err)
		}
		if err != nil {
			replCheckNoSecret(t, "the error", err.Error(), replPassword, "not-the-password")
		}
		if _, err := os.Stat(filepath.Join(root, "failed")); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("Clone left what it created: %v", err)
		}
		full := filepath.Join(root, "full")
		if err := os.Mkdir(full, 0o755); err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(full, "keep"), "x", 0o600)
		err = Clone(ctx, bin, CloneOptions{DataDir: full, Host: b.sock, Port: 5432, User: ReplicationRole, Passfile: passfile, RunAs: u})
		var notData *NotDataDirError
		if !errors.As(err, &notData) {
			t.Errorf("Clone into a non-empty directory = %v; want *NotDataDirError", err)
		}
		if _, err := os.Stat(filepath.Join(full, "keep")); err != nil {
			t.Errorf("Clone touched a non-empty directory: %v", err)
		}
	})
}
