// Command instance measures the instance manager on this machine and prints a
// Markdown table: the manager's resident memory at idle beside a running
// postmaster, probe latency (p50/p99 over many calls) against forking
// pg_isready, and time to readiness against `pg_ctl start -w` on the same data
// directory. Each figure is the median of -runs runs, all measured in one
// invocation so the ratios compare like with like on a noisy machine.
//
// Run it with `make bench-instance` (root: postgres runs as the postgres user).
package main

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	bin := flag.String("bin", "bin/pgwarden", "the pgwarden binary to measure")
	binDir := flag.String("pg-bin-dir", "/usr/lib/postgresql/15/bin", "PostgreSQL binaries")
	runs := flag.Int("runs", 3, "runs per figure (the median is reported)")
	calls := flag.Int("calls", 1000, "probe calls per run")
	idle := flag.Duration("idle", 5*time.Second, "how long the manager idles before its memory is read")
	out := flag.String("o", "", "also write the table to this file")
	flag.Parse()
	if err := run(*bin, *binDir, *runs, *calls, *idle, *out); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

type figures struct {
	rssMiB, pmRSSMiB                    []float64
	healthP50, healthP99                []float64 // ms
	readyP50, readyP99                  []float64
	forkP50, forkP99                    []float64
	managerReady, pgctlReady, initReady []float64 // seconds
}

func run(bin, binDir string, runs, calls int, idle time.Duration, out string) error {
	bin, err := filepath.Abs(bin)
	if err != nil {
		return err
	}
	var f figures
	for r := 0; r < runs; r++ {
		fmt.Fprintf(os.Stderr, "run %d/%d\n", r+1, runs)
		if err := oneRun(bin, binDir, calls, idle, &f); err != nil {
			return err
		}
	}
	table := render(f, runs, calls, idle)
	fmt.Print(table)
	if out != "" {
		return os.WriteFile(out, []byte(table), 0o644)
	}
	return nil
}

func oneRun(bin, binDir string, calls int, idle time.Duration, f *figures) error {
	root, err := os.MkdirTemp("", "pgwarden-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(root)
	if err := os.Chmod(root, 0o755); err != nil {
		return err
	}
	pw := filepath.Join(root, "pw")
	if err := os.WriteFile(pw, []byte("bench-password\n"), 0o600); err != nil {
		return err
	}
	m := &manager{bin: bin, binDir: binDir, root: root, pgdata: filepath.Join(root, "data", "pgdata"),
		sock: filepath.Join(root, "run"), pw: pw, port: freePort(), status: "127.0.0.1:" + strconv.Itoa(freePort()),
		metrics: "127.0.0.1:" + strconv.Itoa(freePort())}

	// First start: initdb included.
	took, err := m.start()
	if err != nil {
		return err
	}
	f.initReady = append(f.initReady, took.Seconds())
	if err := m.stop(); err != nil {
		return err
	}
	// Second start on the existing data directory: the overhead that matters.
	if took, err = m.start(); err != nil {
		return err
	}
	f.managerReady = append(f.managerReady, took.Seconds())

	time.Sleep(idle) // let the manager settle to its idle footprint
	rss, err := rssMiB(m.pid())
	if err != nil {
		return err
	}
	f.rssMiB = append(f.rssMiB, rss)
	if pm, err := postmasterPID(m.pid()); err == nil {
		if v, err := rssMiB(pm); err == nil {
			f.pmRSSMiB = append(f.pmRSSMiB, v)
		}
	}

	p50, p99, err := latency(calls, func() error { return httpOK("http://" + m.status + "/healthz") })
	if err != nil {
		return fmt.Errorf("/healthz: %w", err)
	}
	f.healthP50, f.healthP99 = append(f.healthP50, p50), append(f.healthP99, p99)
	p50, p99, err = latency(calls, func() error { return httpOK("http://" + m.status + "/readyz") })
	if err != nil {
		return fmt.Errorf("/readyz: %w", err)
	}
	f.readyP50, f.readyP99 = append(f.readyP50, p50), append(f.readyP99, p99)
	isready := filepath.Join(binDir, "pg_isready")
	p50, p99, err = latency(calls, func() error {
		return exec.Command(isready, "-q", "-h", m.sock, "-p", strconv.Itoa(m.port)).Run()
	})
	if err != nil {
		return fmt.Errorf("pg_isready: %w", err)
	}
	f.forkP50, f.forkP99 = append(f.forkP50, p50), append(f.forkP99, p99)
	if err := m.stop(); err != nil {
		return err
	}

	// pg_ctl start -w on the same data directory, same settings (the manager's config files are in PGDATA).
	pgctl := exec.Command("runuser", "-u", "postgres", "--", filepath.Join(binDir, "pg_ctl"), "start", "-w", "-s",
		"-D", m.pgdata, "-l", filepath.Join(m.sock, "pgctl.log"))
	t0 := time.Now()
	if b, err := pgctl.CombinedOutput(); err != nil {
		return fmt.Errorf("pg_ctl start: %v: %s", err, b)
	}
	f.pgctlReady = append(f.pgctlReady, time.Since(t0).Seconds())
	stop := exec.Command("runuser", "-u", "postgres", "--", filepath.Join(binDir, "pg_ctl"), "stop", "-w", "-s", "-m", "fast", "-D", m.pgdata)
	if b, err := stop.CombinedOutput(); err != nil {
		return fmt.Errorf("pg_ctl stop: %v: %s", err, b)
	}
	return nil
}

type manager struct {
	bin, binDir, root, pgdata, sock, pw string
	port                                int
	status, metrics                     string
	cmd                                 *exec.Cmd
}

func (m *manager) start() (time.Duration, error) {
	m.cmd = exec.Command(m.bin, "instance", "run", "--pgdata", m.pgdata, "--pg-bin-dir", m.binDir,
		"--port", strconv.Itoa(m.port), "--listen-addresses", "127.0.0.1", "--socket-dir", m.sock,
		"--status-addr", m.status, "--metrics-addr", m.metrics, "--superuser-password-file", m.pw)
	m.cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	logf, err := os.Create(filepath.Join(m.root, "manager.log"))
	if err != nil {
		return 0, err
	}
	m.cmd.Stdout, m.cmd.Stderr = logf, logf
	t0 := time.Now()
	if err := m.cmd.Start(); err != nil {
		return 0, err
	}
	deadline := t0.Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if httpOK("http://"+m.status+"/readyz") == nil {
			return time.Since(t0), nil
		}
		time.Sleep(5 * time.Millisecond)
	}
	_ = m.cmd.Process.Kill()
	return 0, errors.New("pgwarden not ready within 60s; see " + logf.Name())
}

func (m *manager) pid() int { return m.cmd.Process.Pid }

func (m *manager) stop() error {
	if err := m.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- m.cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(60 * time.Second):
		_ = m.cmd.Process.Kill()
		return errors.New("pgwarden did not stop within 60s")
	}
}

var client = &http.Client{Timeout: 5 * time.Second}

func httpOK(url string) error {
	resp, err := client.Get(url)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	return nil
}

// latency calls f n times and returns the p50 and p99 in milliseconds.
func latency(n int, f func() error) (p50, p99 float64, err error) {
	d := make([]float64, 0, n)
	for range n {
		t0 := time.Now()
		if err := f(); err != nil {
			return 0, 0, err
		}
		d = append(d, float64(time.Since(t0).Microseconds())/1000)
	}
	slices.Sort(d)
	return d[n/2], d[(n*99)/100], nil
}

func rssMiB(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, err := strconv.ParseFloat(f[1], 64)
			return kb / 1024, err
		}
	}
	return 0, errors.New("no VmRSS")
}

func postmasterPID(mgr int) (int, error) {
	files, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", mgr))
	for _, f := range files {
		b, _ := os.ReadFile(f)
		for _, p := range strings.Fields(string(b)) {
			return strconv.Atoi(p)
		}
	}
	return 0, errors.New("no postmaster")
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

func render(f figures, runs, calls int, idle time.Duration) string {
	var b strings.Builder
	fmt.Fprintf(&b, "| figure (median of %d runs) | pgwarden | reference | ratio |\n|---|---|---|---|\n", runs)
	fmt.Fprintf(&b, "| manager RSS at idle (after %s) | %.1f MiB | postmaster %.1f MiB | goal ≤ 20 MiB |\n", idle, median(f.rssMiB), median(f.pmRSSMiB))
	row := func(name string, ours, ref float64, unit, refName string) {
		fmt.Fprintf(&b, "| %s | %.2f %s | %s %.2f %s | %.2f× |\n", name, ours, unit, refName, ref, unit, ours/ref)
	}
	row(fmt.Sprintf("liveness probe p50 (/healthz, %d calls)", calls), median(f.healthP50), median(f.forkP50), "ms", "fork pg_isready")
	row(fmt.Sprintf("liveness probe p99 (/healthz, %d calls)", calls), median(f.healthP99), median(f.forkP99), "ms", "fork pg_isready")
	row(fmt.Sprintf("readiness probe p50 (/readyz, %d calls)", calls), median(f.readyP50), median(f.forkP50), "ms", "fork pg_isready")
	row(fmt.Sprintf("readiness probe p99 (/readyz, %d calls)", calls), median(f.readyP99), median(f.forkP99), "ms", "fork pg_isready")
	row("start to ready, existing PGDATA", median(f.managerReady), median(f.pgctlReady), "s", "pg_ctl start -w")
	fmt.Fprintf(&b, "| start to ready, empty PGDATA (initdb included) | %.2f s | | |\n", median(f.initReady))
	return b.String()
}
