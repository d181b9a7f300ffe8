package postgres

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgwarden/pgwarden/pkg/reaper"
)

// testRoot holds what tests share (the template data directory); it is
// traversable by the postgres user.
var testRoot string

func TestMain(m *testing.M) {
	// Like the manager: the reaper owns all waiting, so a stray exec.Cmd.Wait
	// in this package would fail here as it would in production.
	if err := reaper.Start(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	dir, err := os.MkdirTemp("", "pgwarden-postgres-test-")
	if err == nil {
		err = os.Chmod(dir, 0o755)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	testRoot = dir
	code := m.Run()
	os.RemoveAll(dir)
	reaper.Stop()
	os.Exit(code)
}

// Timeouts of the tests: generous for a loaded 2-core machine.
const (
	initdbTimeout = 3 * time.Minute
	startTimeout  = time.Minute
	stopTimeout   = time.Minute
)

// realBin returns the PostgreSQL found as the manager would find it.
func realBin(t *testing.T) Bin {
	t.Helper()
	if testing.Short() {
		t.Skip("needs PostgreSQL binaries")
	}
	b, err := FindBin("")
	if err != nil {
		t.Fatalf("FindBin: %v", err)
	}
	return b
}

// runAs returns the user postgres runs as in tests (nil when not root).
func runAs(t *testing.T) *User {
	t.Helper()
	u, err := RunAsUser("postgres")
	if err != nil {
		t.Fatalf("RunAsUser: %v", err)
	}
	return u
}

// pgTempDir returns a fresh directory that the postgres user can traverse and
// that is removed after the test.
func pgTempDir(t *testing.T) string {
	t.Helper()
	d := t.TempDir()
	for _, p := range []string{filepath.Dir(d), d} {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

// socketDir returns a short directory for unix sockets (their paths are
// limited to 107 bytes), owned by u.
func socketDir(t *testing.T, u *User) string {
	t.Helper()
	d, err := os.MkdirTemp("", "pgws")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	if err := u.Chown(d); err != nil {
		t.Fatal(err)
	}
	return d
}

func writeFile(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
}

const templatePassword = "template 'secret' \\ pass"

var (
	templateOnce sync.Once
	templateDir  string
	templateErr  error
)

// templateDataDir returns a data directory made once by InitDB, shared
// read-only: tests copy it with copyDataDir.
func templateDataDir(t *testing.T) string {
	t.Helper()
	bin := realBin(t)
	u := runAs(t)
	templateOnce.Do(func() {
		pw := filepath.Join(testRoot, "template-password")
		if err := os.WriteFile(pw, []byte(templatePassword+"\n"), 0o600); err != nil {
			templateErr = err
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), initdbTimeout)
		defer cancel()
		dir := filepath.Join(testRoot, "template", "pgdata")
		templateErr = InitDB(ctx, bin, InitOptions{DataDir: dir, PasswordFile: pw, RunAs: u})
		templateDir = dir
	})
	if templateErr != nil {
		t.Fatalf("cannot make the template data directory: %v", templateErr)
	}
	return templateDir
}

// copyDataDir copies the template data directory to dst, owned by u.
func copyDataDir(t *testing.T, dst string, u *User) {
	t.Helper()
	src := templateDataDir(t)
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
		switch {
		case d.IsDir():
			if err := os.Mkdir(target, info.Mode().Perm()); err != nil {
				return err
			}
		case d.Type()&fs.ModeSymlink != 0:
			link, err := os.Readlink(path)
			if err != nil {
				return err
			}
			if err := os.Symlink(link, target); err != nil {
				return err
			}
		default:
			if err := copyFile(path, target, info.Mode().Perm()); err != nil {
				return err
			}
		}
		if err := os.Chmod(target, info.Mode().Perm()); err != nil && d.Type()&fs.ModeSymlink == 0 {
			return err
		}
		return u.Chown(target)
	})
	if err != nil {
		t.Fatalf("cannot copy the template data directory: %v", err)
	}
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// syncBuffer collects a server's output from its writer goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// server is a postgres started by a test (the tests play the supervisor).
type server struct {
	cmd    *exec.Cmd
	done   chan struct{}
	status reaper.Status
	log    *syncBuffer
}

// startPostgres starts postgres -D dataDir -k sockDir as u and stops it (fast
// shutdown, then SIGKILL) when the test ends.
func startPostgres(t *testing.T, bin Bin, dataDir, sockDir string, u *User) *server {
	t.Helper()
	s := &server{done: make(chan struct{}), log: &syncBuffer{}}
	s.cmd = exec.Command(bin.Path("postgres"), "-D", dataDir, "-k", sockDir)
	s.cmd.Env = minimalEnv(bin, u)
	s.cmd.Dir = "/"
	s.cmd.Stdout = s.log
	s.cmd.Stderr = s.log
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	u.SetCredential(s.cmd)
	if err := reaper.StartCommand(s.cmd); err != nil {
		t.Fatalf("cannot start postgres: %v", err)
	}
	go func() {
		s.status, _ = reaper.WaitCommand(s.cmd)
		close(s.done)
	}()
	t.Cleanup(func() { s.stop(t) })
	return s
}

func (s *server) stop(t *testing.T) {
	select {
	case <-s.done:
		return
	default:
	}
	s.cmd.Process.Signal(syscall.SIGINT) // fast shutdown
	timer := time.NewTimer(stopTimeout)
	defer timer.Stop()
	select {
	case <-s.done:
		return
	case <-timer.C:
	}
	t.Errorf("postgres did not stop within %v; killing it. Log:\n%s", stopTimeout, s.log.String())
	syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	<-s.done
}

// connect waits until the server accepts a connection with cfg, and returns it.
func (s *server) connect(t *testing.T, cfg *pgx.ConnConfig) *pgx.Conn {
	t.Helper()
	deadline := time.NewTimer(startTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var lastErr error
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		conn, err := pgx.ConnectConfig(ctx, cfg)
		cancel()
		if err == nil {
			t.Cleanup(func() { conn.Close(context.Background()) })
			return conn
		}
		lastErr = err
		if !startingUp(err) {
			t.Fatalf("cannot connect: %v\npostgres log:\n%s", err, s.log.String())
		}
		select {
		case <-s.done:
			t.Fatalf("postgres exited (%v) before accepting connections: %v\nlog:\n%s", s.status, lastErr, s.log.String())
		case <-deadline.C:
			t.Fatalf("postgres accepted no connection within %v: %v\nlog:\n%s", startTimeout, lastErr, s.log.String())
		case <-tick.C:
		}
	}
}

// startingUp reports whether a connection error means "not up yet": no
// socket yet, or "the database system is starting up" (57P03).
func startingUp(err error) bool {
	var pgErr interface{ SQLState() string }
	if errors.As(err, &pgErr) {
		return pgErr.SQLState() == "57P03"
	}
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT)
}

// pgxConnect makes one connection attempt with a deadline.
func pgxConnect(cfg *pgx.ConnConfig) (*pgx.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return pgx.ConnectConfig(ctx, cfg)
}
