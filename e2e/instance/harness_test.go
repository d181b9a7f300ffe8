package instance

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgwarden/pgwarden/e2e/internal/harness"
)

// bin is the pgwarden binary under test, built once by TestMain.
var bin string

func TestMain(m *testing.M) {
	os.Exit(harness.Main(m, &bin, "e2e/instance: these tests must run as root (postgres runs as the postgres user; PID namespaces need CAP_SYS_ADMIN)"))
}

const password = "s3cret-'quote\"-and-\\backslash" // never to be seen in logs

var freePort = harness.FreePort

// instance is one `pgwarden instance run` under test.
type instance struct {
	t            testing.TB
	Root         string // temp dir holding everything below
	PGData       string
	SocketDir    string
	PasswordFile string
	Port         int
	StatusAddr   string
	MetricsAddr  string
	ExtraArgs    []string

	cmd    *exec.Cmd
	pid1   bool
	out    *lineBuffer
	errOut *lineBuffer
	done   chan struct{}
	code   int
}

func newInstance(t testing.TB) *instance {
	t.Helper()
	root, err := os.MkdirTemp("", "pgwarden-it-")
	if err != nil {
		t.Fatal(err)
	}
	// postgres (not root) must be able to traverse to PGDATA.
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	i := &instance{
		t:            t,
		Root:         root,
		PGData:       filepath.Join(root, "data", "pgdata"),
		SocketDir:    filepath.Join(root, "run"),
		PasswordFile: filepath.Join(root, "superuser-password"),
		Port:         freePort(t),
		StatusAddr:   "127.0.0.1:" + strconv.Itoa(freePort(t)),
		MetricsAddr:  "127.0.0.1:" + strconv.Itoa(freePort(t)),
	}
	if err := os.WriteFile(i.PasswordFile, []byte(password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return i
}

func (i *instance) args() []string {
	a := []string{"instance", "run",
		"--pgdata", i.PGData,
		"--port", strconv.Itoa(i.Port),
		"--listen-addresses", "127.0.0.1",
		"--socket-dir", i.SocketDir,
		"--status-addr", i.StatusAddr,
		"--metrics-addr", i.MetricsAddr,
		"--superuser-password-file", i.PasswordFile,
		"--pg-bin-dir", "/usr/lib/postgresql/15/bin",
	}
	return append(a, i.ExtraArgs...)
}

// start runs the binary; with pid1 it is PID 1 of a new PID namespace.
func (i *instance) start(pid1 bool) {
	i.t.Helper()
	var cmd *exec.Cmd
	if pid1 {
		// --kill-child: if the test dies, the namespace dies with it.
		cmd = exec.Command("unshare", append([]string{"--pid", "--fork", "--mount-proc", "--kill-child", bin}, i.args()...)...)
	} else {
		cmd = exec.Command(bin, i.args()...)
	}
	// A clean environment: the manager must not depend on ours.
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	i.out, i.errOut = newLineBuffer(), newLineBuffer()
	cmd.Stdout, cmd.Stderr = i.out, i.errOut
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		i.t.Fatal(err)
	}
	i.cmd, i.pid1, i.done = cmd, pid1, make(chan struct{})
	go func() {
		err := cmd.Wait()
		i.code = cmd.ProcessState.ExitCode()
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			i.code = -1
		}
		close(i.done)
	}()
	i.t.Cleanup(func() {
		select {
		case <-i.done:
			return
		default:
		}
		_ = syscall.Kill(i.managerPID(), syscall.SIGTERM)
		select {
		case <-i.done:
		case <-time.After(60 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-i.done
		}
		if i.t.Failed() {
			i.t.Logf("pgwarden stdout:\n%s\nstderr:\n%s", i.out.String(), i.errOut.String())
		}
	})
}

// managerPID is the host PID of the pgwarden process (the child of unshare when pid1).
func (i *instance) managerPID() int {
	i.t.Helper()
	if !i.pid1 {
		return i.cmd.Process.Pid
	}
	var pid int
	waitFor(i.t, 10*time.Second, "unshare to fork pgwarden", func() bool {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", i.cmd.Process.Pid, i.cmd.Process.Pid))
		if err != nil {
			return false
		}
		f := strings.Fields(string(b))
		if len(f) == 0 {
			return false
		}
		pid, _ = strconv.Atoi(f[0])
		return pid > 0
	})
	return pid
}

func (i *instance) signal(sig syscall.Signal) {
	i.t.Helper()
	if err := syscall.Kill(i.managerPID(), sig); err != nil {
		i.t.Fatalf("cannot signal pgwarden: %v", err)
	}
}

// wait waits for the binary to exit and returns its exit code and how long it took.
func (i *instance) wait(limit time.Duration) int {
	i.t.Helper()
	select {
	case <-i.done:
		return i.code
	case <-time.After(limit):
		i.t.Fatalf("pgwarden did not exit within %s; stdout:\n%s", limit, i.out.String())
		return -1
	}
}

func (i *instance) exited() bool {
	select {
	case <-i.done:
		return true
	default:
		return false
	}
}

// get fetches path from the status server.
func (i *instance) get(path string) (int, []byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+i.StatusAddr+path, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

func (i *instance) waitReady(limit time.Duration) {
	i.t.Helper()
	waitFor(i.t, limit, "/readyz to answer 200", func() bool {
		if i.exited() {
			i.t.Fatalf("pgwarden exited with %d while waiting for readiness; stdout:\n%s\nstderr:\n%s", i.code, i.out.String(), i.errOut.String())
		}
		code, _, err := i.get("/readyz")
		return err == nil && code == http.StatusOK
	})
}

// status returns /status decoded.
func (i *instance) status() map[string]any {
	i.t.Helper()
	code, b, err := i.get("/status")
	if err != nil || code != http.StatusOK {
		i.t.Fatalf("/status: %d %v %s", code, err, b)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		i.t.Fatalf("/status is not JSON: %s", b)
	}
	return m
}

// metric returns the value of an unlabelled metric from /metrics.
func (i *instance) metric(name string) float64 {
	i.t.Helper()
	resp, err := http.Get("http://" + i.MetricsAddr + "/metrics")
	if err != nil {
		i.t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 2 && f[0] == name {
			v, _ := strconv.ParseFloat(f[1], 64)
			return v
		}
	}
	i.t.Fatalf("metric %s not found", name)
	return 0
}

// connect opens a superuser session over TCP.
func (i *instance) connect(ctx context.Context) *pgx.Conn {
	i.t.Helper()
	cfg, err := pgx.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable", i.Port))
	if err != nil {
		i.t.Fatal(err)
	}
	cfg.Password = password
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		i.t.Fatalf("cannot connect: %v", err)
	}
	i.t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

// logRecords returns the JSON records the binary wrote so far; a line that is
// not a JSON object fails the test (every line of stdout must be one).
func (i *instance) logRecords() []map[string]any {
	i.t.Helper()
	var recs []map[string]any
	for _, l := range i.out.Lines() {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			i.t.Fatalf("stdout line is not a JSON object: %q", l)
		}
		recs = append(recs, m)
	}
	return recs
}

// waitLog waits for a record whose msg contains msg and whose fields match kv pairs.
func (i *instance) waitLog(limit time.Duration, msg string, kv ...string) map[string]any {
	i.t.Helper()
	var found map[string]any
	waitFor(i.t, limit, fmt.Sprintf("a log record %q %v", msg, kv), func() bool {
		for _, r := range i.logRecords() {
			if m, _ := r["msg"].(string); !strings.Contains(m, msg) {
				continue
			}
			ok := true
			for j := 0; j+1 < len(kv); j += 2 {
				if fmt.Sprint(r[kv[j]]) != kv[j+1] {
					ok = false
				}
			}
			if ok {
				found = r
				return true
			}
		}
		return false
	})
	return found
}

var waitFor = harness.WaitFor

type lineBuffer = harness.LineBuffer

func newLineBuffer() *lineBuffer { return &lineBuffer{} }

// descendantsOf lists live (non-zombie) and zombie descendants of pid.
func descendantsOf(pid int) (live, zombies []int) {
	entries, _ := os.ReadDir("/proc")
	children := map[int][]int{}
	state := map[int]byte{}
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		k := strings.LastIndexByte(s, ')')
		f := strings.Fields(s[k+1:])
		if len(f) < 2 {
			continue
		}
		pp, _ := strconv.Atoi(f[1])
		children[pp] = append(children[pp], p)
		state[p] = f[0][0]
	}
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range children[p] {
			if state[c] == 'Z' {
				zombies = append(zombies, c)
			} else {
				live = append(live, c)
			}
			queue = append(queue, c)
		}
	}
	return live, zombies
}
