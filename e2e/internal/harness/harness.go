// Package harness holds what the integration tests of the real pgwarden binary
// share: building the binary once per test package, free loopback ports,
// bounded waits on a condition, and a concurrency-safe output sink.
package harness

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Main is a TestMain body for packages that run the real binary as root: it
// builds cmd/pgwarden into a temporary directory, stores its path in *bin,
// runs the tests and returns the exit code. why says, for a non-root run, why
// root is needed.
func Main(m *testing.M, bin *string, why string) int {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, why)
		return 1
	}
	dir, err := os.MkdirTemp("", "pgwarden-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	*bin = filepath.Join(dir, "pgwarden")
	build := exec.Command("go", "build", "-o", *bin, "github.com/pgwarden/pgwarden/cmd/pgwarden")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "cannot build pgwarden:", err)
		return 1
	}
	return m.Run()
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// WaitFor polls cond every 20 ms until it holds, and fails the test when
// limit passes first.
func WaitFor(t testing.TB, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", limit, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// LineBuffer is a concurrency-safe sink that keeps everything written.
type LineBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *LineBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *LineBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Lines returns the complete lines written so far.
func (l *LineBuffer) Lines() []string {
	s := l.String()
	k := strings.LastIndexByte(s, '\n')
	if k <= 0 {
		return nil
	}
	return strings.Split(s[:k], "\n")
}
