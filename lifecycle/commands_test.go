package lifecycle

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/pgwarden/pgwarden/pkg/reaper"
)

// fakePostgres is a stand-in postmaster: it "answers" once it created the file
// answered, exits 0 on SIGINT/SIGTERM (fast/smart) and 3 on SIGQUIT.
const fakePostgres = `#!/bin/sh
trap 'rm -f "$2/answered"; exit 0' INT TERM
trap 'rm -f "$2/answered"; exit 3' QUIT
touch "$2/answered"
while :; do sleep 0.02; done
`

// TestStopStartFence drives the role commands against a fake postmaster: a
// supervisor that starts held waits for Start; Stop keeps it stopped (no
// restart); Start runs it again; Fence stops it at once and keeps it stopped,
// and the exit code then reports the immediate shutdown.
func TestStopStartFence(t *testing.T) {
	if err := reaper.Start(); err != nil {
		t.Fatal(err)
	}
	defer reaper.Stop()
	dir := t.TempDir()
	bin := filepath.Join(dir, "postgres")
	if err := os.WriteFile(bin, []byte(fakePostgres), 0o755); err != nil {
		t.Fatal(err)
	}
	s := New(Config{
		Postgres: bin, DataDir: dir, Env: []string{"PATH=/usr/bin:/bin"},
		StartDelay: 5 * time.Second, StopDelay: 5 * time.Second, StartHeld: true,
		Answers: func(context.Context) bool {
			_, err := os.Stat(filepath.Join(dir, "answered"))
			return err == nil
		},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type result struct{ code int }
	done := make(chan result, 1)
	go func() { code, _ := s.Run(ctx); done <- result{code} }()

	stays := func(what string, d time.Duration, want bool) {
		t.Helper()
		for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
			if (s.PID() != 0) != want {
				t.Fatalf("%s: running = %v", what, !want)
			}
		}
	}
	stays("held before Start", 300*time.Millisecond, false)

	sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
	defer scancel()
	if err := s.Start(sctx); err != nil {
		t.Fatalf("Start: %v", err)
	}
	stays("after Start", 200*time.Millisecond, true)

	step, err := s.Stop(sctx, StepFast, 5*time.Second)
	if err != nil || step != StepFast {
		t.Fatalf("Stop = %v, %v; want fast", step, err)
	}
	stays("held after Stop", 1500*time.Millisecond, false) // longer than the 1 s restart backoff

	if err := s.Start(sctx); err != nil {
		t.Fatalf("second Start: %v", err)
	}
	began := time.Now()
	s.Fence()
	for s.PID() != 0 {
		if time.Since(began) > 2*time.Second {
			t.Fatal("Fence did not stop postgres within 2 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("fenced postgres stopped after %s", time.Since(began).Round(time.Millisecond))
	stays("held after Fence", 1500*time.Millisecond, false)

	cancel()
	select {
	case r := <-done:
		if r.code != ExitImmediate {
			t.Errorf("exit code %d after a fence, want %d", r.code, ExitImmediate)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
	}
}
