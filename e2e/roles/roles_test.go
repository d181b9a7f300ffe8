package roles

import (
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// switchover annotates from replica and to primary, then measures how long
// until to accepts a write and from streams from it again.
func (c *cluster) switchover(from, to *member) (write, stream time.Duration) {
	c.t.Helper()
	pid := from.managerPID()
	began := time.Now()
	c.annotate(from.name, "replica", to.name, "primary")
	waitFor(c.t, 30*time.Second, to.name+" to accept a write", func() bool {
		return to.acceptsWrite()
	})
	write = time.Since(began)
	waitFor(c.t, 60*time.Second, from.name+" to stream from "+to.name, func() bool { return from.streamingFrom(to) })
	stream = time.Since(began)
	waitFor(c.t, 10*time.Second, to.name+" to report primary", to.isPrimary)
	if got := from.managerPID(); got != pid || from.exited() {
		c.t.Errorf("%s: manager PID %d, was %d (exited %v): the rejoin restarted the container", from.name, got, pid, from.exited())
	}
	c.t.Logf("switchover %s -> %s: new primary accepts writes after %s, old primary streams again after %s",
		from.name, to.name, write.Round(time.Millisecond), stream.Round(time.Millisecond))
	return write, stream
}

// acceptsWrite tries one write with a short timeout.
func (m *member) acceptsWrite() bool {
	ctx, cancel := contextWithTimeout(500 * time.Millisecond)
	defer cancel()
	conn, err := m.connect(ctx)
	if err != nil {
		return false
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, "INSERT INTO probe (member) VALUES ('switchover-check')")
	return err == nil
}

// TestSwitchoverBothWays: three instances; switch the primary to demo-1 and
// back by annotation under a continuous writer. Every acknowledged write
// survives, no two instances ever accept writes, the old primary rejoins as a
// streaming replica in place (same manager PID), the third follows.
func TestSwitchoverBothWays(t *testing.T) {
	c := newCluster(t, 3)
	c.startAll()
	m0, m1, m2 := c.members[0], c.members[1], c.members[2]
	ch := c.startChecker()
	time.Sleep(500 * time.Millisecond)

	c.switchover(m0, m1)
	waitFor(t, 30*time.Second, "demo-2 to follow demo-1", func() bool { return m2.streamingFrom(m1) })
	time.Sleep(500 * time.Millisecond)
	c.switchover(m1, m0)
	waitFor(t, 30*time.Second, "demo-2 to follow demo-0", func() bool { return m2.streamingFrom(m0) })
	time.Sleep(500 * time.Millisecond)
	ch.stop()

	ch.verifyAcked(m0)
	if runs := ch.writerRuns(); !slices.Equal(runs, []string{"demo-0", "demo-1", "demo-0"}) {
		t.Errorf("members that accepted probe writes, in time order: %v; want demo-0, demo-1, demo-0 (anything else means two writers at once)", runs)
	}
	for name, want := range map[string]string{"demo-0": "primary", "demo-1": "replica", "demo-2": "replica"} {
		waitFor(t, 10*time.Second, name+" labelled "+want, func() bool { return c.label(name) == want })
	}
	for _, m := range []*member{m0, m1} {
		ev := c.events(m.name)
		if count(ev, "Promoted") < 1 || count(ev, "Demoted") < 1 {
			t.Errorf("%s events %v: want Promoted and Demoted", m.name, ev)
		}
	}
	assertNoSecrets(t, c)

	// SIGTERM to the primary's manager: a clean shutdown that hands the
	// Lease on with its final LSN instead of letting it expire.
	m0.terminate(0)
	if m0.code != 0 {
		t.Errorf("demo-0 exit code %d after SIGTERM, want 0", m0.code)
	}
	ctx, cancel := contextWithTimeout(5 * time.Second)
	defer cancel()
	lease, err := c.admin.CoordinationV1().Leases(namespace).Get(ctx, "demo-primary", metav1GetOptions())
	if err != nil {
		t.Fatal(err)
	}
	if lease.Spec.HolderIdentity != nil || !strings.Contains(lease.Annotations["pgwarden.io/final-lsn"], `"pod":"demo-0"`) {
		t.Errorf("after demo-0's shutdown the lease is %v %v; want no holder and demo-0's final LSN", lease.Spec.HolderIdentity, lease.Annotations)
	}
	if l := c.label(m0.name); l != "" {
		t.Errorf("demo-0 still labelled %q after shutdown", l)
	}
}

// assertNoSecrets: no password on any command line, in any environment, or
// in the managers' logs.
func assertNoSecrets(t *testing.T, c *cluster) {
	t.Helper()
	secrets := []string{superPassword, replPassword}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		for _, f := range []string{"cmdline", "environ"} {
			b, err := os.ReadFile(filepath.Join("/proc", e.Name(), f))
			if err != nil {
				continue
			}
			for _, s := range secrets {
				if strings.Contains(string(b), s) {
					t.Errorf("a password is in /proc/%s/%s", e.Name(), f)
				}
			}
		}
	}
	for _, m := range c.members {
		for _, s := range secrets {
			if strings.Contains(m.out.String()+m.errOut.String(), s) {
				t.Errorf("a password is in %s's log", m.name)
			}
		}
	}
}

// TestBadInput: invalid annotation values change nothing and are reported
// once each; two pods annotated primary at once make exactly one primary (the
// Lease decides; the other waits); the Lease deleted by hand makes no second
// primary (the holder re-creates it).
func TestBadInput(t *testing.T) {
	c := newCluster(t, 3)
	c.startAll()
	m0, m1, m2 := c.members[0], c.members[1], c.members[2]
	pid := m0.managerPID()
	ch := c.startChecker()

	// Invalid values on the primary and on a replica.
	c.annotate(m0.name, "master", m1.name, "Primary")
	waitFor(t, 10*time.Second, "InvalidRole events", func() bool {
		return count(c.events(m0.name), "InvalidRole") == 1 && count(c.events(m1.name), "InvalidRole") == 1
	})
	c.annotate(m0.name, "") // another bad value: reported again
	waitFor(t, 10*time.Second, "a second InvalidRole event", func() bool { return count(c.events(m0.name), "InvalidRole") == 2 })
	time.Sleep(2 * time.Second)
	if count(c.events(m0.name), "InvalidRole") != 2 || count(c.events(m1.name), "InvalidRole") != 1 {
		t.Errorf("InvalidRole events repeated: %v / %v", c.events(m0.name), c.events(m1.name))
	}
	if !m0.isPrimary() || !m1.streamingFrom(m0) || m0.managerPID() != pid {
		t.Fatalf("an invalid annotation changed something: %v %v", m0.status(), m1.status())
	}

	// Two (then three) pods want to be primary: the holder stays, the others wait.
	c.annotate(m0.name, "primary", m1.name, "primary", m2.name, "primary")
	waitFor(t, 10*time.Second, "demo-1 to wait for the lease", func() bool {
		st := m1.status()
		return st != nil && st["phase"] == "promoting"
	})
	// The Lease deleted by hand while others wait for it.
	ctx, cancel := contextWithTimeout(10 * time.Second)
	defer cancel()
	if err := c.admin.CoordinationV1().Leases(namespace).Delete(ctx, "demo-primary", metav1DeleteOptions()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the holder to re-create the lease", func() bool { h, _ := c.holder(); return h == m0.name })
	deadline := time.Now().Add(leaseDuration + 2*time.Second)
	for time.Now().Before(deadline) {
		for _, m := range []*member{m1, m2} {
			if st := m.status(); st != nil && st["role"] == "primary" {
				t.Fatalf("%s became primary while %s holds the lease: %v", m.name, m0.name, st)
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !m0.isPrimary() {
		t.Fatalf("demo-0 is no longer primary: %v", m0.status())
	}

	// The holder steps down: exactly one of the two candidates wins.
	c.annotate(m0.name, "replica")
	var winner, loser *member
	waitFor(t, 20*time.Second, "one candidate to become primary", func() bool {
		switch {
		case m1.isPrimary():
			winner, loser = m1, m2
		case m2.isPrimary():
			winner, loser = m2, m1
		}
		return winner != nil
	})
	waitFor(t, 20*time.Second, "demo-0 to follow the winner", func() bool { return m0.streamingFrom(winner) })
	time.Sleep(2 * time.Second)
	if st := loser.status(); st == nil || st["role"] != "replica" || st["phase"] != "promoting" {
		t.Errorf("the loser %s: %v; want a replica still waiting for the lease", loser.name, st)
	}
	c.annotate(loser.name, "replica")
	waitFor(t, 20*time.Second, loser.name+" to follow the winner", func() bool { return loser.streamingFrom(winner) })
	ch.stop()
	ch.verifyAcked(winner)
	if runs := ch.writerRuns(); !slices.Equal(runs, []string{m0.name, winner.name}) {
		t.Errorf("members that accepted probe writes, in time order: %v; want %s then %s", runs, m0.name, winner.name)
	}
}

// diverge makes old (the primary) write WAL that new never receives — the
// replication link cut with iptables, rows written through the socket — then
// gives the Lease to new by hand, as if old had lost it: old fences (an
// immediate shutdown, its data diverged). The link stays cut until the caller
// heals it after new's promotion: TCP would otherwise still deliver the
// diverging WAL the kernel keeps retransmitting for the dead walsender.
func (c *cluster) diverge(old, new *member) (heal func()) {
	c.t.Helper()
	restore := c.cutReplication(old)
	ctx, cancel := contextWithTimeout(10 * time.Second)
	defer cancel()
	conn, err := old.connectSocket(ctx)
	if err != nil {
		c.t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE diverged AS SELECT g FROM generate_series(1, 1000) g"); err != nil {
		c.t.Fatal(err)
	}
	conn.Close(ctx)
	lease, err := c.admin.CoordinationV1().Leases(namespace).Get(ctx, "demo-primary", metav1GetOptions())
	if err != nil {
		c.t.Fatal(err)
	}
	holder := new.name
	lease.Spec.HolderIdentity = &holder
	lease.Annotations["pgwarden.io/holder-ip"] = new.ip
	if _, err := c.admin.CoordinationV1().Leases(namespace).Update(ctx, lease, metav1UpdateOptions()); err != nil {
		c.t.Fatal(err)
	}
	waitFor(c.t, 10*time.Second, old.name+" to fence itself", func() bool {
		st := old.status()
		return st != nil && st["phase"] == "fenced" && st["postmasterPID"] == float64(0)
	})
	return restore
}

// TestRewindAndReclone: a former primary that diverged (it wrote WAL the new
// primary never received) is rewound with pg_rewind and streams again; when
// pg_rewind fails (its WAL is gone), it is re-cloned. Both in place: the
// manager keeps running.
func TestRewindAndReclone(t *testing.T) {
	c := newCluster(t, 2)
	c.startAll()
	m0, m1 := c.members[0], c.members[1]
	pid0, pid1 := m0.managerPID(), m1.managerPID()

	heal := c.diverge(m0, m1)
	c.annotate(m0.name, "replica", m1.name, "primary")
	waitFor(t, 30*time.Second, "demo-1 to be primary", m1.isPrimary)
	heal()
	waitFor(t, 60*time.Second, "demo-0 to stream from demo-1", func() bool { return m0.streamingFrom(m1) })
	if ev := c.events(m0.name); count(ev, "Rewound") != 1 || count(ev, "Recloned") != 0 {
		t.Errorf("demo-0 events %v: want one Rewound, no Recloned", ev)
	}
	assertNoDiverged(t, m0)
	if m0.managerPID() != pid0 {
		t.Errorf("demo-0's manager restarted")
	}

	// Now demo-1 diverges, and loses its WAL before it can be rewound.
	heal = c.diverge(m1, m0)
	removeWAL(t, m1)
	c.annotate(m1.name, "replica", m0.name, "primary")
	waitFor(t, 30*time.Second, "demo-0 to be primary", m0.isPrimary)
	heal()
	waitFor(t, 90*time.Second, "demo-1 to stream from demo-0", func() bool { return m1.streamingFrom(m0) })
	if ev := c.events(m1.name); count(ev, "RewindFailed") != 1 || count(ev, "Recloned") != 1 {
		t.Errorf("demo-1 events %v: want one RewindFailed and one Recloned", ev)
	}
	assertNoDiverged(t, m1)
	if m1.managerPID() != pid1 || m1.exited() {
		t.Errorf("demo-1's manager restarted or exited")
	}
	if f := m1.findLog("postgres failed"); f != nil {
		t.Errorf("demo-1 crash-looped: %v", f)
	}

	// A pg_rewind or clone killed half-way (the container killed, the node lost) leaves its
	// marker beside PGDATA; the next start must re-clone instead of running or rewinding that
	// directory. Simulated: demo-1 stops, its control file is ruined, and the marker a killed
	// pg_rewind leaves is written. A finished rebuild leaves no marker.
	for _, m := range []*member{m0, m1} {
		if _, err := os.Stat(rebuildMarker(m)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: %s exists after a finished rebuild (%v)", m.name, rebuildMarker(m), err)
		}
	}
	m1.terminate(0)
	if err := os.WriteFile(filepath.Join(m1.pgdata, "global", "pg_control"), make([]byte, 8192), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(rebuildMarker(m1), []byte("pg_rewind\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	m1.start()
	m1.waitLog(30*time.Second, "an earlier rebuild of the data directory was interrupted: re-cloning")
	waitFor(t, 90*time.Second, "demo-1 to stream from demo-0 again", func() bool { return m1.streamingFrom(m0) })
	if ev := c.events(m1.name); count(ev, "Recloned") != 2 {
		t.Errorf("demo-1 events %v: want a second Recloned", ev)
	}
	if _, err := os.Stat(rebuildMarker(m1)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s exists after the re-clone (%v)", rebuildMarker(m1), err)
	}
}

// rebuildMarker is where an instance records a running pg_rewind or clone.
func rebuildMarker(m *member) string {
	return filepath.Join(filepath.Dir(m.pgdata), "pgwarden-rebuilding")
}

// assertNoDiverged: the rows only the old primary had are gone.
func assertNoDiverged(t *testing.T, m *member) {
	t.Helper()
	ctx, cancel := contextWithTimeout(5 * time.Second)
	defer cancel()
	conn, err := m.connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_class WHERE relname = 'diverged'").Scan(&n); err != nil || n != 0 {
		t.Errorf("%s still has the diverged table (%d, %v)", m.name, n, err)
	}
}

// removeWAL deletes the WAL segments of a stopped instance.
func removeWAL(t *testing.T, m *member) {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(m.pgdata, "pg_wal"))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range entries {
		if len(e.Name()) == 24 && !e.IsDir() {
			if err := os.Remove(filepath.Join(m.pgdata, "pg_wal", e.Name())); err != nil {
				t.Fatal(err)
			}
			n++
		}
	}
	t.Logf("removed %d WAL segments of %s", n, m.name)
}

// TestPartitionFences: the primary is cut off from the API server (its own
// API connections only; postgres and everyone else are unaffected). It fences
// itself — immediate shutdown — before the Lease can expire for anyone else
// (the margin is in its log); another instance takes over after expiry; when
// the partition heals, the old primary sees it is to be a replica and rejoins
// in place.
func TestPartitionFences(t *testing.T) {
	c := newCluster(t, 3)
	c.startAll()
	m0, m1, m2 := c.members[0], c.members[1], c.members[2]
	pid := m0.managerPID()
	ch := c.startChecker()
	time.Sleep(500 * time.Millisecond)

	cut := time.Now()
	m0.proxy.Cut()
	rec := m0.waitLog(15*time.Second, "fenced: primary lease lost")
	margin, _ := rec["fenceMarginMs"].(float64)
	since, _ := rec["sinceLastRenewMs"].(float64)
	t.Logf("demo-0 fenced %s after the partition, %.0f ms after its last renew; margin before the lease could expire for others: %.0f ms",
		time.Since(cut).Round(time.Millisecond), since, margin)
	if margin <= 0 {
		t.Errorf("fenced with margin %.0f ms: too late", margin)
	}
	waitFor(t, 5*time.Second, "demo-0's postgres to stop", func() bool { return !m0.acceptsWrite() })
	m0.waitLog(5*time.Second, "postgres stopped")

	// The operator's part: demo-1 is to take over, demo-0 to step down.
	c.annotate(m0.name, "replica", m1.name, "primary")
	waitFor(t, 30*time.Second, "demo-1 to be primary", m1.isPrimary)
	waitFor(t, 30*time.Second, "demo-2 to follow demo-1", func() bool { return m2.streamingFrom(m1) })
	if st := m0.status(); st == nil || st["phase"] != "fenced" || st["postmasterPID"] != float64(0) {
		t.Errorf("demo-0 while partitioned: %v; want fenced with postgres stopped", st)
	} else if r, _ := st["fencedReason"].(string); !strings.HasPrefix(r, "primary lease lost: ") || st["fenced"] != nil {
		// Not a fence on request: fenced (on request) stays unset, the reason names the Lease.
		t.Errorf("demo-0 while partitioned: fenced %v, fencedReason %q", st["fenced"], r)
	}
	// Postgres is stopped on purpose: the kubelet must not restart the container for it (a
	// restart cannot reach the API server either, and one that lands during the rewind after
	// the heal ruins the data directory). Readiness fails.
	for _, path := range []string{"/startupz", "/healthz"} {
		if code, body := get(m0.statusAddr, path); code != http.StatusOK {
			t.Errorf("%s of the fenced demo-0: %d %s; want 200", path, code, body)
		}
	}
	if code, _ := get(m0.statusAddr, "/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz of the fenced demo-0: %d; want 503", code)
	}

	m0.proxy.Restore()
	waitFor(t, 60*time.Second, "demo-0 to stream from demo-1", func() bool { return m0.streamingFrom(m1) })
	if m0.managerPID() != pid || m0.exited() {
		t.Errorf("demo-0's manager restarted or exited")
	}
	time.Sleep(500 * time.Millisecond)
	ch.stop()
	ch.verifyAcked(m1)
	if runs := ch.writerRuns(); !slices.Equal(runs, []string{"demo-0", "demo-1"}) {
		t.Errorf("members that accepted probe writes, in time order: %v; want demo-0 then demo-1", runs)
	}
	if ev := c.events(m0.name); count(ev, "Fenced") != 1 {
		t.Errorf("demo-0 events %v: want one Fenced", ev)
	}
}
