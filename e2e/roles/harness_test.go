package roles

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/pgwarden/pgwarden/e2e/internal/harness"
	"github.com/pgwarden/pgwarden/e2e/testbed"
	"github.com/pgwarden/pgwarden/pkg/roles"
)

// bin is the pgwarden binary under test, built once by TestMain.
var bin string

func TestMain(m *testing.M) {
	os.Exit(harness.Main(m, &bin, "e2e/roles: these tests must run as root (postgres runs as the postgres user; PID namespaces and iptables need it)"))
}

const (
	superPassword = "super-s3cret-'\"x"
	replPassword  = "repl-s3cret-\\y"
	pgBinDir      = "/usr/lib/postgresql/15/bin"
	namespace     = "pgw"
	clusterName   = "demo"
)

// Short Lease timings keep the fencing tests short; their ratios leave the
// holder 2 s between fencing and expiry, like the defaults leave 5 s.
var leaseArgs = []string{"--lease-duration", "6s", "--lease-renew-deadline", "4s", "--lease-retry-period", "1s"}

const leaseDuration = 6 * time.Second

// cluster is a test API server, a namespace with the instances' RBAC, and members.
type cluster struct {
	t          *testing.T
	api        *testbed.API
	admin      kubernetes.Interface
	restricted *rest.Config // the instances' identity, restricted to roles.PolicyRules
	port       int
	dir        string
	superFile  string
	replFile   string
	members    []*member
}

// member is one instance: its Pod and its `pgwarden instance run` as PID 1.
type member struct {
	c           *cluster
	name        string
	ip          string
	root        string
	pgdata      string
	socketDir   string
	statusAddr  string
	metricsAddr string

	// proxy carries the member's API traffic, so a test can partition it.
	proxy      *apiProxy
	kubeconfig string

	cmd    *exec.Cmd
	out    *lineBuffer
	errOut *lineBuffer
	done   chan struct{}
	code   int
}

var freePort = harness.FreePort

// newCluster starts an API server and creates n Pods demo-0.. with desired
// roles primary (the first) and replica, and their IPs 127.0.77.1...
func newCluster(t *testing.T, n int) *cluster {
	t.Helper()
	api := testbed.StartAPI(t)
	dir, err := os.MkdirTemp("", "pgwarden-roles-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	c := &cluster{t: t, api: api, admin: api.Clientset(t), port: freePort(t), dir: dir,
		superFile: filepath.Join(dir, "superuser-password"), replFile: filepath.Join(dir, "replication-password")}
	for f, p := range map[string]string{c.superFile: superPassword, c.replFile: replPassword} {
		if err := os.WriteFile(f, []byte(p+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	var pods []string
	for i := range n {
		pods = append(pods, fmt.Sprintf("%s-%d", clusterName, i))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	restricted := api.ServiceAccountConfig(t, namespace, "instance")
	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "pgwarden-instance", Namespace: namespace},
		Rules: roles.PolicyRules(clusterName, pods)}
	if _, err := c.admin.RbacV1().Roles(namespace).Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	rb := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "pgwarden-instance", Namespace: namespace},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: role.Name},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: "instance", Namespace: namespace}}}
	if _, err := c.admin.RbacV1().RoleBindings(namespace).Create(ctx, rb, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	c.restricted = restricted
	rc, err := kubernetes.NewForConfig(restricted)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "RBAC to apply", func() bool {
		_, err := rc.CoordinationV1().Leases(namespace).Get(ctx, roles.LeaseName(clusterName), metav1.GetOptions{})
		return err == nil || apierrors.IsNotFound(err)
	})
	for i, name := range pods {
		role := "replica"
		if i == 0 {
			role = "primary"
		}
		m := c.newMember(name, fmt.Sprintf("127.0.77.%d", i+1))
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace,
				Annotations: map[string]string{roles.DesiredRoleAnnotation: role},
				Labels:      map[string]string{"pgwarden.io/cluster": clusterName}},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "postgres", Image: "pgwarden.local/pgwarden:test"}}},
		}
		created, err := c.admin.CoreV1().Pods(namespace).Create(ctx, pod, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		created.Status.PodIP = m.ip
		created.Status.PodIPs = []corev1.PodIP{{IP: m.ip}}
		if _, err := c.admin.CoreV1().Pods(namespace).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		c.members = append(c.members, m)
	}
	return c
}

func (c *cluster) newMember(name, ip string) *member {
	root := filepath.Join(c.dir, name)
	if err := os.MkdirAll(root, 0o755); err != nil {
		c.t.Fatal(err)
	}
	proxy := newAPIProxy(c.t, strings.TrimPrefix(c.api.URL, "https://"))
	cfg := rest.CopyConfig(c.restricted)
	cfg.Host = "https://" + proxy.addr()
	cfg.TLSClientConfig.ServerName = "127.0.0.1"
	return &member{c: c, name: name, ip: ip, root: root, proxy: proxy,
		kubeconfig:  c.api.WriteKubeconfig(c.t, cfg, "instance-"+name),
		pgdata:      filepath.Join(root, "data", "pgdata"),
		socketDir:   filepath.Join(root, "run"),
		statusAddr:  ip + ":" + strconv.Itoa(freePort(c.t)),
		metricsAddr: ip + ":" + strconv.Itoa(freePort(c.t)),
	}
}

func (c *cluster) member(name string) *member {
	for _, m := range c.members {
		if m.name == name {
			return m
		}
	}
	c.t.Fatalf("no member %s", name)
	return nil
}

func (m *member) args() []string {
	a := []string{"instance", "run",
		"--pgdata", m.pgdata,
		"--port", strconv.Itoa(m.c.port),
		"--listen-addresses", m.ip,
		"--socket-dir", m.socketDir,
		"--status-addr", m.statusAddr,
		"--metrics-addr", m.metricsAddr,
		"--superuser-password-file", m.c.superFile,
		"--replication-password-file", m.c.replFile,
		"--pg-bin-dir", pgBinDir,
		"--pod-name", m.name, "--namespace", namespace, "--cluster", clusterName,
		"--kubeconfig", m.kubeconfig,
		"--stop-delay", "20s",
	}
	return append(a, leaseArgs...)
}

// start runs the manager as PID 1 of a new PID namespace.
func (m *member) start() {
	t := m.c.t
	cmd := exec.Command("unshare", append([]string{"--pid", "--fork", "--mount-proc", "--kill-child", bin}, m.args()...)...)
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	m.out, m.errOut = &lineBuffer{}, &lineBuffer{}
	cmd.Stdout, cmd.Stderr = m.out, m.errOut
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	m.cmd, m.done = cmd, make(chan struct{})
	go func() {
		_ = cmd.Wait()
		m.code = cmd.ProcessState.ExitCode()
		close(m.done)
	}()
	t.Cleanup(func() {
		if !m.exited() {
			if pid := m.managerPID(); pid > 0 {
				_ = syscall.Kill(pid, syscall.SIGTERM)
			}
			select {
			case <-m.done:
			case <-time.After(40 * time.Second):
				_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
				<-m.done
			}
		}
		if t.Failed() || os.Getenv("PGWARDEN_TEST_LOGS") != "" {
			t.Logf("=== %s stdout:\n%s\n=== %s stderr:\n%s", m.name, m.out.String(), m.name, m.errOut.String())
		}
	})
}

// terminate sends SIGTERM to the manager (pid, or the current one when 0) and waits until it
// exited, as the kubelet does when it stops a container.
func (m *member) terminate(pid int) {
	t := m.c.t
	t.Helper()
	if pid == 0 {
		pid = m.managerPID()
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-m.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("%s did not exit after SIGTERM", m.name)
	}
}

func (m *member) exited() bool {
	select {
	case <-m.done:
		return true
	default:
		return false
	}
}

// managerPID is the host PID of pgwarden (the child of unshare), 0 if none.
func (m *member) managerPID() int {
	for range 100 {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", m.cmd.Process.Pid, m.cmd.Process.Pid))
		if err == nil {
			if f := strings.Fields(string(b)); len(f) > 0 {
				pid, _ := strconv.Atoi(f[0])
				return pid
			}
		}
		if m.exited() {
			return 0
		}
		time.Sleep(20 * time.Millisecond)
	}
	return 0
}

// status returns /status, or nil when it does not answer.
func (m *member) status() map[string]any {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+m.statusAddr+"/status", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var st map[string]any
	if json.Unmarshal(b, &st) != nil {
		return nil
	}
	return st
}

// connect opens a superuser session to the member over TCP, as a client would.
func (m *member) connect(ctx context.Context) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres sslmode=disable connect_timeout=2", m.ip, m.c.port))
	if err != nil {
		return nil, err
	}
	cfg.Password = superPassword
	return pgx.ConnectConfig(ctx, cfg)
}

// connectSocket opens a superuser session through the unix socket (it works
// while the TCP address is cut off).
func (m *member) connectSocket(ctx context.Context) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres sslmode=disable connect_timeout=2", m.socketDir, m.c.port))
	if err != nil {
		return nil, err
	}
	cfg.Password = superPassword
	return pgx.ConnectConfig(ctx, cfg)
}

// exec runs one statement on the member and fails the test on error.
func (m *member) exec(sql string, args ...any) {
	m.c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := m.connect(ctx)
	if err != nil {
		m.c.t.Fatalf("%s: %v", m.name, err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		m.c.t.Fatalf("%s: %s: %v", m.name, sql, err)
	}
}

// walReceiver returns the member's walreceiver status and upstream host ("" if none).
func (m *member) walReceiver() (string, string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	conn, err := m.connect(ctx)
	if err != nil {
		return "", ""
	}
	defer conn.Close(context.Background())
	var status, host *string
	err = conn.QueryRow(ctx, "SELECT status, sender_host FROM pg_stat_wal_receiver").Scan(&status, &host)
	if err != nil || status == nil || host == nil {
		return "", ""
	}
	return *status, *host
}

func (m *member) streamingFrom(up *member) bool {
	st, host := m.walReceiver()
	return st == "streaming" && host == up.ip
}

// isPrimary: /status says primary in phase primary, holding the Lease.
func (m *member) isPrimary() bool {
	st := m.status()
	return st != nil && st["role"] == "primary" && st["phase"] == "primary" && st["leaseHolder"] == m.name && st["ready"] == true
}

// waitLog waits for a log record whose msg contains msg; it returns the record.
func (m *member) waitLog(limit time.Duration, msg string) map[string]any {
	m.c.t.Helper()
	var found map[string]any
	waitFor(m.c.t, limit, fmt.Sprintf("%s to log %q", m.name, msg), func() bool {
		found = m.findLog(msg)
		return found != nil
	})
	return found
}

func (m *member) findLog(msg string) map[string]any {
	for _, l := range m.out.Lines() {
		var r map[string]any
		if json.Unmarshal([]byte(l), &r) != nil {
			continue
		}
		if s, _ := r["msg"].(string); strings.Contains(s, msg) {
			return r
		}
	}
	return nil
}

// annotate sets the desired roles, in the order given (name, role, name, role...).
func (c *cluster) annotate(kv ...string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := 0; i+1 < len(kv); i += 2 {
		patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]any{roles.DesiredRoleAnnotation: kv[i+1]}}})
		if _, err := c.admin.CoreV1().Pods(namespace).Patch(ctx, kv[i], types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
			c.t.Fatalf("cannot annotate %s: %v", kv[i], err)
		}
	}
}

// label returns the Pod's observed-role label.
func (c *cluster) label(name string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	p, err := c.admin.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return "?"
	}
	return p.Labels[roles.ObservedRoleLabel]
}

// holder returns the Lease's holder and holder IP ("" when none or unreadable).
func (c *cluster) holder() (string, string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	l, err := c.admin.CoordinationV1().Leases(namespace).Get(ctx, roles.LeaseName(clusterName), metav1.GetOptions{})
	if err != nil || l.Spec.HolderIdentity == nil {
		return "", ""
	}
	return *l.Spec.HolderIdentity, l.Annotations[roles.HolderIPAnnotation]
}

// events returns the reasons of the Events on a Pod, in order.
func (c *cluster) events(pod string) []string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	list, err := c.admin.CoreV1().Events(namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		c.t.Fatal(err)
	}
	sort.Slice(list.Items, func(i, j int) bool { return list.Items[i].Name < list.Items[j].Name })
	var out []string
	for _, e := range list.Items {
		if e.InvolvedObject.Name == pod {
			out = append(out, e.Reason)
		}
	}
	return out
}

func count(xs []string, x string) int {
	n := 0
	for _, y := range xs {
		if y == x {
			n++
		}
	}
	return n
}

// startAll starts every member and waits for demo-0 to be primary and the
// others streaming from it.
func (c *cluster) startAll() {
	c.t.Helper()
	for _, m := range c.members {
		m.start()
	}
	p := c.members[0]
	waitFor(c.t, 90*time.Second, p.name+" to be primary", p.isPrimary)
	for _, m := range c.members[1:] {
		waitFor(c.t, 90*time.Second, m.name+" to stream from "+p.name, func() bool { return m.streamingFrom(p) })
	}
	p.exec("CREATE TABLE probe (id bigserial PRIMARY KEY, member text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())")
	p.exec("CREATE TABLE acked (k text PRIMARY KEY)")
}

// iptables adds a rule and removes it at cleanup (and through the returned func).
func (c *cluster) iptables(rule ...string) func() {
	c.t.Helper()
	add := append([]string{"-I"}, rule...)
	if out, err := exec.Command("iptables", add...).CombinedOutput(); err != nil {
		c.t.Fatalf("iptables %v: %v: %s", add, err, out)
	}
	var once sync.Once
	del := func() {
		once.Do(func() {
			d := append([]string{"-D"}, rule...)
			if out, err := exec.Command("iptables", d...).CombinedOutput(); err != nil {
				c.t.Errorf("iptables %v: %v: %s", d, err, out)
			}
		})
	}
	c.t.Cleanup(del)
	return del
}

// cutReplication cuts every TCP connection to and from m's postgres address.
func (c *cluster) cutReplication(m *member) func() {
	port := strconv.Itoa(c.port)
	d1 := c.iptables("OUTPUT", "-p", "tcp", "-d", m.ip, "--dport", port, "-j", "DROP")
	d2 := c.iptables("OUTPUT", "-p", "tcp", "-s", m.ip, "--sport", port, "-j", "DROP")
	return func() { d1(); d2() }
}

// --- the write checker and the two-writers probe ---

// probeWrite is one write a member accepted, at the server's clock.
type probeWrite struct {
	member string
	at     time.Time
}

// checker runs a writer (fresh connections to the Lease holder, unique keys,
// every acknowledged key recorded) and one probe per member (a write attempt
// every 20 ms against each member directly).
type checker struct {
	c      *cluster
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	acked  []string
	probes []probeWrite
}

func (c *cluster) startChecker() *checker {
	ctx, cancel := context.WithCancel(context.Background())
	ch := &checker{c: c, cancel: cancel}
	ch.wg.Add(1 + len(c.members))
	go ch.writer(ctx)
	for _, m := range c.members {
		go ch.probe(ctx, m)
	}
	c.t.Cleanup(ch.stop)
	return ch
}

func (ch *checker) stop() {
	ch.cancel()
	ch.wg.Wait()
}

func (ch *checker) writer(ctx context.Context) {
	defer ch.wg.Done()
	for n := 0; ctx.Err() == nil; n++ {
		_, ip := ch.c.holder()
		var target *member
		for _, m := range ch.c.members {
			if m.ip == ip {
				target = m
			}
		}
		if target != nil {
			key := fmt.Sprintf("w-%06d", n)
			wctx, cancel := context.WithTimeout(ctx, time.Second)
			conn, err := target.connect(wctx)
			if err == nil {
				_, err = conn.Exec(wctx, "INSERT INTO acked VALUES ($1)", key)
				conn.Close(context.Background())
				if err == nil {
					ch.mu.Lock()
					ch.acked = append(ch.acked, key)
					ch.mu.Unlock()
				}
			}
			cancel()
		}
		sleepCtx(ctx, 10*time.Millisecond)
	}
}

func (ch *checker) probe(ctx context.Context, m *member) {
	defer ch.wg.Done()
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	for ctx.Err() == nil {
		if conn == nil {
			cctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
			conn, _ = m.connect(cctx)
			cancel()
		}
		if conn != nil {
			pctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
			var at time.Time
			err := conn.QueryRow(pctx, "INSERT INTO probe (member) VALUES ($1) RETURNING at", m.name).Scan(&at)
			cancel()
			if err == nil {
				ch.mu.Lock()
				ch.probes = append(ch.probes, probeWrite{m.name, at})
				ch.mu.Unlock()
			} else if conn.IsClosed() || !isReadOnly(err) {
				conn.Close(context.Background())
				conn = nil
			}
		}
		sleepCtx(ctx, 20*time.Millisecond)
	}
}

func isReadOnly(err error) bool {
	return err != nil && strings.Contains(err.Error(), "read-only transaction")
}

// writerRuns returns the members that accepted probe writes, in the order of
// the writes' server timestamps, consecutive duplicates merged: two members
// accepting writes at the same time would interleave (A B A B ...).
func (ch *checker) writerRuns() []string {
	ch.mu.Lock()
	ws := append([]probeWrite(nil), ch.probes...)
	ch.mu.Unlock()
	sort.Slice(ws, func(i, j int) bool { return ws[i].at.Before(ws[j].at) })
	var runs []string
	for _, w := range ws {
		if len(runs) == 0 || runs[len(runs)-1] != w.member {
			runs = append(runs, w.member)
		}
	}
	return runs
}

// verifyAcked checks that every acknowledged write is on m.
func (ch *checker) verifyAcked(m *member) {
	t := ch.c.t
	t.Helper()
	ch.mu.Lock()
	acked := append([]string(nil), ch.acked...)
	ch.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := m.connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(ctx, "SELECT k FROM acked")
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for rows.Next() {
		var k string
		if err := rows.Scan(&k); err != nil {
			t.Fatal(err)
		}
		have[k] = true
	}
	if rows.Err() != nil {
		t.Fatal(rows.Err())
	}
	var lost []string
	for _, k := range acked {
		if !have[k] {
			lost = append(lost, k)
		}
	}
	if len(acked) == 0 {
		t.Errorf("the writer got no write acknowledged")
	}
	if len(lost) > 0 {
		t.Errorf("%d of %d acknowledged writes are missing on %s: %v", len(lost), len(acked), m.name, lost)
	} else {
		t.Logf("all %d acknowledged writes are on %s", len(acked), m.name)
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

var waitFor = harness.WaitFor

type lineBuffer = harness.LineBuffer

func contextWithTimeout(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}

func metav1DeleteOptions() metav1.DeleteOptions { return metav1.DeleteOptions{} }

func metav1GetOptions() metav1.GetOptions       { return metav1.GetOptions{} }
func metav1UpdateOptions() metav1.UpdateOptions { return metav1.UpdateOptions{} }
