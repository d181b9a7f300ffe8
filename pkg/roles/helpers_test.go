package roles_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/pgwarden/pgwarden/e2e/testbed"
	"github.com/pgwarden/pgwarden/pkg/roles"
)

// Short timings keep the tests fast; their ratios are the defaults' (15/10/2 s).
const (
	testLeaseDuration = 3 * time.Second
	testRenewDeadline = 2 * time.Second
	testRetryPeriod   = 500 * time.Millisecond
	// timerSlack is how late a timer may fire on a loaded two-core machine with -race.
	timerSlack = 500 * time.Millisecond
)

// env is one namespace of a test API server with an instance identity restricted to exactly
// roles.PolicyRules: the code under test runs as that identity, the test's own reads and fault
// injections run as admin.
type env struct {
	api      *testbed.API
	admin    kubernetes.Interface
	ns       string
	cluster  string
	instance *rest.Config  // the restricted identity
	client   *roles.Client // the restricted identity, as the code under test uses it
	log      *testLog
}

// newEnv creates namespace ns with a ServiceAccount bound to roles.PolicyRules(cluster, pods).
func newEnv(t *testing.T, api *testbed.API, ns, cluster string, pods ...string) *env {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := api.ServiceAccountConfig(t, ns, "instance") // creates the namespace
	admin := api.Clientset(t)
	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "pgwarden-instance", Namespace: ns},
		Rules: roles.PolicyRules(cluster, pods)}
	if _, err := admin.RbacV1().Roles(ns).Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	rb := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "pgwarden-instance", Namespace: ns},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: role.Name},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: "instance", Namespace: ns}}}
	if _, err := admin.RbacV1().RoleBindings(ns).Create(ctx, rb, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	restricted, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	client, err := roles.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// The binding reaches the API server's authorizer cache asynchronously.
	waitFor(t, 10*time.Second, "RBAC binding to apply", func() bool {
		_, err := restricted.CoordinationV1().Leases(ns).Get(ctx, roles.LeaseName(cluster), metav1.GetOptions{})
		return err == nil || apierrors.IsNotFound(err)
	})
	return &env{api: api, admin: admin, ns: ns, cluster: cluster, instance: cfg, client: client, log: newTestLog(t)}
}

// lease returns a PrimaryLease for identity, with the test timings, through client (the
// restricted identity if nil).
func (e *env) lease(t *testing.T, identity string, client *roles.Client) *roles.PrimaryLease {
	t.Helper()
	if client == nil {
		client = e.client
	}
	l, err := roles.NewPrimaryLease(roles.LeaseConfig{
		Client: client, Namespace: e.ns, Cluster: e.cluster, Identity: identity, PodIP: "10.0.0." + strconv.Itoa(int(identity[len(identity)-1])),
		LeaseDuration: testLeaseDuration, RenewDeadline: testRenewDeadline, RetryPeriod: testRetryPeriod,
		Recorder: roles.NewRecorder(client, e.ns, identity, e.log.logger.With("pod", identity)),
		Logger:   e.log.logger.With("pod", identity),
	})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// waitFor polls cond every 20 ms until it is true, failing the test after timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// testLog collects the JSON log records of the code under test; they are printed if the test
// fails, and tests read fields from them (the fencing margin).
type testLog struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	logger *slog.Logger
}

func newTestLog(t *testing.T) *testLog {
	l := &testLog{}
	l.logger = slog.New(slog.NewJSONHandler(lockedWriter{l}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	t.Cleanup(func() {
		if t.Failed() {
			l.mu.Lock()
			defer l.mu.Unlock()
			t.Logf("log of the code under test:\n%s", l.buf.String())
		}
	})
	return l
}

type lockedWriter struct{ l *testLog }

func (w lockedWriter) Write(p []byte) (int, error) {
	w.l.mu.Lock()
	defer w.l.mu.Unlock()
	return w.l.buf.Write(p)
}

// records returns the log records whose msg is msg.
func (l *testLog) records(msg string) []map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(l.buf.String(), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == msg {
			out = append(out, rec)
		}
	}
	return out
}

// proxy forwards TCP connections to target; frozen, it holds every byte (requests hang, like a
// partitioned or stuck API server) until thawed.
type proxy struct {
	ln     net.Listener
	target string

	mu     sync.Mutex
	thawed chan struct{} // closed while forwarding
	conns  []net.Conn
	closed bool
}

func startProxy(t *testing.T, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target, thawed: make(chan struct{})}
	close(p.thawed)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

func (p *proxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		u, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			c.Close()
			u.Close()
			return
		}
		p.conns = append(p.conns, c, u)
		p.mu.Unlock()
		go p.pipe(c, u)
		go p.pipe(u, c)
	}
}

func (p *proxy) pipe(dst, src net.Conn) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			thawed := p.thawed
			p.mu.Unlock()
			<-thawed
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (p *proxy) freeze() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.thawed = make(chan struct{})
}

func (p *proxy) thaw() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.thawed:
	default:
		close(p.thawed)
	}
}

func (p *proxy) close() {
	p.thaw()
	p.mu.Lock()
	p.closed = true
	conns := p.conns
	p.mu.Unlock()
	p.ln.Close()
	for _, c := range conns {
		c.Close()
	}
}
