package instance

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestBootstrapProbesAndCleanExit covers the life of a standalone instance as
// PID 1: initdb of an empty PGDATA, probes, /status, JSON logs with both
// sources, and a smart shutdown that exits 0.
func TestBootstrapProbesAndCleanExit(t *testing.T) {
	i := newInstance(t)
	i.start(true)
	i.waitReady(90 * time.Second)

	for _, p := range []string{"/startupz", "/healthz", "/readyz"} {
		if code, body, err := i.get(p); err != nil || code != http.StatusOK {
			t.Errorf("%s = %d %s %v, want 200", p, code, body, err)
		}
	}
	st := i.status()
	if st["role"] != "primary" || st["ready"] != true {
		t.Errorf("/status role=%v ready=%v, want primary and true: %v", st["role"], st["ready"], st)
	}
	if pid, _ := st["postmasterPID"].(float64); pid <= 0 {
		t.Errorf("/status postmasterPID = %v", st["postmasterPID"])
	}
	if lsn, _ := st["currentLSN"].(string); !strings.Contains(lsn, "/") {
		t.Errorf("/status currentLSN = %v, want an LSN", st["currentLSN"])
	}
	if tl, _ := st["timeline"].(float64); tl != 1 {
		t.Errorf("/status timeline = %v, want 1", st["timeline"])
	}

	ctx := context.Background()
	c := i.connect(ctx)
	for setting, want := range map[string]string{"data_checksums": "on", "password_encryption": "scram-sha-256"} {
		var got string
		if err := c.QueryRow(ctx, "SELECT current_setting($1)", setting).Scan(&got); err != nil || got != want {
			t.Errorf("%s = %q (%v), want %q", setting, got, err, want)
		}
	}
	var verifier string
	if err := c.QueryRow(ctx, "SELECT rolpassword FROM pg_authid WHERE rolname = 'postgres'").Scan(&verifier); err != nil || !strings.HasPrefix(verifier, "SCRAM-SHA-256$") {
		t.Errorf("superuser password is not a SCRAM verifier: %v", err)
	}
	c.Close(ctx)

	if v := i.metric("pgwarden_postmaster_up"); v != 1 {
		t.Errorf("pgwarden_postmaster_up = %v, want 1", v)
	}
	assertNoSecretInProcesses(t, i.managerPID())

	i.signal(syscall.SIGTERM)
	if code := i.wait(40 * time.Second); code != 0 {
		t.Fatalf("exit code %d after a smart shutdown, want 0", code)
	}
	i.waitLog(time.Second, "postgres stopped", "mode", "smart")

	sources := map[string]int{}
	for _, r := range i.logRecords() {
		sources[fmt.Sprint(r["source"])]++
		for _, k := range []string{"time", "level", "msg"} {
			if _, ok := r[k]; !ok {
				t.Errorf("log record without %q: %v", k, r)
			}
		}
	}
	if sources["pgwarden"] == 0 || sources["postgres"] == 0 {
		t.Errorf("want records from both sources, got %v", sources)
	}
	assertNoSecret(t, "stdout", i.out.String())
	assertNoSecret(t, "stderr", i.errOut.String())
}

// TestRestartReusesDataDirectory starts twice on the same PGDATA: the second
// start must not run initdb again and must keep the data.
func TestRestartReusesDataDirectory(t *testing.T) {
	i := newInstance(t)
	i.start(false)
	i.waitReady(90 * time.Second)
	ctx := context.Background()
	c := i.connect(ctx)
	if _, err := c.Exec(ctx, "CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)"); err != nil {
		t.Fatal(err)
	}
	c.Close(ctx)
	i.signal(syscall.SIGTERM)
	if code := i.wait(40 * time.Second); code != 0 {
		t.Fatalf("first run exit code %d", code)
	}

	i.start(false)
	i.waitReady(60 * time.Second)
	c = i.connect(ctx)
	var v int
	if err := c.QueryRow(ctx, "SELECT v FROM kept").Scan(&v); err != nil || v != 42 {
		t.Fatalf("data lost across restart: %v %v", v, err)
	}
	for _, r := range i.logRecords() {
		if m, _ := r["msg"].(string); strings.Contains(strings.ToLower(m), "initdb") && r["source"] == "pgwarden" && strings.Contains(m, "running") {
			t.Errorf("second start ran initdb: %v", r)
		}
	}
}

// TestPID1ReapsOrphansAndSeesPostmasterExit runs pgwarden as PID 1 of its own
// PID namespace. An orphan made inside the namespace is reaped (no zombie
// remains) and a killed postmaster is still reported with its real status,
// then restarted.
func TestPID1ReapsOrphansAndSeesPostmasterExit(t *testing.T) {
	i := newInstance(t)
	i.start(true)
	i.waitReady(90 * time.Second)
	mgr := i.managerPID()

	before := i.metric("pgwarden_orphans_reaped_total")
	// sh runs inside the namespace and exits at once, leaving sleep behind:
	// the kernel re-parents sleep to the namespace's PID 1, pgwarden.
	out, err := exec.Command("nsenter", "--target", strconv.Itoa(mgr), "--pid", "--mount", "--",
		"sh", "-c", "sleep 0.3 & echo $!").CombinedOutput()
	if err != nil {
		t.Fatalf("nsenter: %v: %s", err, out)
	}
	waitFor(t, 10*time.Second, "the orphan to be reaped", func() bool {
		return i.metric("pgwarden_orphans_reaped_total") > before
	})
	waitFor(t, 5*time.Second, "no zombie under pgwarden", func() bool {
		_, z := descendantsOf(mgr)
		return len(z) == 0
	})

	// Kill the postmaster behind pgwarden's back.
	pm := postmasterHostPID(t, mgr)
	if err := syscall.Kill(pm, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	i.waitLog(10*time.Second, "postgres exited unexpectedly", "status", "killed by signal 9 (SIGKILL)")
	waitFor(t, 30*time.Second, "the postmaster to be restarted", func() bool {
		return i.metric("pgwarden_postmaster_restarts_total") == 1
	})
	i.waitReady(60 * time.Second)
	if v := i.metric("pgwarden_postmaster_unexpected_exits_total"); v != 1 {
		t.Errorf("pgwarden_postmaster_unexpected_exits_total = %v, want 1", v)
	}
	if pm2 := postmasterHostPID(t, mgr); pm2 == pm {
		t.Errorf("postmaster PID unchanged after restart")
	}

	i.signal(syscall.SIGTERM)
	if code := i.wait(40 * time.Second); code != 0 {
		t.Fatalf("exit code %d, want 0", code)
	}
}

// TestShutdownFastEndsIdleSession: an idle session keeps smart shutdown from
// finishing; after half of stop-delay, fast shutdown ends it and pgwarden exits 0.
func TestShutdownFastEndsIdleSession(t *testing.T) {
	const stopDelay = 6 * time.Second
	i := newInstance(t)
	i.ExtraArgs = []string{"--stop-delay", stopDelay.String()}
	i.start(true)
	i.waitReady(90 * time.Second)
	_ = i.connect(context.Background()) // idle, kept open

	began := time.Now()
	i.signal(syscall.SIGTERM)
	code := i.wait(stopDelay + 10*time.Second)
	took := time.Since(began)
	if code != 0 {
		t.Fatalf("exit code %d, want 0 (fast shutdown is clean)", code)
	}
	i.waitLog(time.Second, "postgres stopped", "mode", "fast")
	if took < stopDelay/2 || took > stopDelay+2*time.Second {
		t.Errorf("shutdown took %s, want between %s (smart's half) and %s", took, stopDelay/2, stopDelay+2*time.Second)
	}
}

// TestShutdownStoppedBackendNeedsKill: a backend stopped with SIGSTOP ignores
// fast and immediate shutdown; pgwarden escalates to SIGKILL within stop-delay,
// exits with the "needed SIGKILL" code and leaves no process behind.
func TestShutdownStoppedBackendNeedsKill(t *testing.T) {
	const stopDelay = 6 * time.Second
	i := newInstance(t)
	i.ExtraArgs = []string{"--stop-delay", stopDelay.String()}
	i.start(false) // child subreaper: the leftovers are visible from here
	i.waitReady(90 * time.Second)
	ctx := context.Background()
	c := i.connect(ctx)
	var backend int
	if err := c.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&backend); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(backend, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(backend, syscall.SIGKILL) })

	began := time.Now()
	i.signal(syscall.SIGTERM)
	code := i.wait(stopDelay + 10*time.Second)
	took := time.Since(began)
	if code != 5 {
		t.Fatalf("exit code %d, want 5 (needed SIGKILL)", code)
	}
	i.waitLog(time.Second, "stopping postgres", "mode", "immediate")
	i.waitLog(time.Second, "postgres stopped", "mode", "kill")
	if took > stopDelay+time.Second {
		t.Errorf("shutdown took %s, longer than stop-delay %s", took, stopDelay)
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", backend)); err == nil {
		t.Errorf("stopped backend %d still exists after pgwarden exited", backend)
	}
}

// TestBadInputChangesNothing: each bad input is refused with a clear error and
// a non-zero exit, and PGDATA is left exactly as it was.
func TestBadInputChangesNothing(t *testing.T) {
	tests := []struct {
		name    string
		prepare func(t *testing.T, i *instance)
		want    string // in the error record
	}{
		{"missing password file", func(t *testing.T, i *instance) { os.Remove(i.PasswordFile) }, "password"},
		{"password file is a directory", func(t *testing.T, i *instance) {
			os.Remove(i.PasswordFile)
			os.Mkdir(i.PasswordFile, 0o700)
		}, "password"},
		{"empty password file", func(t *testing.T, i *instance) { os.WriteFile(i.PasswordFile, nil, 0o600) }, "password"},
		{"not a data directory", func(t *testing.T, i *instance) {
			os.MkdirAll(i.PGData, 0o700)
			os.WriteFile(filepath.Join(i.PGData, "precious.txt"), []byte("mine"), 0o600)
		}, "not a PostgreSQL data directory"},
		{"data directory of another major version", func(t *testing.T, i *instance) {
			os.MkdirAll(filepath.Join(i.PGData, "global"), 0o700)
			os.WriteFile(filepath.Join(i.PGData, "PG_VERSION"), []byte("14\n"), 0o600)
		}, "14"},
		{"unknown pg-bin-dir", func(t *testing.T, i *instance) {
			i.ExtraArgs = append(i.ExtraArgs, "--pg-bin-dir", "/nonexistent/bin")
		}, "/nonexistent/bin"},
		{"port in use", func(t *testing.T, i *instance) {
			l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(i.Port))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { l.Close() })
		}, ""}, // the port number, known once the instance exists
		{"parameter owned by pgwarden", func(t *testing.T, i *instance) {
			f := filepath.Join(i.Root, "params.conf")
			os.WriteFile(f, []byte("port = 6000\n"), 0o644)
			i.ExtraArgs = append(i.ExtraArgs, "--parameters-file", f)
		}, "port"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			i := newInstance(t)
			tt.prepare(t, i)
			want := tt.want
			if want == "" {
				want = strconv.Itoa(i.Port)
			}
			before := snapshotTree(t, i.PGData)
			i.start(false)
			code := i.wait(60 * time.Second)
			if code != 3 {
				t.Fatalf("exit code %d, want 3 (could not start); stdout:\n%s", code, i.out.String())
			}
			rec := i.waitLog(time.Second, "", "level", "ERROR")
			if !strings.Contains(fmt.Sprint(rec), want) {
				t.Errorf("error record %v does not mention %q", rec, want)
			}
			if after := snapshotTree(t, i.PGData); after != before {
				t.Errorf("PGDATA changed:\nbefore:\n%s\nafter:\n%s", before, after)
			}
			assertNoSecret(t, "stdout", i.out.String())
		})
	}
}

// TestParametersReloadAndPendingRestart: the user's parameters file is
// applied at start, re-read when it changes (reload, no restart), and a
// parameter that needs a restart shows as pendingRestart in /status.
func TestParametersReloadAndPendingRestart(t *testing.T) {
	i := newInstance(t)
	params := filepath.Join(i.Root, "params.conf")
	if err := os.WriteFile(params, []byte("work_mem = '8MB'\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	i.ExtraArgs = []string{"--parameters-file", params}
	i.start(true)
	i.waitReady(90 * time.Second)
	ctx := context.Background()
	setting := func(name string) string {
		c := i.connect(ctx)
		defer c.Close(ctx)
		var v string
		if err := c.QueryRow(ctx, "SELECT current_setting($1)", name).Scan(&v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	if v := setting("work_mem"); v != "8MB" {
		t.Fatalf("work_mem = %s, want 8MB", v)
	}
	pid := i.status()["postmasterPID"]

	if err := os.WriteFile(params, []byte("work_mem = '16MB'\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "work_mem to become 16MB", func() bool { return setting("work_mem") == "16MB" })
	if st := i.status(); st["postmasterPID"] != pid {
		t.Errorf("postmaster restarted for a reload: pid %v -> %v", pid, st["postmasterPID"])
	}

	// A bad file changes nothing and says why.
	if err := os.WriteFile(params, []byte("work_mem = '32MB'\nlisten_addresses = '*'\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	i.waitLog(20*time.Second, "parameters", "level", "ERROR")
	if v := setting("work_mem"); v != "16MB" {
		t.Errorf("a rejected parameters file changed work_mem to %s", v)
	}

	if err := os.WriteFile(params, []byte("work_mem = '16MB'\nshared_buffers = '64MB'\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "/status pendingRestart", func() bool { return i.status()["pendingRestart"] == true })
}

// postmasterHostPID returns the host PID of pgwarden's postgres child.
func postmasterHostPID(t *testing.T, mgr int) int {
	t.Helper()
	var pm int
	waitFor(t, 10*time.Second, "the postmaster to be a child of pgwarden", func() bool {
		// children lists the children of one thread; Go forks from any of its threads.
		files, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", mgr))
		var kids []string
		for _, f := range files {
			b, _ := os.ReadFile(f)
			kids = append(kids, strings.Fields(string(b))...)
		}
		for _, f := range kids {
			p, _ := strconv.Atoi(f)
			comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", p))
			if strings.TrimSpace(string(comm)) == "postgres" {
				pm = p
				return true
			}
		}
		return false
	})
	return pm
}

func assertNoSecret(t *testing.T, where, s string) {
	t.Helper()
	if strings.Contains(s, password) || strings.Contains(s, "s3cret") {
		t.Errorf("the superuser password appears in %s", where)
	}
}

// assertNoSecretInProcesses checks the command line and environment of
// pgwarden and every process below it.
func assertNoSecretInProcesses(t *testing.T, mgr int) {
	t.Helper()
	live, _ := descendantsOf(mgr)
	for _, p := range append(live, mgr) {
		for _, f := range []string{"cmdline", "environ"} {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", p, f))
			if err != nil {
				continue // exited meanwhile
			}
			assertNoSecret(t, fmt.Sprintf("/proc/%d/%s", p, f), string(b))
		}
	}
}

// snapshotTree lists every path below dir with its size and mode ("" when dir does not exist).
func snapshotTree(t *testing.T, dir string) string {
	t.Helper()
	var lines []string
	_ = filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return nil
		}
		lines = append(lines, fmt.Sprintf("%s %d %s %d", p, fi.Size(), fi.Mode(), fi.ModTime().UnixNano()))
		return nil
	})
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// TestSynchronousStandbyNamesFile: the operator's synchronous_standby_names
// arrives in its own file (users cannot set it among their parameters); it is
// applied at start and re-applied by reload when the file changes, and a bad
// file changes nothing.
func TestSynchronousStandbyNamesFile(t *testing.T) {
	i := newInstance(t)
	sync := filepath.Join(i.Root, "synchronous_standby_names")
	if err := os.WriteFile(sync, []byte(`ANY 1 ("demo-2", "demo-3")`+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	i.ExtraArgs = []string{"--synchronous-standby-names-file", sync}
	i.start(true)
	i.waitReady(90 * time.Second)
	ctx := context.Background()
	setting := func() string {
		c := i.connect(ctx)
		defer c.Close(ctx)
		var v string
		if err := c.QueryRow(ctx, "SELECT current_setting('synchronous_standby_names')").Scan(&v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	if v := setting(); v != `ANY 1 ("demo-2", "demo-3")` {
		t.Fatalf("synchronous_standby_names = %q at start", v)
	}
	if err := os.WriteFile(sync, []byte("\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "synchronous_standby_names to be cleared", func() bool { return setting() == "" })

	if err := os.WriteFile(sync, []byte("ANY 1 (a)\nFIRST 1 (b)\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	i.waitLog(20*time.Second, "synchronous_standby_names", "level", "ERROR")
	if v := setting(); v != "" {
		t.Errorf("a rejected file changed synchronous_standby_names to %q", v)
	}
}
