package probes

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// assertSameAsPgIsReady pings c over its Unix socket and over TCP, natively and
// with the real pg_isready, and fails unless all four say want.
func assertSameAsPgIsReady(t *testing.T, c *pgCluster, want Verdict) {
	t.Helper()
	for _, ep := range []struct {
		network, address, host string
	}{
		{"unix", c.SocketPath(), c.SockDir},
		{"tcp", c.TCPAddr(), "127.0.0.1"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		got := Ping(ctx, ep.network, ep.address)
		cancel()
		ref := pgIsReady(t, ep.host, c.Port)
		if got.ExitCode() != ref {
			t.Errorf("%s: Ping says %q (exit %d), pg_isready exits %d", ep.network, got, got.ExitCode(), ref)
		}
		if got != want {
			t.Errorf("%s: Ping says %q, want %q", ep.network, got, want)
		}
	}
}

// TestPingMatchesPgIsReady walks a real PostgreSQL through the states a probe
// sees and checks, in each, that Ping and pg_isready give the same verdict.
func TestPingMatchesPgIsReady(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	c := newCluster(t)

	t.Run("not running", func(t *testing.T) {
		assertSameAsPgIsReady(t, c, NoResponse)
	})

	c.startAndWait(t)
	t.Run("accepting", func(t *testing.T) {
		assertSameAsPgIsReady(t, c, Accepting)
	})

	t.Run("hot standby not yet consistent", func(t *testing.T) {
		// A base backup without WAL, started as a standby whose only WAL source
		// (a primary on a port where nothing listens) does not exist: it waits
		// forever for the WAL it needs to become consistent.
		s := newEmptyCluster(t)
		runPG(t, "pg_basebackup", "-D", s.DataDir, "-X", "none", "-c", "fast", "--no-sync",
			"-h", c.SockDir, "-p", strconv.Itoa(c.Port), "-U", "postgres")
		touchPG(t, filepath.Join(s.DataDir, "standby.signal"))
		s.extra = []string{"-c", "hot_standby=on",
			"-c", "primary_conninfo=host=127.0.0.1 port=" + strconv.Itoa(freePort(t)) + " user=postgres connect_timeout=1"}
		s.start(t)
		s.waitFor(t, 30*time.Second, "standby mode", func() bool {
			return s.logContains("entering standby mode") && exists(s.SocketPath())
		})
		assertSameAsPgIsReady(t, s, Rejecting)
		if s.logContains("consistent recovery state reached") {
			t.Fatalf("the standby became consistent; log:\n%s", s.logTail())
		}
		s.stop()
	})

	t.Run("starting: crash recovery", func(t *testing.T) {
		// Write a few hundred MB of WAL after the last checkpoint (checkpoints are
		// pushed to 8GB/1 day), crash, restart, and freeze the startup process
		// while it replays, so that the state cannot change under the comparison.
		c.exec(t, `SELECT count(pg_logical_emit_message(false, 'pgwarden-test', repeat('x', 1000000))) FROM generate_series(1, 250)`)
		c.exec(t, `CREATE TABLE filler AS SELECT g AS id, repeat('y', 100) AS pad FROM generate_series(1, 400000) g`)
		c.crash(t)
		c.start(t)
		var startup int
		c.waitFor(t, 10*time.Second, "startup process", func() bool {
			startup = childWith(c.PID(), "startup")
			return startup != 0
		})
		if err := syscall.Kill(startup, syscall.SIGSTOP); err != nil {
			t.Fatalf("cannot stop the startup process: %v", err)
		}
		continued := false
		cont := func() {
			if !continued {
				continued = true
				_ = syscall.Kill(startup, syscall.SIGCONT)
			}
		}
		defer cont()
		c.waitFor(t, 5*time.Second, "startup process stopped", func() bool { return procState(startup) == 'T' })
		if st := c.pmStatus(); st == "ready" {
			t.Fatalf("recovery ended before the startup process was stopped; generate more WAL")
		}
		assertSameAsPgIsReady(t, c, Rejecting)

		cont()
		c.waitStatus(t, 60*time.Second, "ready")
		// The startup process may have been stopped before it logged anything;
		// now that it is done, check that it was indeed a crash recovery.
		if !c.logContains("automatic recovery in progress") || !c.logContains("redo done") {
			t.Errorf("no crash recovery; log:\n%s", c.logTail())
		}
		assertSameAsPgIsReady(t, c, Accepting)
	})

	t.Run("smart shutdown in progress", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		// An idle session keeps the smart shutdown from finishing.
		session, err := c.connect(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer session.Close(context.Background())
		c.signal(t, syscall.SIGTERM)
		// The postmaster writes "stopping" in its signal handler; it accepts the
		// next connection only after the handler returned, so from now on it
		// refuses new connections.
		c.waitStatus(t, 10*time.Second, "stopping")
		assertSameAsPgIsReady(t, c, Rejecting)
		if _, err := session.Exec(ctx, "SELECT 1"); err != nil {
			t.Fatalf("the held session should still work during a smart shutdown: %v", err)
		}
		session.Close(ctx)
		c.waitExit(t, 30*time.Second)
		assertSameAsPgIsReady(t, c, NoResponse)
	})
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// touchPG creates an empty file owned by the postgres user.
func touchPG(t *testing.T, path string) {
	t.Helper()
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	chownPG(t, path)
}

// TestPingLeavesServerLogClean: a ping is a polite client. The server logs
// no error for it, whether it authenticated us (trust over the Unix socket: a
// backend starts and must see our Terminate) or asked for a password (TCP).
func TestPingLeavesServerLogClean(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	c := newCluster(t)
	c.extra = []string{"-c", "log_connections=on", "-c", "log_disconnections=on"}
	c.startAndWait(t)
	const n = 20
	for _, ep := range []struct{ network, address string }{{"unix", c.SocketPath()}, {"tcp", c.TCPAddr()}} {
		for range n {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			v := Ping(ctx, ep.network, ep.address)
			cancel()
			if v != Accepting {
				t.Fatalf("%s: Ping = %v", ep.network, v)
			}
		}
	}
	// Every trust session ends with a disconnection line once its backend exits;
	// the password-less TCP attempts end without one (the server is silent about
	// clients that leave instead of authenticating).
	c.waitFor(t, 10*time.Second, "the backends' disconnection lines", func() bool {
		return strings.Count(c.logText(), "disconnection: session time") >= n
	})
	log := c.logText()
	if got := strings.Count(log, "connection received"); got != 2*n {
		t.Errorf("%d connections logged, want %d", got, 2*n)
	}
	for _, bad := range []string{"FATAL", "ERROR", "could not", "unexpected EOF", "reset by peer", "Broken pipe"} {
		if strings.Contains(log, bad) {
			t.Errorf("server log contains %q:\n%s", bad, log)
		}
	}
}
