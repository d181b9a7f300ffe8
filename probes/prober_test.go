package probes

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// lockedBuffer is a log sink safe for the prober's goroutine and the test.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// startProber runs p.Start until the test ends.
func startProber(t *testing.T, p *Prober) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Start returned %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Start did not return after its context ended")
		}
	})
}

// get calls the handler for path and returns the status code and body.
func get(h http.Handler, path string) (int, string) {
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	return rec.Code, rec.Body.String()
}

// waitCode polls path until it answers code; it fails the test after timeout.
func waitCode(t *testing.T, h http.Handler, path string, code int, timeout time.Duration) string {
	t.Helper()
	var body string
	waitUntil(t, timeout, fmt.Sprintf("%s answering %d", path, code), func() bool {
		var got int
		got, body = get(h, path)
		return got == code
	})
	return body
}

// waitUntil polls cond every 10 ms until it holds, failing after timeout.
func waitUntil(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline.C:
			t.Fatalf("no %s after %s", what, timeout)
		case <-tick.C:
		}
	}
}

func assertCode(t *testing.T, h http.Handler, path string, want int) string {
	t.Helper()
	code, body := get(h, path)
	if code != want {
		t.Errorf("%s = %d %q, want %d", path, code, body, want)
	}
	return body
}

// probeBackends returns the PIDs of the prober's sessions on c.
func probeBackends(t *testing.T, c *pgCluster) []int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := c.connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	rows, _ := conn.Query(ctx, "SELECT pid FROM pg_stat_activity WHERE application_name = $1 ORDER BY pid", applicationName)
	pids, err := pgx.CollectRows(rows, pgx.RowTo[int])
	if err != nil {
		t.Fatal(err)
	}
	return pids
}

// waitChecks waits until n more checks have finished.
func waitChecks(t *testing.T, p *Prober, n int) {
	t.Helper()
	last := p.Snapshot().CheckedAt
	for i := 0; i < n; i++ {
		waitUntil(t, 10*time.Second, "next check", func() bool {
			at := p.Snapshot().CheckedAt
			if at.After(last) {
				last = at
				return true
			}
			return false
		})
	}
}

func TestProberPrimary(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	c := newCluster(t)
	c.startAndWait(t)

	var logs lockedBuffer
	p := New(Config{
		Network:    "unix",
		Address:    c.SocketPath(),
		ConnConfig: c.tcpConnConfig(testPassword),
		Interval:   100 * time.Millisecond,
		Timeout:    time.Second,
		Logger:     slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	h := p.Handler()
	var bodies []string
	startProber(t, p)

	bodies = append(bodies, waitCode(t, h, ReadinessPath, http.StatusOK, 10*time.Second))
	assertCode(t, h, StartupPath, http.StatusOK)
	assertCode(t, h, LivenessPath, http.StatusOK)

	t.Run("snapshot of a primary", func(t *testing.T) {
		s := p.Snapshot()
		if s.CurrentLSN == 0 || time.Since(s.MeasuredAt) > 2*time.Second || s.MeasuredAt.After(s.CheckedAt) {
			t.Errorf("current LSN %v measured at %v (checked at %v)", s.CurrentLSN, s.MeasuredAt, s.CheckedAt)
		}
		want := Snapshot{Verdict: Accepting, Started: true, Ready: true, Timeline: 1, MaxConnections: 30}
		if diff := cmp.Diff(want, s, cmpopts.IgnoreFields(Snapshot{}, "CheckedAt", "MeasuredAt", "CurrentLSN", "Connections")); diff != "" {
			t.Errorf("snapshot (-want +got):\n%s", diff)
		}
		if s.Connections < 1 || s.Connections > 30 {
			t.Errorf("%d connections: the prober's own session counts, and there are at most max_connections", s.Connections)
		}
	})

	t.Run("one kept session", func(t *testing.T) {
		before := probeBackends(t, c)
		waitChecks(t, p, 3)
		after := probeBackends(t, c)
		if len(before) != 1 || !cmp.Equal(before, after) {
			t.Errorf("prober sessions %v then %v, want the same single one", before, after)
		}
	})

	t.Run("pending restart", func(t *testing.T) {
		c.exec(t, "ALTER SYSTEM SET max_connections = 31")
		c.exec(t, "SELECT pg_reload_conf()")
		waitUntil(t, 10*time.Second, "pending restart", func() bool { return p.Snapshot().PendingRestart })
	})

	t.Run("readiness gate", func(t *testing.T) {
		p.SetReadinessGate(func() error { return errors.New("not holding the lease") })
		body := assertCode(t, h, ReadinessPath, http.StatusServiceUnavailable)
		if !strings.Contains(body, "not holding the lease") {
			t.Errorf("body %q does not say why", body)
		}
		if s := p.Snapshot(); s.Ready || s.NotReady == nil {
			t.Errorf("snapshot ready=%v notReady=%v with a failing gate", s.Ready, s.NotReady)
		}
		assertCode(t, h, LivenessPath, http.StatusOK)
		p.SetReadinessGate(func() error { return nil })
		assertCode(t, h, ReadinessPath, http.StatusOK)
		p.SetReadinessGate(nil)
		assertCode(t, h, ReadinessPath, http.StatusOK)
	})

	t.Run("stopped", func(t *testing.T) {
		c.stop()
		bodies = append(bodies, waitCode(t, h, LivenessPath, http.StatusServiceUnavailable, 10*time.Second))
		bodies = append(bodies, assertCode(t, h, ReadinessPath, http.StatusServiceUnavailable))
		// Passed once for this postmaster start: stays passed until reset.
		assertCode(t, h, StartupPath, http.StatusOK)
		p.ResetStartup()
		bodies = append(bodies, assertCode(t, h, StartupPath, http.StatusServiceUnavailable))
		if s := p.Snapshot(); s.Verdict != NoResponse || s.Ready || s.Started {
			t.Errorf("snapshot of a stopped server: %+v", s)
		}
	})

	t.Run("restarted", func(t *testing.T) {
		c.startAndWait(t)
		waitCode(t, h, StartupPath, http.StatusOK, 10*time.Second)
		waitCode(t, h, ReadinessPath, http.StatusOK, 10*time.Second)
		if s := p.Snapshot(); s.PendingRestart {
			t.Error("pending restart still reported after the restart")
		}
	})

	t.Run("smart shutdown not held up", func(t *testing.T) {
		// The prober's kept session would block a smart shutdown; it drops it at
		// the first check that finds the server refusing new connections.
		if got := probeBackends(t, c); len(got) != 1 {
			t.Fatalf("prober sessions %v, want one", got)
		}
		c.signal(t, syscall.SIGTERM)
		c.waitExit(t, 5*time.Second)
		waitCode(t, h, LivenessPath, http.StatusServiceUnavailable, 5*time.Second)
	})

	bodies = append(bodies, logs.String())
	for _, b := range bodies {
		if strings.Contains(b, testPassword) {
			t.Errorf("password found in %q", b)
		}
	}
	if !strings.Contains(logs.String(), "postgres status query fails") {
		t.Errorf("the failure was not logged:\n%s", logs.String())
	}
}

func TestProberReplica(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	primary := newCluster(t)
	primary.startAndWait(t)
	r := newEmptyCluster(t)
	runPG(t, "pg_basebackup", "-D", r.DataDir, "-X", "stream", "-R", "-c", "fast", "--no-sync",
		"-h", primary.SockDir, "-p", strconv.Itoa(primary.Port), "-U", "postgres")
	r.start(t)
	// PostgreSQL 15 reports a hot standby as "ready" in postmaster.pid.
	r.waitStatus(t, 30*time.Second, "ready")

	p := New(Config{
		Network: "tcp", Address: r.TCPAddr(),
		ConnConfig: r.tcpConnConfig(testPassword),
		Interval:   100 * time.Millisecond,
	})
	startProber(t, p)
	h := p.Handler()
	waitCode(t, h, ReadinessPath, http.StatusOK, 10*time.Second)

	primary.exec(t, "CREATE TABLE t AS SELECT 1 AS x")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := primary.connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var lsnText string
	if err := conn.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&lsnText); err != nil {
		t.Fatal(err)
	}
	primaryLSN, err := ParseLSN(lsnText)
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "replay of the primary's write", func() bool {
		s := p.Snapshot()
		return s.ReplayLSN >= primaryLSN && s.ReceivedLSN >= primaryLSN
	})
	s := p.Snapshot()
	// Replay has caught up with what was received: the replay lag is 0.
	zero := 0.0
	want := Snapshot{Verdict: Accepting, Started: true, Ready: true, InRecovery: true, Timeline: 1, ReplayLagSeconds: &zero}
	if diff := cmp.Diff(want, s, cmpopts.IgnoreFields(Snapshot{}, "CheckedAt", "MeasuredAt", "ReceivedLSN", "ReplayLSN", "LatestEndLSN",
		"Connections", "MaxConnections")); diff != "" {
		t.Errorf("snapshot (-want +got):\n%s", diff)
	}
	if s.LatestEndLSN == 0 || s.Connections < 1 || s.MaxConnections < 1 {
		t.Errorf("streaming replica: latest end LSN %v, connections %d of %d", s.LatestEndLSN, s.Connections, s.MaxConnections)
	}
}

// TestProberHungServer: a server that accepts TCP connections and then never
// answers (at all, after authentication, or to a query) must not make a check
// exceed its timeout, and the handlers answer at once meanwhile.
func TestProberHungServer(t *testing.T) {
	silent := func(c net.Conn) { _, _ = io.Copy(io.Discard, c) }
	upButRefusing := func(c net.Conn) {
		if readStartup(c) != nil {
			_, _ = c.Write(pgError("28000", "no pg_hba.conf entry"))
		}
	}
	for _, tt := range []struct {
		name        string
		ping, query func(net.Conn)
		liveness    int
		readyError  string
	}{
		{"silent", silent, silent, http.StatusServiceUnavailable, "not accepting connections"},
		{"silent after authentication", upButRefusing, func(c net.Conn) {
			if readStartup(c) != nil {
				_, _ = c.Write(authOK)
				silent(c)
			}
		}, http.StatusOK, "cannot connect"},
		{"silent on the query", upButRefusing, func(c net.Conn) {
			if readStartup(c) != nil {
				_, _ = c.Write(authOK)
				_, _ = c.Write(msg('K', u32(42), u32(4242)))
				_, _ = c.Write(msg('Z', []byte("I")))
				silent(c)
			}
		}, http.StatusOK, "cannot run the status query"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			pingAddr := fakeServer(t, "tcp", tt.ping)
			host, port, _ := net.SplitHostPort(fakeServer(t, "tcp", tt.query))
			const timeout = 400 * time.Millisecond
			p := New(Config{
				Network: "tcp", Address: pingAddr,
				ConnConfig: func(context.Context) (*pgx.ConnConfig, error) {
					cfg, err := pgx.ParseConfig("host=" + host + " port=" + port + " user=postgres dbname=postgres sslmode=disable")
					if err != nil {
						return nil, err
					}
					cfg.Password = testPassword
					return cfg, nil
				},
				Interval: 50 * time.Millisecond,
				Timeout:  timeout,
			})
			started := time.Now()
			startProber(t, p)
			h := p.Handler()
			var slowest time.Duration
			waitUntil(t, 5*time.Second, "first check", func() bool {
				t0 := time.Now()
				get(h, LivenessPath)
				slowest = max(slowest, time.Since(t0))
				return !p.Snapshot().CheckedAt.IsZero()
			})
			if took := p.Snapshot().CheckedAt.Sub(started); took > timeout+250*time.Millisecond {
				t.Errorf("first check took %s, timeout %s", took, timeout)
			}
			if slowest > 100*time.Millisecond {
				t.Errorf("a handler took %s while a check hung", slowest)
			}
			assertCode(t, h, LivenessPath, tt.liveness)
			if body := assertCode(t, h, ReadinessPath, http.StatusServiceUnavailable); !strings.Contains(body, tt.readyError) {
				t.Errorf("readiness body %q does not contain %q", body, tt.readyError)
			}
			// Later checks are bounded too.
			t0 := p.Snapshot().CheckedAt
			waitChecks(t, p, 2)
			if per := p.Snapshot().CheckedAt.Sub(t0) / 2; per > timeout+250*time.Millisecond {
				t.Errorf("checks took %s each, timeout %s", per, timeout)
			}
		})
	}
}

// TestProberStale: once the last check is older than the bound, every probe
// fails instead of serving an old OK.
func TestProberStale(t *testing.T) {
	addr := fakeServer(t, "unix", func(c net.Conn) {
		if readStartup(c) != nil {
			_, _ = c.Write(pgError("28000", "no pg_hba.conf entry"))
		}
	})
	p := New(Config{Network: "unix", Address: addr}) // no ConnConfig: never ready
	h := p.Handler()
	for _, path := range []string{StartupPath, LivenessPath, ReadinessPath} {
		if body := assertCode(t, h, path, http.StatusServiceUnavailable); !strings.Contains(body, "no check") {
			t.Errorf("%s before any check: %q", path, body)
		}
	}
	p.check(context.Background())
	assertCode(t, h, StartupPath, http.StatusOK)
	assertCode(t, h, LivenessPath, http.StatusOK)
	if body := assertCode(t, h, ReadinessPath, http.StatusServiceUnavailable); !strings.Contains(body, "no connection configuration") {
		t.Errorf("readiness without configuration: %q", body)
	}

	checked := p.Snapshot().CheckedAt
	p.now = func() time.Time { return checked.Add(p.staleAfter + time.Millisecond) }
	for _, path := range []string{StartupPath, LivenessPath, ReadinessPath} {
		if body := assertCode(t, h, path, http.StatusServiceUnavailable); !strings.Contains(body, "stale") {
			t.Errorf("%s when stale: %q", path, body)
		}
	}
	if s := p.Snapshot(); !s.Stale || s.Ready {
		t.Errorf("stale snapshot: stale=%v ready=%v", s.Stale, s.Ready)
	}
	if want := 3*DefaultInterval + DefaultTimeout; p.staleAfter != want {
		t.Errorf("default staleness bound %s, want %s", p.staleAfter, want)
	}

	// Every answer was counted: 3 failures before the check, 2 successes and 1
	// failure after it, 3 failures when stale.
	reg := prometheus.NewRegistry()
	reg.MustRegister(p.Collectors()...)
	_, metrics := get(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), "/metrics")
	for _, line := range []string{
		`pgwarden_probe_total{probe="startup",result="success"} 1`,
		`pgwarden_probe_total{probe="startup",result="failure"} 2`,
		`pgwarden_probe_total{probe="liveness",result="success"} 1`,
		`pgwarden_probe_total{probe="liveness",result="failure"} 2`,
		`pgwarden_probe_total{probe="readiness",result="success"} 0`,
		`pgwarden_probe_total{probe="readiness",result="failure"} 3`,
		`pgwarden_probe_check_duration_seconds_count{check="ping"} 1`,
	} {
		if !strings.Contains(metrics, line+"\n") {
			t.Errorf("metrics lack %q:\n%s", line, metrics)
		}
	}
}

// TestResetStartupDuringCheck: a check that began before ResetStartup talked
// to the old postmaster and must not pass the startup probe of the new one.
func TestResetStartupDuringCheck(t *testing.T) {
	p := New(Config{})
	p.mu.Lock()
	gen := p.startGen
	p.mu.Unlock()
	p.ResetStartup()
	p.store(gen, Accepting, serverStatus{}, nil)
	if p.Snapshot().Started {
		t.Fatal("a check from before the reset passed the startup probe")
	}
	p.mu.Lock()
	gen = p.startGen
	p.mu.Unlock()
	p.store(gen, Rejecting, serverStatus{}, nil)
	if !p.Snapshot().Started {
		t.Fatal("an answer after the reset did not pass the startup probe")
	}
}

func TestProberStartTwice(t *testing.T) {
	p := New(Config{Network: "unix", Address: "/nonexistent/.s.PGSQL.5432", Interval: time.Hour})
	startProber(t, p)
	waitUntil(t, 5*time.Second, "first check", func() bool { return !p.Snapshot().CheckedAt.IsZero() })
	if err := p.Start(context.Background()); err == nil {
		t.Fatal("a second Start succeeded")
	}
}

// TestProberPasswordNeverLeaks: a failing authentication is reported, but
// neither the right nor the wrong password appears in any error, body or log.
func TestProberPasswordNeverLeaks(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	c := newCluster(t)
	c.startAndWait(t)
	const wrong = "Wr0ng-Pw-d41d8cd98f00b204"
	var logs lockedBuffer
	p := New(Config{
		Network: "tcp", Address: c.TCPAddr(),
		ConnConfig: c.tcpConnConfig(wrong),
		Interval:   100 * time.Millisecond,
		Logger:     slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	startProber(t, p)
	h := p.Handler()
	waitCode(t, h, LivenessPath, http.StatusOK, 10*time.Second)
	body := assertCode(t, h, ReadinessPath, http.StatusServiceUnavailable)
	if !strings.Contains(body, "28P01") {
		t.Errorf("readiness body does not report the authentication failure: %q", body)
	}
	s := p.Snapshot()
	if s.NotReady == nil {
		t.Fatal("ready with a wrong password")
	}
	for what, text := range map[string]string{"body": body, "error": s.NotReady.Error(), "log": logs.String()} {
		for _, secret := range []string{wrong, testPassword} {
			if strings.Contains(text, secret) {
				t.Errorf("%s contains a password: %q", what, text)
			}
		}
	}
}

// TestProberCheckNowAndSuspend: with an interval too long to matter, CheckNow
// alone refreshes the state; Suspend closes the prober's session before it
// returns (so a smart shutdown that follows is not held up) and makes the
// instance not ready; Resume restores readiness at the next check.
func TestProberCheckNowAndSuspend(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	c := newCluster(t)
	c.startAndWait(t)
	p := New(Config{
		Network:    "unix",
		Address:    c.SocketPath(),
		ConnConfig: c.tcpConnConfig(testPassword),
		Interval:   time.Hour,
		Timeout:    time.Second,
		StaleAfter: time.Hour,
	})
	h := p.Handler()
	startProber(t, p)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	p.CheckNow(ctx)
	assertCode(t, h, ReadinessPath, http.StatusOK)
	if got := probeBackends(t, c); len(got) != 1 {
		t.Fatalf("prober sessions %v, want one", got)
	}
	before := p.Snapshot().CheckedAt
	p.CheckNow(ctx)
	if !p.Snapshot().CheckedAt.After(before) {
		t.Fatal("CheckNow returned before a new check was stored")
	}

	p.Suspend(ctx)
	if got := probeBackends(t, c); len(got) != 0 {
		t.Errorf("prober sessions %v after Suspend, want none", got)
	}
	body := assertCode(t, h, ReadinessPath, http.StatusServiceUnavailable)
	if !strings.Contains(body, "stopping") {
		t.Errorf("readiness body %q does not say postgres is stopping", body)
	}
	assertCode(t, h, LivenessPath, http.StatusOK)

	p.Resume()
	p.CheckNow(ctx)
	assertCode(t, h, ReadinessPath, http.StatusOK)
}

// TestLivenessExemption: while the owner says postgres is stopped on purpose, startup and
// liveness pass without a postmaster; readiness still fails; without the reason they fail.
func TestLivenessExemption(t *testing.T) {
	dir := t.TempDir()
	p := New(Config{Network: "unix", Address: filepath.Join(dir, ".s.PGSQL.5432"), Interval: 50 * time.Millisecond,
		ConnConfig: func(context.Context) (*pgx.ConnConfig, error) { return nil, errors.New("no server") }})
	startProber(t, p)
	h := p.Handler()
	waitChecks(t, p, 1) // the state is fresh: only the missing server fails the probes
	assertCode(t, h, LivenessPath, http.StatusServiceUnavailable)
	assertCode(t, h, StartupPath, http.StatusServiceUnavailable)
	var reason atomic.Value
	reason.Store("fenced on request")
	p.SetLivenessExemption(func() string { return reason.Load().(string) })
	assertCode(t, h, LivenessPath, http.StatusOK)
	assertCode(t, h, StartupPath, http.StatusOK)
	assertCode(t, h, ReadinessPath, http.StatusServiceUnavailable)
	reason.Store("")
	assertCode(t, h, LivenessPath, http.StatusServiceUnavailable)
	assertCode(t, h, StartupPath, http.StatusServiceUnavailable)
}
