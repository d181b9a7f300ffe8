package probes

// Throw-away PostgreSQL servers for the tests and benchmarks of this package.
//
// Every cluster lives in its own temporary directory owned by the postgres OS
// user (postgres refuses to run as root), is a copy of one initdb'd template
// (initdb once per test binary), listens on 127.0.0.1 and on a Unix socket in
// that directory, and runs in its own process group so that a crash can be
// simulated by SIGKILLing the group and so that cleanup stops every process.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// testPassword is the superuser password of every test cluster. It is long and
// unusual so that finding it in an error or a log cannot be a coincidence.
const testPassword = "Pw-5ecret-7f3a9c1e-nOt-In-LoGs"

func TestMain(m *testing.M) {
	code := m.Run()
	if templateDir != "" {
		_ = os.RemoveAll(templateDir)
	}
	os.Exit(code)
}

// pgBinDir returns the directory of the PostgreSQL binaries: $PG_BIN_DIR, else
// the newest /usr/lib/postgresql/*/bin. It skips the test if there is none.
func pgBinDir(t testing.TB) string {
	t.Helper()
	if d := os.Getenv("PG_BIN_DIR"); d != "" {
		return d
	}
	found, _ := filepath.Glob("/usr/lib/postgresql/*/bin/postgres")
	if len(found) == 0 {
		t.Skip("no PostgreSQL binaries: set PG_BIN_DIR")
	}
	version := func(p string) int {
		v, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(p))))
		return v
	}
	sort.Slice(found, func(i, j int) bool { return version(found[i]) > version(found[j]) })
	return filepath.Dir(found[0])
}

// postgresCred returns the credential to run PostgreSQL programs with: the
// postgres user when the tests run as root, else nil (run as ourselves).
func postgresCred(t testing.TB) *syscall.Credential {
	t.Helper()
	if os.Geteuid() != 0 {
		return nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		t.Skipf("running as root and no postgres user: %v", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
}

// pgCommand prepares a PostgreSQL program to run as the postgres user in its own
// process group.
func pgCommand(t testing.TB, name string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(filepath.Join(pgBinDir(t), name), args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: postgresCred(t)}
	cmd.Env = append(pgFreeEnv(), "LC_ALL=C")
	return cmd
}

// pgFreeEnv is our environment without PG* variables, which would change what
// the programs connect to.
func pgFreeEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") {
			env = append(env, kv)
		}
	}
	return env
}

// runPG runs a PostgreSQL program to completion as the postgres user, bounded
// by a minute, and fails the test with its output if it fails.
func runPG(t testing.TB, name string, args ...string) {
	t.Helper()
	cmd := pgCommand(t, name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("cannot start %s: %v", name, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out.String())
		}
	case <-time.After(time.Minute):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		t.Fatalf("%s %v: still running after a minute\n%s", name, args, out.String())
	}
}

// makePGDir creates a temporary directory owned by the postgres user.
// t.TempDir is not usable: its parent is private to root.
func makePGDir(t testing.TB, pattern string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", pattern)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	chownPG(t, dir)
	return dir
}

func chownPG(t testing.TB, path string) {
	t.Helper()
	if c := postgresCred(t); c != nil {
		if err := os.Chown(path, int(c.Uid), int(c.Gid)); err != nil {
			t.Fatal(err)
		}
	}
}

var (
	templateOnce sync.Once
	templateDir  string // removed by TestMain
	templateErr  error
)

// templateCluster runs initdb once per test binary: superuser postgres with
// testPassword, trust on the Unix socket, SCRAM over TCP.
func templateCluster(t testing.TB) string {
	t.Helper()
	bin := pgBinDir(t)
	cred := postgresCred(t)
	templateOnce.Do(func() {
		root, err := os.MkdirTemp("", "pgwarden-probes-template-")
		if err != nil {
			templateErr = err
			return
		}
		templateDir = root
		pwfile := filepath.Join(root, "pw")
		if err := os.WriteFile(pwfile, []byte(testPassword+"\n"), 0o600); err != nil {
			templateErr = err
			return
		}
		if cred != nil {
			for _, p := range []string{root, pwfile} {
				if err := os.Chown(p, int(cred.Uid), int(cred.Gid)); err != nil {
					templateErr = err
					return
				}
			}
		}
		data := filepath.Join(root, "data")
		cmd := exec.Command(filepath.Join(bin, "initdb"), "-D", data, "-U", "postgres",
			"--pwfile", pwfile, "--auth-local=trust", "--auth-host=scram-sha-256",
			"-E", "UTF8", "--no-sync", "--no-instructions")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		cmd.Env = append(pgFreeEnv(), "LC_ALL=C")
		if out, err := cmd.CombinedOutput(); err != nil {
			templateErr = fmt.Errorf("initdb: %v\n%s", err, out)
			return
		}
		_ = os.Remove(pwfile)
		conf := strings.Join([]string{
			"listen_addresses = '127.0.0.1'",
			// Throw-away clusters: durability against OS crashes is not tested
			// here (a SIGKILL of the server keeps the page cache).
			"fsync = off",
			// Push checkpoints far away so that a crash leaves a long recovery.
			"max_wal_size = '8GB'",
			"checkpoint_timeout = '1d'",
			"max_connections = 30",
			"shared_buffers = '32MB'",
			"",
		}, "\n")
		f, err := os.OpenFile(filepath.Join(data, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
		if err == nil {
			_, err = f.WriteString(conf)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
		templateErr = err
	})
	if templateErr != nil {
		t.Fatalf("cannot make the template cluster: %v", templateErr)
	}
	return filepath.Join(templateDir, "data")
}

// pgCluster is one throw-away PostgreSQL server.
type pgCluster struct {
	root    string
	DataDir string
	SockDir string
	Port    int
	logPath string
	extra   []string // extra postgres arguments, for every start

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when the current postmaster has exited
}

// newCluster returns a stopped cluster copied from the template.
func newCluster(t testing.TB) *pgCluster {
	t.Helper()
	c := newEmptyCluster(t)
	tmpl := templateCluster(t)
	if out, err := exec.Command("cp", "-a", tmpl, c.DataDir).CombinedOutput(); err != nil {
		t.Fatalf("cannot copy the template cluster: %v\n%s", err, out)
	}
	return c
}

// newEmptyCluster returns a cluster whose data directory does not exist yet
// (for pg_basebackup).
func newEmptyCluster(t testing.TB) *pgCluster {
	t.Helper()
	root := makePGDir(t, "pgwarden-probes-")
	c := &pgCluster{
		root:    root,
		DataDir: filepath.Join(root, "data"),
		SockDir: filepath.Join(root, "sock"),
		Port:    freePort(t),
		logPath: filepath.Join(root, "postgres.log"),
	}
	if err := os.Mkdir(c.SockDir, 0o755); err != nil {
		t.Fatal(err)
	}
	chownPG(t, c.SockDir)
	t.Cleanup(c.stop)
	return c
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func (c *pgCluster) SocketPath() string { return SocketPath(c.SockDir, c.Port) }
func (c *pgCluster) TCPAddr() string    { return net.JoinHostPort("127.0.0.1", strconv.Itoa(c.Port)) }

// start starts the postmaster and returns at once (see waitStatus).
func (c *pgCluster) start(t testing.TB) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cmd != nil {
		t.Fatal("postmaster already started")
	}
	log, err := os.OpenFile(c.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	args := append([]string{"-D", c.DataDir, "-p", strconv.Itoa(c.Port),
		"-c", "unix_socket_directories=" + c.SockDir,
		"-c", "listen_addresses=127.0.0.1"}, c.extra...)
	cmd := pgCommand(t, "postgres", args...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatalf("cannot start postgres: %v", err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	c.cmd, c.done = cmd, done
}

// PID returns the postmaster's PID (0 if not started).
func (c *pgCluster) PID() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cmd == nil {
		return 0
	}
	return c.cmd.Process.Pid
}

// exited returns a channel closed when the current postmaster exits.
func (c *pgCluster) exited() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done == nil {
		ch := make(chan struct{})
		close(ch)
		return ch
	}
	return c.done
}

// startAndWait starts the postmaster and waits until it accepts connections.
func (c *pgCluster) startAndWait(t testing.TB) {
	t.Helper()
	c.start(t)
	c.waitStatus(t, 30*time.Second, "ready")
}

// pmStatus returns the status line of postmaster.pid ("starting", "stopping",
// "ready"; PostgreSQL 15 also says "ready" for a hot standby that accepts
// read-only connections), or "" if there is none.
func (c *pgCluster) pmStatus() string {
	b, err := os.ReadFile(filepath.Join(c.DataDir, "postmaster.pid"))
	if err != nil {
		return ""
	}
	lines := strings.Split(string(b), "\n")
	if len(lines) < 8 {
		return ""
	}
	return strings.TrimSpace(lines[7])
}

// waitStatus waits until postmaster.pid reports status, failing the test if
// the postmaster exits or the timeout passes first.
func (c *pgCluster) waitStatus(t testing.TB, timeout time.Duration, status string) {
	t.Helper()
	c.waitFor(t, timeout, "postmaster status "+status, func() bool { return c.pmStatus() == status })
}

// waitFor polls cond every few milliseconds until it holds; it fails the test
// when timeout passes or the postmaster exits first.
func (c *pgCluster) waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	exited := c.exited()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-exited:
			if cond() {
				return
			}
			t.Fatalf("postmaster exited while waiting for %s; log:\n%s", what, c.logTail())
		case <-deadline.C:
			t.Fatalf("no %s after %s; log:\n%s", what, timeout, c.logTail())
		case <-tick.C:
		}
	}
}

// waitExit waits for the postmaster to exit.
func (c *pgCluster) waitExit(t testing.TB, timeout time.Duration) {
	t.Helper()
	select {
	case <-c.exited():
		c.mu.Lock()
		c.cmd, c.done = nil, nil
		c.mu.Unlock()
	case <-time.After(timeout):
		t.Fatalf("postmaster still running after %s; log:\n%s", timeout, c.logTail())
	}
}

// signal sends sig to the postmaster only.
func (c *pgCluster) signal(t testing.TB, sig syscall.Signal) {
	t.Helper()
	if pid := c.PID(); pid != 0 {
		if err := syscall.Kill(pid, sig); err != nil {
			t.Fatalf("cannot signal postmaster: %v", err)
		}
	}
}

// crash SIGKILLs the postmaster and all its children, as if the container
// died, and waits until they are all gone. Killing the postmaster's process
// group is not enough: every child of the postmaster calls setsid().
func (c *pgCluster) crash(t testing.TB) {
	t.Helper()
	pm := c.PID()
	if pm == 0 {
		return
	}
	_ = syscall.Kill(pm, syscall.SIGSTOP) // no new children while we list them
	pids := append(descendants(pm), pm)
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	c.waitExit(t, 10*time.Second)
	waitGone(t, pids, 10*time.Second)
}

// descendants returns the PIDs of pid's descendants.
func descendants(pid int) []int {
	var out []int
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	for _, f := range strings.Fields(string(b)) {
		if child, err := strconv.Atoi(f); err == nil {
			out = append(out, child)
			out = append(out, descendants(child)...)
		}
	}
	return out
}

// waitGone waits until every process in pids has exited (a zombie waiting for
// its new parent to reap it has exited: it holds no memory any more), so that a
// restart does not find the old shared memory still attached.
func waitGone(t testing.TB, pids []int, timeout time.Duration) {
	t.Helper()
	gone := func() bool {
		for _, pid := range pids {
			if st := procState(pid); st != 0 && st != 'Z' {
				return false
			}
		}
		return true
	}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for !gone() {
		select {
		case <-deadline.C:
			t.Fatalf("processes %v still alive after %s", pids, timeout)
		case <-tick.C:
		}
	}
}

// stop stops the postmaster and all its children, whatever their state (even
// stopped by SIGSTOP): immediate shutdown, then SIGKILL. It is registered with
// t.Cleanup and does not fail the test.
func (c *pgCluster) stop() {
	pm := c.PID()
	if pm == 0 {
		return
	}
	pids := append(descendants(pm), pm)
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGCONT)
	}
	_ = syscall.Kill(pm, syscall.SIGQUIT)
	select {
	case <-c.exited():
	case <-time.After(10 * time.Second):
		pids = append(pids, descendants(pm)...)
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		<-c.exited()
	}
	c.mu.Lock()
	c.cmd, c.done = nil, nil
	c.mu.Unlock()
}

// logTail returns the end of the server log, for failure messages.
func (c *pgCluster) logTail() string {
	b, _ := os.ReadFile(c.logPath)
	if len(b) > 16000 {
		b = b[len(b)-16000:]
	}
	return string(b)
}

// logText returns the whole server log.
func (c *pgCluster) logText() string {
	b, _ := os.ReadFile(c.logPath)
	return string(b)
}

func (c *pgCluster) logContains(s string) bool { return strings.Contains(c.logText(), s) }

// connect opens a superuser session over the Unix socket (trust).
func (c *pgCluster) connect(ctx context.Context) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres sslmode=disable", c.SockDir, c.Port))
	if err != nil {
		return nil, err
	}
	return pgx.ConnectConfig(ctx, cfg)
}

// exec runs SQL over the Unix socket.
func (c *pgCluster) exec(t testing.TB, sql string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := c.connect(ctx)
	if err != nil {
		t.Fatalf("cannot connect: %v", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// tcpConnConfig returns the superuser configuration over TCP (SCRAM), with the
// given password.
func (c *pgCluster) tcpConnConfig(password string) func(context.Context) (*pgx.ConnConfig, error) {
	return func(context.Context) (*pgx.ConnConfig, error) {
		cfg, err := pgx.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable", c.Port))
		if err != nil {
			return nil, err
		}
		cfg.Password = password
		return cfg, nil
	}
}

// pgIsReady runs the real pg_isready against host (a socket directory or an IP
// address) and port and returns its exit code.
func pgIsReady(t testing.TB, host string, port int) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(pgBinDir(t), "pg_isready"),
		"-h", host, "-p", strconv.Itoa(port), "-U", "postgres", "-d", "postgres", "-t", "5")
	cmd.Env = pgFreeEnv()
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &exit) && exit.ExitCode() >= 0:
		return exit.ExitCode()
	default:
		t.Fatalf("cannot run pg_isready: %v", err)
		return -1
	}
}

// childWith returns the PID of a child of ppid whose command line contains
// title, or 0.
func childWith(ppid int, title string) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", ppid, ppid))
	if err != nil {
		return 0
	}
	for _, f := range strings.Fields(string(b)) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err == nil && strings.Contains(string(cmdline), title) {
			return pid
		}
	}
	return 0
}

// procState returns the state letter of pid from /proc ('T' when stopped).
func procState(pid int) byte {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name in parentheses may contain spaces: state follows ") ".
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return 0
	}
	return b[i+2]
}
