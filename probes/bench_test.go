package probes

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"
)

type endpoint struct{ name, network, address, host string }

// endpoints of c: the Unix socket (trust: the server starts a backend) and TCP
// (SCRAM: the server asks for a password and the ping leaves).
func endpoints(c *pgCluster) []endpoint {
	return []endpoint{
		{"unix", "unix", c.SocketPath(), c.SockDir},
		{"tcp", "tcp", c.TCPAddr(), "127.0.0.1"},
	}
}

// BenchmarkPing: the native ping against a running server.
func BenchmarkPing(b *testing.B) {
	c := newCluster(b)
	c.startAndWait(b)
	for _, ep := range endpoints(c) {
		b.Run(ep.name, func(b *testing.B) {
			for b.Loop() {
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
				v := Ping(ctx, ep.network, ep.address)
				cancel()
				if v != Accepting {
					b.Fatalf("Ping = %v", v)
				}
			}
		})
	}
}

// BenchmarkPgIsReadyFork: the same question asked by forking the real
// pg_isready, as a shell probe would.
func BenchmarkPgIsReadyFork(b *testing.B) {
	c := newCluster(b)
	c.startAndWait(b)
	bin := filepath.Join(pgBinDir(b), "pg_isready")
	env := pgFreeEnv()
	for _, ep := range endpoints(c) {
		b.Run(ep.name, func(b *testing.B) {
			for b.Loop() {
				cmd := exec.Command(bin, "-q", "-h", ep.host, "-p", strconv.Itoa(c.Port), "-U", "postgres", "-d", "postgres", "-t", "3")
				cmd.Env = env
				if err := cmd.Run(); err != nil {
					b.Fatalf("pg_isready: %v", err)
				}
			}
		})
	}
}

// BenchmarkHealthz: GET /healthz over loopback HTTP (keep-alive) while the
// prober checks a real server in the background; reports p50 and p99 over at
// least 1000 calls.
func BenchmarkHealthz(b *testing.B) {
	c := newCluster(b)
	c.startAndWait(b)
	p := New(Config{Network: "unix", Address: c.SocketPath(), ConnConfig: c.tcpConnConfig(testPassword), Interval: 100 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Start(ctx) }()
	b.Cleanup(func() {
		cancel()
		<-done
	})
	srv := httptest.NewServer(p.Handler())
	b.Cleanup(srv.Close)
	client := srv.Client()
	url := srv.URL + LivenessPath

	deadline := time.Now().Add(10 * time.Second)
	for p.Snapshot().Verdict != Accepting {
		if time.Now().After(deadline) {
			b.Fatal("prober never saw the server accepting")
		}
		time.Sleep(10 * time.Millisecond)
	}

	n := max(b.N, 1000)
	lat := make([]time.Duration, 0, n)
	b.ResetTimer()
	for range n {
		t0 := time.Now()
		resp, err := client.Get(url)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		lat = append(lat, time.Since(t0))
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("/healthz = %d", resp.StatusCode)
		}
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "p99-ns")
	b.ReportMetric(float64(len(lat)), "calls")
}

// BenchmarkStatusQuery: one status query (readiness, /status and the instance metrics: role,
// timeline, LSNs, replay lag, connections) on the prober's kept connection to a primary: the
// whole per-check cost on the server, whatever the scrape rate.
func BenchmarkStatusQuery(b *testing.B) {
	c := newCluster(b)
	c.startAndWait(b)
	p := New(Config{Network: "unix", Address: c.SocketPath(), ConnConfig: c.tcpConnConfig(testPassword)})
	defer p.closeConn(context.Background())
	for b.Loop() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		_, err := p.queryStatus(ctx)
		cancel()
		if err != nil {
			b.Fatal(err)
		}
	}
}
