package roles

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/pgwarden/pgwarden/e2e/internal/harness"
	"github.com/pgwarden/pgwarden/pkg/roles"
)

// setFence sets pgwarden.io/fenced on a Pod to value; nil removes it.
func (c *cluster) setFence(pod string, value any) {
	c.t.Helper()
	ctx, cancel := contextWithTimeout(10 * time.Second)
	defer cancel()
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]any{roles.FencedAnnotation: value}}})
	if _, err := c.admin.CoreV1().Pods(namespace).Patch(ctx, pod, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		c.t.Fatalf("cannot set the fence annotation of %s: %v", pod, err)
	}
}

// get returns the status code and body of GET http://addr/path (0 when it does not answer).
func get(addr, path string) (int, string) {
	ctx, cancel := contextWithTimeout(2 * time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+path, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// metrics scrapes the member's /metrics: sample name{labels} -> value.
func (m *member) metrics() map[string]float64 {
	code, body := get(m.metricsAddr, "/metrics")
	if code != http.StatusOK {
		m.c.t.Fatalf("%s /metrics: %d %s", m.name, code, body)
	}
	return harness.ParseExposition(m.c.t, body)
}

// fencedStopped: /status says fenced on request with no postmaster.
func (m *member) fencedStopped() bool {
	st := m.status()
	return st != nil && st["phase"] == "fenced" && st["fenced"] == true && st["postmasterPID"] == float64(0)
}

func (m *member) rows(sql string) int {
	m.c.t.Helper()
	ctx, cancel := contextWithTimeout(5 * time.Second)
	defer cancel()
	conn, err := m.connect(ctx)
	if err != nil {
		return -1
	}
	defer conn.Close(context.Background())
	var n int
	if err := conn.QueryRow(ctx, sql).Scan(&n); err != nil {
		return -1
	}
	return n
}

// TestFenceOnRequest: a replica fenced with pgwarden.io/fenced=true stops
// postgres and keeps it stopped while its manager stays up (liveness passes,
// readiness fails, /status and /metrics say fenced), without any failover;
// an invalid value changes nothing; unfenced it streams again in place. A
// fenced primary keeps running until it is demoted (the operator's
// switchover, played here by the test), then stops; unfenced, it follows the
// new primary.
func TestFenceOnRequest(t *testing.T) {
	c := newCluster(t, 3)
	c.startAll()
	m0, m1, m2 := c.members[0], c.members[1], c.members[2]
	pid2 := m2.managerPID()

	// --- a replica ---
	began := time.Now()
	c.setFence(m2.name, "true")
	waitFor(t, 30*time.Second, "demo-2 to report fenced with postgres stopped", m2.fencedStopped)
	t.Logf("demo-2 fenced (postgres stopped) %s after the annotation", time.Since(began).Round(time.Millisecond))
	st := m2.status()
	if r, _ := st["fencedReason"].(string); !strings.Contains(r, "pgwarden.io/fenced=true") || st["ready"] != false {
		t.Errorf("demo-2 /status while fenced: %v", st)
	}
	if code, body := get(m2.statusAddr, "/healthz"); code != http.StatusOK {
		t.Errorf("liveness of a fenced instance: %d %s; want 200 (the kubelet must not restart it)", code, body)
	}
	if code, body := get(m2.statusAddr, "/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "fenced on request") {
		t.Errorf("readiness of a fenced instance: %d %s; want 503 saying fenced", code, body)
	}
	waitFor(t, 10*time.Second, "demo-2 unlabelled", func() bool { return c.label(m2.name) == "" })
	if ms := m2.metrics(); ms["pgwarden_instance_fenced"] != 1 || ms[`pgwarden_instance_role{role="replica"}`] != 0 {
		t.Errorf("demo-2 metrics while fenced: fenced %v, role replica %v", ms["pgwarden_instance_fenced"], ms[`pgwarden_instance_role{role="replica"}`])
	}
	if ctx, cancel := contextWithTimeout(2 * time.Second); true {
		if conn, err := m2.connect(ctx); err == nil {
			conn.Close(context.Background())
			t.Error("demo-2 accepts connections while fenced")
		}
		cancel()
	}
	// No failover, nothing else moves: the primary and the other replica carry on.
	m0.exec("INSERT INTO acked VALUES ('during-fence')")
	if !m0.isPrimary() || !m1.streamingFrom(m0) {
		t.Errorf("the rest of the cluster moved: demo-0 primary %v, demo-1 streaming %v", m0.isPrimary(), m1.streamingFrom(m0))
	}
	// An invalid value: an Event, and the fence stays.
	c.setFence(m2.name, "yes")
	waitFor(t, 10*time.Second, "an InvalidFence Event on demo-2", func() bool { return count(c.events(m2.name), roles.ReasonInvalidFence) == 1 })
	if !m2.fencedStopped() {
		t.Errorf("an invalid fence value changed demo-2: %v", m2.status())
	}
	if ev := c.events(m2.name); count(ev, roles.ReasonFencedStopped) != 1 {
		t.Errorf("demo-2 events %v: want one FencedStopped", ev)
	}
	if got := m2.managerPID(); got != pid2 || m2.exited() {
		t.Fatalf("demo-2's manager changed (PID %d, was %d; exited %v) while fenced", got, pid2, m2.exited())
	}
	// The container restarts while fenced, the annotation still invalid ("yes"): the new
	// process knows no earlier valid value and takes the safe side, fenced. It comes back
	// without starting postgres, and its startup and liveness probes pass (else the kubelet
	// would kill it in a loop).
	m2.terminate(pid2)
	if m2.code != 0 {
		t.Errorf("demo-2 exit code %d after SIGTERM while fenced, want 0", m2.code)
	}
	m2.start()
	pid2 = m2.managerPID()
	waitFor(t, 30*time.Second, "demo-2 to come back fenced", m2.fencedStopped)
	for _, path := range []string{"/startupz", "/healthz"} {
		if code, body := get(m2.statusAddr, path); code != http.StatusOK {
			t.Errorf("%s of an instance restarted while fenced: %d %s", path, code, body)
		}
	}
	if m2.findLog("postgres started") != nil {
		t.Error("the restarted fenced instance started postgres")
	}

	// Unfenced: it streams again, in place, with what was written meanwhile.
	began = time.Now()
	c.setFence(m2.name, nil)
	waitFor(t, 60*time.Second, "demo-2 to stream from demo-0 again", func() bool { return m2.streamingFrom(m0) })
	t.Logf("demo-2 streams again %s after the fence was lifted", time.Since(began).Round(time.Millisecond))
	waitFor(t, 10*time.Second, "demo-2 to replay the write made while fenced", func() bool {
		return m2.rows("SELECT count(*) FROM acked WHERE k = 'during-fence'") == 1
	})
	waitFor(t, 10*time.Second, "demo-2 labelled replica and ready", func() bool {
		st := m2.status()
		return c.label(m2.name) == "replica" && st != nil && st["ready"] == true && st["fenced"] == nil
	})
	if got := m2.managerPID(); got != pid2 {
		t.Errorf("demo-2's manager PID %d, was %d: the container restarted", got, pid2)
	}

	// --- the primary ---
	c.setFence(m0.name, "true")
	waitFor(t, 10*time.Second, "demo-0 to say its fence waits", func() bool {
		st := m0.status()
		r, _ := st["fencedReason"].(string)
		return strings.Contains(r, "while primary")
	})
	if !m0.isPrimary() || !m0.acceptsWrite() {
		t.Fatalf("demo-0 stopped being a writable primary on a fence request alone: %v", m0.status())
	}
	waitFor(t, 10*time.Second, "a FenceWaiting Event on demo-0", func() bool { return count(c.events(m0.name), roles.ReasonFenceWaiting) == 1 })
	// Its container restarts meanwhile: it comes back as the primary (still waiting), not fenced.
	m0.terminate(0)
	m0.start()
	waitFor(t, 60*time.Second, "demo-0 to be the primary again, its fence still waiting", func() bool {
		r, _ := m0.status()["fencedReason"].(string)
		return m0.isPrimary() && strings.Contains(r, "while primary")
	})
	waitFor(t, 30*time.Second, "demo-1 to stream from demo-0 again", func() bool { return m1.streamingFrom(m0) })
	// The operator's part: switch over to demo-1.
	c.annotate(m0.name, "replica", m1.name, "primary")
	waitFor(t, 60*time.Second, "demo-1 to be primary", m1.isPrimary)
	waitFor(t, 60*time.Second, "demo-0 to stop, fenced", m0.fencedStopped)
	waitFor(t, 60*time.Second, "demo-2 to follow demo-1", func() bool { return m2.streamingFrom(m1) })
	m1.exec("INSERT INTO acked VALUES ('after-switchover')")
	c.setFence(m0.name, "false")
	waitFor(t, 60*time.Second, "demo-0 to stream from demo-1", func() bool { return m0.streamingFrom(m1) })
	waitFor(t, 10*time.Second, "demo-0 to replay the write made while fenced", func() bool {
		return m0.rows("SELECT count(*) FROM acked WHERE k = 'after-switchover'") == 1
	})
}

// TestReplayLagAndMetrics: /status replayLagSeconds and the lag metrics on a
// replica: 0 when it has replayed what it received, above 0 while replay is
// paused behind received WAL (and at least as old as the last replayed
// commit), back to 0 once replay resumes. The primary exports its role, WAL
// position, Lease renew age and connections.
func TestReplayLagAndMetrics(t *testing.T) {
	c := newCluster(t, 2)
	c.startAll()
	m0, m1 := c.members[0], c.members[1]

	m0.exec("INSERT INTO acked VALUES ('lag-0')")
	waitFor(t, 10*time.Second, "demo-1 to report replay lag 0", func() bool {
		st := m1.status()
		return st != nil && st["replayLagSeconds"] == float64(0)
	})
	if st := m0.status(); st["replayLagSeconds"] != nil {
		t.Errorf("the primary serves replayLagSeconds: %v", st)
	}

	// Pause replay, then commit on the primary: received moves past replayed.
	ctx, cancel := contextWithTimeout(10 * time.Second)
	defer cancel()
	conn, err := m1.connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "SELECT pg_wal_replay_pause()"); err != nil {
		t.Fatal(err)
	}
	var lastReplayed time.Time
	if err := conn.QueryRow(ctx, "SELECT pg_last_xact_replay_timestamp()").Scan(&lastReplayed); err != nil {
		t.Fatal(err)
	}
	m0.exec("INSERT INTO acked VALUES ('lag-1')")
	var lag float64
	waitFor(t, 10*time.Second, "demo-1 to report a replay lag above 0", func() bool {
		st := m1.status()
		v, ok := st["replayLagSeconds"].(float64)
		lag = v
		return ok && v > 0
	})
	if min := time.Since(lastReplayed).Seconds() - 5; lag < min {
		t.Errorf("replayLagSeconds %.3f, but the last replayed commit is %.3f s old", lag, time.Since(lastReplayed).Seconds())
	}
	ms := m1.metrics()
	if ms["pgwarden_instance_replication_lag_seconds"] <= 0 || ms["pgwarden_instance_replication_lag_bytes"] <= 0 ||
		ms["pgwarden_instance_wal_received_lsn_bytes"] <= ms["pgwarden_instance_wal_replayed_lsn_bytes"] ||
		ms[`pgwarden_instance_role{role="replica"}`] != 1 {
		t.Errorf("replica metrics while replay is paused: %v", pick(ms, "pgwarden_instance_"))
	}
	if _, err := conn.Exec(ctx, "SELECT pg_wal_replay_resume()"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "demo-1 to report replay lag 0 again", func() bool {
		st := m1.status()
		return st != nil && st["replayLagSeconds"] == float64(0)
	})

	p := m0.metrics()
	if p[`pgwarden_instance_role{role="primary"}`] != 1 || p[`pgwarden_instance_role{role="replica"}`] != 0 ||
		p["pgwarden_instance_wal_current_lsn_bytes"] <= 0 || p["pgwarden_instance_timeline"] != 1 ||
		p["pgwarden_instance_connections"] < 1 || p["pgwarden_instance_max_connections"] < 1 || p["pgwarden_instance_ready"] != 1 ||
		p["pgwarden_instance_fenced"] != 0 {
		t.Errorf("primary metrics: %v", pick(p, "pgwarden_instance_"))
	}
	age, ok := p["pgwarden_instance_lease_renew_age_seconds"]
	if !ok || age < 0 || age > leaseDuration.Seconds() {
		t.Errorf("primary lease renew age %v (exported %v); want between 0 and the lease duration", age, ok)
	}
	if _, ok := ms["pgwarden_instance_lease_renew_age_seconds"]; ok {
		t.Error("a replica exports a lease renew age")
	}

	// Every instance metric the monitoring rules and dashboard use is exported.
	names := map[string]bool{}
	for _, set := range []map[string]float64{p, ms, m1.metrics()} {
		for k := range set {
			names[harness.SampleName(k)] = true
		}
	}
	harness.CheckMonitoringMetrics(t, names, func(name string) bool { return !strings.HasPrefix(name, "pgwarden_operator_") })
}

// pick returns the samples whose name starts with prefix, for messages.
func pick(ms map[string]float64, prefix string) string {
	var b strings.Builder
	for k, v := range ms {
		if strings.HasPrefix(k, prefix) {
			fmt.Fprintf(&b, "%s=%s ", k, strconv.FormatFloat(v, 'g', -1, 64))
		}
	}
	return b.String()
}
