package roles

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestShutdownHandsOver: SIGTERM to the primary's manager while a client
// keeps a session open (smart shutdown would wait for it for half of the stop
// delay), and the operator's answer to a deleted primary pod: the old primary
// annotated replica, another annotated primary. The old primary ends its smart
// phase at once, shuts down fast and cleanly, and hands the Lease on; the new
// primary takes writes long before the smart phase would have ended, with
// every acknowledged write and never two writers.
func TestShutdownHandsOver(t *testing.T) {
	c, m0, m1, m2 := streamingTrio(t)
	holdIdleSession(t, m0)
	ch := c.startChecker()
	waitFor(t, 10*time.Second, "a first acknowledged write", func() bool {
		ch.mu.Lock()
		defer ch.mu.Unlock()
		return len(ch.acked) > 0
	})

	began := time.Now()
	if err := syscall.Kill(m0.managerPID(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	m0.waitLog(10*time.Second, "stopping postgres") // smart shutdown has begun
	c.annotate(m0.name, "replica", m1.name, "primary")

	expectHurriedExit(t, m0, began, "SIGTERM and its replacement")
	waitFor(t, 30*time.Second, "demo-1 to accept a write", m1.acceptsWrite)
	t.Logf("SIGTERM to the primary -> new primary writable after %s", time.Since(began).Round(time.Millisecond))
	waitFor(t, 30*time.Second, "demo-2 to follow demo-1", func() bool { return m2.streamingFrom(m1) })
	ch.stop()
	ch.verifyAcked(m1)
	if runs := ch.writerRuns(); !slices.Equal(runs, []string{"demo-0", "demo-1"}) {
		t.Errorf("members that accepted probe writes, in time order: %v; want demo-0, demo-1", runs)
	}
}

// TestRestartedPrimaryHandsOver: the primary's container is killed and
// restarts at once, before the operator's decision lands: it comes back as
// primary (it still holds the Lease), and is demoted right after, with its
// replicas not yet reconnected. It waits for as many standbys as streamed
// from it before (recorded beside PGDATA) before it shuts down, so the
// successor receives the final LSN it is handed and promotes (before, the
// successor waited for it forever and the cluster had no primary).
func TestRestartedPrimaryHandsOver(t *testing.T) {
	c := newCluster(t, 3)
	c.startAll()
	m0, m1, m2 := c.members[0], c.members[1], c.members[2]
	waitFor(t, 60*time.Second, "demo-1 and demo-2 to stream from demo-0", func() bool {
		return m1.streamingFrom(m0) && m2.streamingFrom(m0)
	})
	m0.exec("CREATE TABLE before_kill (i int)")
	recorded := filepath.Join(filepath.Dir(m0.pgdata), "pgwarden-standbys")
	waitFor(t, 30*time.Second, "demo-0 to record its 2 standbys", func() bool {
		b, err := os.ReadFile(recorded)
		return err == nil && strings.TrimSpace(string(b)) == "2"
	})
	_ = syscall.Kill(-m0.cmd.Process.Pid, syscall.SIGKILL) // manager and postmaster, like a container kill
	select {
	case <-m0.done:
	case <-time.After(10 * time.Second):
		t.Fatal("demo-0 did not die")
	}
	// Its replicas are still reconnecting when it is demoted: here they cannot reach it until
	// two seconds after the demotion was asked for.
	heal := c.cutReplication(m0)
	m0.start() // the kubelet restarts the container at once
	waitFor(t, 60*time.Second, "demo-0 to be primary again", m0.isPrimary)
	c.annotate(m0.name, "replica", m1.name, "primary") // the operator's failover lands now
	time.Sleep(2 * time.Second)                        // the replicas' reconnection delay under test, not a wait for a result
	heal()
	waitFor(t, 60*time.Second, "demo-1 to accept a write", m1.acceptsWrite)
	if m0.findLog("demoting once the standbys stream again") == nil {
		t.Error("demo-0 did not wait for its standbys before it shut down")
	}
	waitFor(t, 60*time.Second, "demo-0 to stream from demo-1", func() bool { return m0.streamingFrom(m1) })
	waitFor(t, 60*time.Second, "demo-2 to stream from demo-1", func() bool { return m2.streamingFrom(m1) })
}

// TestShutdownWhileDemoting: the operator's replica annotation can land a
// moment before the SIGTERM of the pod's deletion, so the shutdown begins
// while the instance is demoting (held there on purpose here: a standby that
// streamed from it is down, and the demotion waits for it). It must still end
// the smart phase at once (the soak saw a full 15 s smart phase before).
func TestShutdownWhileDemoting(t *testing.T) {
	c, m0, m1, m2 := streamingTrio(t)
	waitFor(t, 30*time.Second, "demo-0 to record 2 standbys", func() bool {
		b, err := os.ReadFile(filepath.Join(filepath.Dir(m0.pgdata), "pgwarden-standbys"))
		return err == nil && strings.TrimSpace(string(b)) == "2"
	})
	m2.terminate(0)
	holdIdleSession(t, m0)

	c.annotate(m0.name, "replica", m1.name, "primary")
	waitFor(t, 10*time.Second, "demo-0 to be demoting", func() bool {
		st := m0.status()
		return st != nil && st["phase"] == "demoting"
	})
	began := time.Now()
	if err := syscall.Kill(m0.managerPID(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	expectHurriedExit(t, m0, began, "SIGTERM while demoting")
	t.Logf("SIGTERM while demoting -> demo-0 exited after %s", time.Since(began).Round(time.Millisecond))
	waitFor(t, 30*time.Second, "demo-1 to accept a write", m1.acceptsWrite)
}

// streamingTrio starts a 3-member cluster and waits until demo-1 and demo-2 stream from demo-0.
func streamingTrio(t *testing.T) (*cluster, *member, *member, *member) {
	t.Helper()
	c := newCluster(t, 3)
	c.startAll()
	m0, m1, m2 := c.members[0], c.members[1], c.members[2]
	waitFor(t, 60*time.Second, "demo-1 and demo-2 to stream from demo-0", func() bool {
		return m1.streamingFrom(m0) && m2.streamingFrom(m0)
	})
	return c, m0, m1, m2
}

// holdIdleSession opens a session on m that never ends by itself (a smart shutdown waits for
// it), closed when the test ends.
func holdIdleSession(t *testing.T, m *member) {
	t.Helper()
	ctx, cancel := contextWithTimeout(10 * time.Second)
	defer cancel()
	idle, err := m.connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { idle.Close(context.Background()) })
}

// expectHurriedExit: m, replaced and sent SIGTERM at began, exits cleanly well before its smart
// phase would end (--stop-delay 20s: 10 s), and logs why.
func expectHurriedExit(t *testing.T, m *member, began time.Time, after string) {
	t.Helper()
	select {
	case <-m.done:
	case <-time.After(8 * time.Second):
		t.Fatalf("%s still running %s after %s: the smart phase was not cut short", m.name, time.Since(began).Round(time.Millisecond), after)
	}
	if m.code != 0 {
		t.Errorf("%s exit code %d, want 0 (a clean fast shutdown)", m.name, m.code)
	}
	if m.findLog("another instance was chosen as primary: ending the smart shutdown early") == nil {
		t.Errorf("%s did not log why it ended the smart shutdown early", m.name)
	}
}
