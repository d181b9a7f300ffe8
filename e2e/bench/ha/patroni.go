package main

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func init() { register("patroni", func(o Options) System { return &patroniSystem{o: o} }) }

//go:embed install.sh
var installScript []byte

// Patroni 3.0.2's defaults, written out so the configuration says what was
// measured. The anchor figures are Patroni with these defaults.
const (
	patroniTTL          = 30 // seconds the leader key lives without renewal
	patroniLoopWait     = 10 // seconds between HA loops
	patroniRetryTimeout = 10 // seconds of DCS/PostgreSQL retries before demoting
)

const (
	patroniMembers    = 3
	etcdMembers       = 3
	patroniSuperPass  = "bench-super"
	patroniReplPass   = "bench-repl"
	patroniScope      = "bench"
	patroniPGBinDir   = "/usr/lib/postgresql/15/bin"
	patroniReadyLimit = 4 * time.Minute // initdb + two base backups on a shared 2-core machine
)

type patroniSystem struct{ o Options }

func (s *patroniSystem) Name() string { return "Patroni" }

type etcdMember struct {
	name             string
	clientPort, peer int
	proc             *process
}

type patroniMember struct {
	name             string
	dir, data, conf  string
	pgPort, restPort int
	proc             *process // nil while killed
}

type patroniCluster struct {
	o       Options
	root    string
	cred    *syscall.Credential
	env     []string
	etcd    []*etcdMember
	members []*patroniMember
	http    *http.Client
}

func (s *patroniSystem) Start(ctx context.Context) (_ Cluster, err error) {
	if err := install(ctx); err != nil {
		return nil, err
	}
	pg, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("cannot find the postgres user: %w", err)
	}
	uid, _ := strconv.Atoi(pg.Uid)
	gid, _ := strconv.Atoi(pg.Gid)
	root, err := os.MkdirTemp(s.o.WorkDir, "pgwarden-bench-patroni-")
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(root, 0o755); err != nil {
		return nil, err
	}
	c := &patroniCluster{
		o: s.o, root: root,
		cred: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)},
		env:  []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8", "LC_ALL=C.UTF-8"},
		http: &http.Client{Timeout: 2 * time.Second},
	}
	defer func() {
		if err != nil {
			sctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			_ = c.Stop(sctx)
		}
	}()
	if err := c.startEtcd(ctx); err != nil {
		return nil, err
	}
	for i := 1; i <= patroniMembers; i++ {
		m := &patroniMember{name: "m" + strconv.Itoa(i)}
		m.dir = filepath.Join(root, m.name)
		m.data = filepath.Join(m.dir, "data")
		m.conf = filepath.Join(m.dir, "patroni.yml")
		if m.pgPort, err = freePort(); err != nil {
			return nil, err
		}
		if m.restPort, err = freePort(); err != nil {
			return nil, err
		}
		if err := os.Mkdir(m.dir, 0o700); err != nil {
			return nil, err
		}
		if err := os.WriteFile(m.conf, []byte(c.patroniConfig(m)), 0o600); err != nil {
			return nil, err
		}
		for _, p := range []string{m.dir, m.conf} {
			if err := os.Chown(p, uid, gid); err != nil {
				return nil, err
			}
		}
		c.members = append(c.members, m)
	}
	// m1 first, so it bootstraps the cluster; the others clone from it.
	for i, m := range c.members {
		if err := c.startPatroni(m); err != nil {
			return nil, err
		}
		if i == 0 {
			if err := c.waitPrimary(ctx, patroniReadyLimit); err != nil {
				return nil, err
			}
		}
	}
	if err := waitHealthy(ctx, c, patroniReadyLimit); err != nil {
		return nil, fmt.Errorf("Patroni cluster not healthy: %w\n%s", err, c.logTails())
	}
	return c, nil
}

// install runs install.sh (embedded): Debian's patroni and etcd-server when missing.
func install(ctx context.Context) error {
	cmd := exec.CommandContext(ctx, "bash", "-s")
	cmd.Stdin = bytes.NewReader(installScript)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("cannot install patroni and etcd-server: %w", err)
	}
	return nil
}

func (c *patroniCluster) startEtcd(ctx context.Context) error {
	var initial []string
	for i := 1; i <= etcdMembers; i++ {
		e := &etcdMember{name: "e" + strconv.Itoa(i)}
		var err error
		if e.clientPort, err = freePort(); err != nil {
			return err
		}
		if e.peer, err = freePort(); err != nil {
			return err
		}
		c.etcd = append(c.etcd, e)
		initial = append(initial, fmt.Sprintf("%s=http://127.0.0.1:%d", e.name, e.peer))
	}
	for _, e := range c.etcd {
		client := fmt.Sprintf("http://127.0.0.1:%d", e.clientPort)
		peer := fmt.Sprintf("http://127.0.0.1:%d", e.peer)
		var err error
		e.proc, err = startProcess("etcd "+e.name, filepath.Join(c.root, e.name+".log"), nil, c.env, "/usr/bin/etcd",
			"--name", e.name, "--data-dir", filepath.Join(c.root, e.name),
			"--listen-client-urls", client, "--advertise-client-urls", client,
			"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
			"--initial-cluster", strings.Join(initial, ","), "--initial-cluster-state", "new",
			"--initial-cluster-token", filepath.Base(c.root))
		if err != nil {
			return err
		}
	}
	deadline := time.Now().Add(time.Minute)
	for _, e := range c.etcd {
		url := fmt.Sprintf("http://127.0.0.1:%d/health", e.clientPort)
		for {
			var h struct{ Health string }
			if err := c.getJSON(ctx, url, &h); err == nil && h.Health == "true" {
				break
			}
			if e.proc.exited() || time.Now().After(deadline) {
				return fmt.Errorf("etcd %s not healthy within 1m\n%s", e.name, tail(filepath.Join(c.root, e.name+".log"), 20))
			}
			if err := sleep(ctx, 200*time.Millisecond); err != nil {
				return err
			}
		}
	}
	c.o.Log("etcd: %d members healthy", len(c.etcd))
	return nil
}

func (c *patroniCluster) patroniConfig(m *patroniMember) string {
	var hosts []string
	for _, e := range c.etcd {
		hosts = append(hosts, fmt.Sprintf("127.0.0.1:%d", e.clientPort))
	}
	return fmt.Sprintf(`scope: %[1]s
namespace: /service/
name: %[2]s
restapi:
  listen: 127.0.0.1:%[3]d
  connect_address: 127.0.0.1:%[3]d
etcd3:
  hosts: %[4]s
bootstrap:
  dcs:
    ttl: %[5]d
    loop_wait: %[6]d
    retry_timeout: %[7]d
    maximum_lag_on_failover: 1048576
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        wal_level: replica
        hot_standby: "on"
        max_wal_senders: 10
        max_replication_slots: 10
        wal_keep_size: 128MB
  initdb:
  - encoding: UTF8
  - locale: C.UTF-8
postgresql:
  listen: 127.0.0.1:%[8]d
  connect_address: 127.0.0.1:%[8]d
  data_dir: %[9]s
  bin_dir: %[10]s
  pgpass: %[11]s/pgpass
  authentication:
    superuser:
      username: postgres
      password: %[12]s
    replication:
      username: replicator
      password: %[13]s
  parameters:
    unix_socket_directories: %[11]s
  pg_hba:
  - local all all trust
  - host replication replicator 127.0.0.1/32 scram-sha-256
  - host all all 127.0.0.1/32 scram-sha-256
`, patroniScope, m.name, m.restPort, strings.Join(hosts, ","),
		patroniTTL, patroniLoopWait, patroniRetryTimeout,
		m.pgPort, m.data, c.pgBinDir(), m.dir, patroniSuperPass, patroniReplPass)
}

func (c *patroniCluster) pgBinDir() string {
	if c.o.PGBinDir != "" {
		return c.o.PGBinDir
	}
	return patroniPGBinDir
}

func (c *patroniCluster) startPatroni(m *patroniMember) error {
	env := append(append([]string(nil), c.env...), "HOME="+m.dir)
	p, err := startProcess("patroni "+m.name, filepath.Join(m.dir, "patroni.log"), c.cred, env,
		"/usr/bin/python3", "/usr/bin/patroni", m.conf)
	if err != nil {
		return err
	}
	m.proc = p
	return nil
}

func (c *patroniCluster) member(name string) (*patroniMember, error) {
	for _, m := range c.members {
		if m.name == name {
			return m, nil
		}
	}
	return nil, fmt.Errorf("no member %q", name)
}

func (c *patroniCluster) Members() []string {
	var names []string
	for _, m := range c.members {
		names = append(names, m.name)
	}
	return names
}

func (c *patroniCluster) dsn(m *patroniMember) string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=postgres password=%s dbname=postgres sslmode=disable connect_timeout=2",
		m.pgPort, patroniSuperPass)
}

// ProbeDSN lists every member, in member order, and lets the client keep the
// first that accepts writes (libpq's target_session_attrs=read-write, which
// pgx implements the same way: connect, SHOW transaction_read_only, next).
// connect_timeout=1 bounds each host; a dead member refuses at once on
// loopback.
func (c *patroniCluster) ProbeDSN() string {
	var hosts, ports []string
	for _, m := range c.members {
		hosts = append(hosts, "127.0.0.1")
		ports = append(ports, strconv.Itoa(m.pgPort))
	}
	return fmt.Sprintf("host=%s port=%s user=postgres password=%s dbname=postgres sslmode=disable connect_timeout=1 target_session_attrs=read-write",
		strings.Join(hosts, ","), strings.Join(ports, ","), patroniSuperPass)
}

func (c *patroniCluster) ServerAddr(member string) string {
	m, err := c.member(member)
	if err != nil {
		return ""
	}
	return "127.0.0.1:" + strconv.Itoa(m.pgPort)
}

// Primary is the leader in the DCS as any running member's REST API reports it.
func (c *patroniCluster) Primary(ctx context.Context) (string, error) {
	var lastErr error = ErrNoPrimary
	for _, m := range c.members {
		if m.proc == nil || m.proc.exited() {
			continue
		}
		var cl struct {
			Members []struct {
				Name, Role, State string
			}
		}
		if err := c.getJSON(ctx, fmt.Sprintf("http://127.0.0.1:%d/cluster", m.restPort), &cl); err != nil {
			lastErr = err
			continue
		}
		for _, x := range cl.Members {
			if x.Role == "leader" {
				return x.Name, nil
			}
		}
		return "", ErrNoPrimary
	}
	return "", lastErr
}

func (c *patroniCluster) Streaming(ctx context.Context, member string) (bool, error) {
	p, err := c.Primary(ctx)
	if err != nil {
		return false, err
	}
	pm, err := c.member(p)
	if err != nil {
		return false, err
	}
	return streamingOn(ctx, c.dsn(pm), member)
}

// Switchover is Patroni's REST API POST /switchover on the leader, what
// `patronictl switchover --force` sends (patronictl itself would add the
// Python start-up time, ~1 s here, to the figure). It blocks until Patroni
// answers, which it does when the switchover is done.
func (c *patroniCluster) Switchover(ctx context.Context, primary, candidate string) error {
	pm, err := c.member(primary)
	if err != nil {
		return err
	}
	body, _ := json.Marshal(map[string]string{"leader": primary, "candidate": candidate})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost,
		fmt.Sprintf("http://127.0.0.1:%d/switchover", pm.restPort), bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	client := &http.Client{Timeout: time.Minute}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("cannot switch over: %w", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("cannot switch over: %s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	return nil
}

// postmasterPID reads the member's postmaster.pid and checks the PID is a
// live postgres, so a stale file never gets another process killed.
func (m *patroniMember) postmasterPID() (int, error) {
	b, err := os.ReadFile(filepath.Join(m.data, "postmaster.pid"))
	if err != nil {
		return 0, err
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil {
		return 0, fmt.Errorf("malformed postmaster.pid: %w", err)
	}
	if !alive(pid) || !strings.Contains(cmdline(pid), "postgres") {
		return 0, fmt.Errorf("postmaster %d from postmaster.pid is not running", pid)
	}
	return pid, nil
}

func (c *patroniCluster) Kill(ctx context.Context, member string) error {
	m, err := c.member(member)
	if err != nil {
		return err
	}
	if m.proc == nil {
		return fmt.Errorf("%s is not running", member)
	}
	pm, err := m.postmasterPID()
	if err != nil {
		return fmt.Errorf("cannot kill %s: %w", member, err)
	}
	// Both signals back to back, manager first so it cannot react to the
	// postmaster's death.
	_ = syscall.Kill(m.proc.pid(), syscall.SIGKILL)
	_ = syscall.Kill(pm, syscall.SIGKILL)
	if err := m.proc.kill(); err != nil {
		return err
	}
	m.proc = nil
	for i := 0; i < 100 && alive(pm); i++ {
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
	if alive(pm) {
		return fmt.Errorf("postmaster %d of %s survived SIGKILL for 5s", pm, member)
	}
	return nil
}

func (c *patroniCluster) Restart(ctx context.Context, member string) error {
	m, err := c.member(member)
	if err != nil {
		return err
	}
	if m.proc != nil {
		return fmt.Errorf("%s is running", member)
	}
	return c.startPatroni(m)
}

// ManagerPIDs is the patroni process. Patroni 3.0.2 runs as one Python
// process with threads; postgres is its child but is not counted.
func (c *patroniCluster) ManagerPIDs(ctx context.Context, member string) ([]int, error) {
	m, err := c.member(member)
	if err != nil {
		return nil, err
	}
	if m.proc == nil || m.proc.exited() {
		return nil, fmt.Errorf("%s is not running", member)
	}
	return []int{m.proc.pid()}, nil
}

// Stop stops the Patroni members (SIGTERM: Patroni stops its postgres with a
// fast shutdown), then etcd, copies the logs to LogDir and removes the
// temporary directory.
func (c *patroniCluster) Stop(ctx context.Context) error {
	var errs []error
	for _, m := range c.members {
		if m.proc != nil {
			if err := m.proc.stop(time.Minute); err != nil {
				errs = append(errs, err)
			}
			m.proc = nil
		}
		// A postmaster left behind (Patroni killed) is stopped by PID.
		if pid, err := m.postmasterPID(); err == nil {
			_ = syscall.Kill(pid, syscall.SIGQUIT)
			for i := 0; i < 100 && alive(pid); i++ {
				_ = sleep(ctx, 100*time.Millisecond)
			}
			if alive(pid) {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	for _, e := range c.etcd {
		if e.proc != nil {
			if err := e.proc.stop(30 * time.Second); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if c.o.LogDir != "" {
		dst := filepath.Join(c.o.LogDir, "patroni-logs")
		if err := os.MkdirAll(dst, 0o755); err == nil {
			for _, m := range c.members {
				copyFile(filepath.Join(m.dir, "patroni.log"), filepath.Join(dst, m.name+"-patroni.log"))
			}
			for _, e := range c.etcd {
				copyFile(filepath.Join(c.root, e.name+".log"), filepath.Join(dst, e.name+"-etcd.log"))
			}
		}
	}
	if err := os.RemoveAll(c.root); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (c *patroniCluster) waitPrimary(ctx context.Context, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		if _, err := c.Primary(ctx); err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no Patroni leader within %s\n%s", limit, c.logTails())
		}
		if err := sleep(ctx, 500*time.Millisecond); err != nil {
			return err
		}
	}
}

func (c *patroniCluster) logTails() string {
	var b strings.Builder
	for _, m := range c.members {
		fmt.Fprintf(&b, "--- %s patroni.log ---\n%s\n", m.name, tail(filepath.Join(m.dir, "patroni.log"), 15))
	}
	return b.String()
}

func (c *patroniCluster) getJSON(ctx context.Context, url string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(v)
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func copyFile(src, dst string) {
	if b, err := os.ReadFile(src); err == nil {
		_ = os.WriteFile(dst, b, 0o644)
	}
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
