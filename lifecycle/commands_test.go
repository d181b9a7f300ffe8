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

// fakeSmartWaits is a stand-in postmaster whose smart shutdown never ends (a
// client that stays connected): it ignores SIGTERM and exits 0 on SIGINT (fast).
const fakeSmartWaits = `#!/bin/sh
trap '' TERM
trap 'rm -f "$2/answered"; exit 0' INT
trap 'rm -f "$2/answered"; exit 3' QUIT
touch "$2/answered"
while :; do sleep 0.02; done
`

// TestHurry: a shutdown whose smart phase would wait for half of the stop
// delay moves on to fast at once when hurried — whether Hurry comes during the
// smart phase or before the shutdown's first signal — and ends cleanly.
func TestHurry(t *testing.T) {
	if err := reaper.Start(); err != nil {
		t.Fatal(err)
	}
	defer reaper.Stop()
	for _, tc := range []struct {
		name  string
		after time.Duration // from the shutdown request to Hurry
	}{{"during smart", 500 * time.Millisecond}, {"with the request", 0}} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			bin := filepath.Join(dir, "postgres")
			if err := os.WriteFile(bin, []byte(fakeSmartWaits), 0o755); err != nil {
				t.Fatal(err)
			}
			const stopDelay = 40 * time.Second // smart alone would last 20 s
			s := New(Config{
				Postgres: bin, DataDir: dir, Env: []string{"PATH=/usr/bin:/bin"},
				StartDelay: 5 * time.Second, StopDelay: stopDelay,
				Answers: func(context.Context) bool {
					_, err := os.Stat(filepath.Join(dir, "answered"))
					return err == nil
				},
				Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
			})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan int, 1)
			go func() { code, _ := s.Run(ctx); done <- code }()
			for deadline := time.Now().Add(10 * time.Second); s.PID() == 0; time.Sleep(10 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatal("postgres did not start")
				}
			}
			for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
				if _, err := os.Stat(filepath.Join(dir, "answered")); err == nil {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("postgres did not answer")
				}
			}
			cancel()
			time.Sleep(tc.after) // let the smart phase begin (the case under test), not a wait for a result
			began := time.Now()
			s.Hurry()
			select {
			case code := <-done:
				if code != ExitClean {
					t.Errorf("exit code %d, want %d (a clean fast shutdown)", code, ExitClean)
				}
				t.Logf("stopped %s after Hurry", time.Since(began).Round(time.Millisecond))
			case <-time.After(stopDelay / 4):
				t.Fatalf("not stopped %s after Hurry: the smart phase was not cut short", stopDelay/4)
			}
		})
	}
}
