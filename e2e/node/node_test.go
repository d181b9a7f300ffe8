//go:build node

package node_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"

	pgv1 "github.com/pgwarden/pgwarden/api/v1"
	"github.com/pgwarden/pgwarden/e2e/testbed"
	"github.com/pgwarden/pgwarden/pkg/roles"
)

const (
	operatorNamespace = "pgwarden-system"
	operatorName      = "pgwarden-operator"
	clusterName       = "demo"
	instances         = 3
	clusterLabel      = "pgwarden.io/cluster"
)

type env struct {
	t       *testing.T
	root    string
	node    *testbed.Node
	kubectl string
	cs      kubernetes.Interface
	c       client.Client
	ns      string
	writes  int // acknowledged writes through -rw
	// cluster is the PostgresCluster's name; overlay the kustomization the operator is deployed
	// from; syncNumber its replication.synchronous.number.
	cluster    string
	overlay    string
	syncNumber int32
}

// TestNode: the operator and real instance pods together on the node test bed.
func TestNode(t *testing.T) {
	e := setup(t)

	e.step("images", e.buildImages)
	e.step("operator", e.deployOperator)
	e.step("cluster", e.createCluster)
	t0 := time.Now()
	primary := e.waitHealthy("", 5*time.Minute)
	e.write(primary, time.Minute)
	t.Logf("cluster Healthy (3 pods ready, %s primary) and written to through -rw after %v", primary, time.Since(t0).Round(10*time.Millisecond))

	// Switchover: annotate a replica primary; the old primary comes back as a streaming replica.
	target := e.someReplica(primary)
	t0 = time.Now()
	e.annotateRole(target, roles.RolePrimary)
	e.write(target, 2*time.Minute)
	t.Logf("switchover %s -> %s: -rw accepted a write on the new primary after %v", primary, target, time.Since(t0).Round(10*time.Millisecond))
	e.waitHealthy(target, 3*time.Minute)
	e.waitStreaming(target, primary, 2*time.Minute)

	// Failover: delete the primary pod; a new primary is chosen, the old one is recreated and streams.
	old := target
	t0 = time.Now()
	if err := e.cs.CoreV1().Pods(e.ns).Delete(context.Background(), old, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	next := e.writeOnOther(old, 2*time.Minute)
	t.Logf("failover: %s deleted, -rw accepted a write on %s after %v", old, next, time.Since(t0).Round(10*time.Millisecond))
	e.waitHealthy(next, 4*time.Minute)
	e.waitStreaming(next, old, 3*time.Minute)

	// Every acknowledged write is on the primary.
	if n := e.countRows(next); n < e.writes {
		t.Fatalf("%d acknowledged writes, %d rows on the primary", e.writes, n)
	}
}

func setup(t *testing.T) *env {
	node := testbed.ConnectNode(t)
	root, err := testbed.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	if err := pgv1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	c, err := client.New(node.Config, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	e := &env{t: t, root: root, node: node, kubectl: testbed.Binary(t, "kubectl"), cs: node.Clientset(t), c: c,
		ns: "node-e2e-" + hex.EncodeToString(b), cluster: clusterName, overlay: filepath.Join("e2e", "node", "deploy")}
	// The test deploys the operator and removes it afterwards: it must not take over one that a
	// user deployed (make demo).
	if _, err := e.cs.CoreV1().Namespaces().Get(context.Background(), operatorNamespace, metav1.GetOptions{}); err == nil {
		t.Fatalf("namespace %s exists: an operator is already deployed on the node; remove it first (kubectl delete -k e2e/node/deploy)", operatorNamespace)
	} else if !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
	return e
}

func (e *env) step(name string, f func()) {
	e.t.Helper()
	t0 := time.Now()
	f()
	e.t.Logf("%s: %v", name, time.Since(t0).Round(10*time.Millisecond))
}

func (e *env) run(name string, args ...string) string {
	e.t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = e.root
	cmd.Env = append(os.Environ(), "KUBECONFIG="+e.node.Kubeconfig)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		e.t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out.String())
	}
	return out.String()
}

// buildImages: the binaries from the working tree, then the instance and operator images,
// imported into the node's containerd (what `make testbed-images` does).
func (e *env) buildImages() {
	e.run(filepath.Join("e2e", "testbed", "images.sh"), "pgwarden")
}

func (e *env) deployOperator() {
	e.t.Cleanup(e.removeOperator)
	e.run(e.kubectl, "apply", "-k", e.overlay)
	e.until("the operator Deployment is available", 2*time.Minute, func() (bool, string) {
		var d appsv1.Deployment
		if err := e.c.Get(context.Background(), types.NamespacedName{Namespace: operatorNamespace, Name: operatorName}, &d); err != nil {
			return false, err.Error()
		}
		return d.Status.AvailableReplicas >= 1 && d.Status.UpdatedReplicas == d.Status.Replicas,
			fmt.Sprintf("available %d, updated %d of %d", d.Status.AvailableReplicas, d.Status.UpdatedReplicas, d.Status.Replicas)
	})
}

func (e *env) removeOperator() {
	if e.t.Failed() {
		e.dumpLogs(operatorNamespace, "app.kubernetes.io/name="+operatorName)
	}
	cmd := exec.Command(e.kubectl, "delete", "-k", e.overlay, "--ignore-not-found", "--wait=true", "--timeout=120s")
	cmd.Dir = e.root
	cmd.Env = append(os.Environ(), "KUBECONFIG="+e.node.Kubeconfig)
	if out, err := cmd.CombinedOutput(); err != nil {
		e.t.Errorf("removing the operator: %v\n%s", err, out)
	}
	e.until("the operator's namespace is gone", 2*time.Minute, func() (bool, string) {
		_, err := e.cs.CoreV1().Namespaces().Get(context.Background(), operatorNamespace, metav1.GetOptions{})
		return apierrors.IsNotFound(err), fmt.Sprint(err)
	})
}

func (e *env) createCluster() {
	ctx := context.Background()
	if _, err := e.cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: e.ns}}, metav1.CreateOptions{}); err != nil {
		e.t.Fatal(err)
	}
	// Registered after removeOperator, so it runs before it: the operator must still be there
	// while the cluster goes away.
	e.t.Cleanup(e.removeCluster)
	pc := &pgv1.PostgresCluster{
		ObjectMeta: metav1.ObjectMeta{Name: e.cluster, Namespace: e.ns},
		Spec: pgv1.PostgresClusterSpec{
			Instances:   instances,
			Storage:     pgv1.StorageSpec{Size: resource.MustParse("1Gi")},
			Replication: pgv1.ReplicationSpec{Synchronous: pgv1.SynchronousSpec{Number: e.syncNumber}},
		},
	}
	if err := e.c.Create(ctx, pc); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) removeCluster() {
	ctx := context.Background()
	if e.t.Failed() {
		e.dumpLogs(e.ns, clusterLabel+"="+e.cluster)
		if out, err := exec.Command(e.kubectl, "--kubeconfig", e.node.Kubeconfig, "get", "events", "-n", e.ns, "--sort-by=.lastTimestamp").CombinedOutput(); err == nil {
			e.t.Logf("events:\n%s", out)
		}
	}
	pc := &pgv1.PostgresCluster{ObjectMeta: metav1.ObjectMeta{Name: e.cluster, Namespace: e.ns}}
	if err := e.c.Delete(ctx, pc); err != nil && !apierrors.IsNotFound(err) {
		e.t.Errorf("deleting the cluster: %v", err)
	}
	if err := e.cs.CoreV1().Namespaces().Delete(ctx, e.ns, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		e.t.Errorf("deleting namespace %s: %v", e.ns, err)
	}
	// Pods stop within their grace period (stopDelay, 30 s), then the PVCs and their volumes go.
	e.until("namespace "+e.ns+" is gone", 3*time.Minute, func() (bool, string) {
		_, err := e.cs.CoreV1().Namespaces().Get(ctx, e.ns, metav1.GetOptions{})
		return apierrors.IsNotFound(err), fmt.Sprint(err)
	})
	e.until("the local-path volumes are released", 2*time.Minute, func() (bool, string) {
		pvs, err := e.cs.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err.Error()
		}
		var left []string
		for _, pv := range pvs.Items {
			if ref := pv.Spec.ClaimRef; ref != nil && ref.Namespace == e.ns {
				left = append(left, pv.Name)
			}
		}
		return len(left) == 0, strings.Join(left, ",")
	})
}

func (e *env) dumpLogs(ns, selector string) {
	ctx := context.Background()
	pods, err := e.cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		e.t.Logf("logs: %v", err)
		return
	}
	for _, p := range pods.Items {
		var tail int64 = 60
		raw, err := e.cs.CoreV1().Pods(ns).GetLogs(p.Name, &corev1.PodLogOptions{TailLines: &tail}).DoRaw(ctx)
		if err != nil {
			e.t.Logf("logs of %s: %v", p.Name, err)
			continue
		}
		e.t.Logf("last log lines of %s/%s:\n%s", ns, p.Name, raw)
	}
}

// until polls cond every 500 ms until it holds or the deadline passes (then the test fails with
// the last state cond reported).
func (e *env) until(what string, timeout time.Duration, cond func() (bool, string)) {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	var last string
	for {
		ok, state := cond()
		if ok {
			return
		}
		last = state
		if time.Now().After(deadline) {
			e.t.Fatalf("%s: not within %v; last: %s", what, timeout, last)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func (e *env) pods() []corev1.Pod {
	e.t.Helper()
	l, err := e.cs.CoreV1().Pods(e.ns).List(context.Background(), metav1.ListOptions{LabelSelector: clusterLabel + "=" + e.cluster})
	if err != nil {
		e.t.Fatal(err)
	}
	return l.Items
}

func ready(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// waitHealthy waits for phase Healthy with every instance ready, exactly one pod labelled primary
// (want, when not empty) and status.currentPrimary naming it. It returns the primary.
func (e *env) waitHealthy(want string, timeout time.Duration) string {
	e.t.Helper()
	var primary string
	e.until("cluster Healthy", timeout, func() (bool, string) {
		var pc pgv1.PostgresCluster
		if err := e.c.Get(context.Background(), types.NamespacedName{Namespace: e.ns, Name: e.cluster}, &pc); err != nil {
			return false, err.Error()
		}
		var primaries, states []string
		nready := 0
		for _, p := range e.pods() {
			role := p.Labels[roles.ObservedRoleLabel]
			if role == string(roles.RolePrimary) {
				primaries = append(primaries, p.Name)
			}
			if ready(&p) && p.DeletionTimestamp == nil {
				nready++
			}
			states = append(states, fmt.Sprintf("%s(ready=%v,role=%s)", p.Name, ready(&p), role))
		}
		state := fmt.Sprintf("phase %s (%s), primary %q, pods %s", pc.Status.Phase, pc.Status.PhaseReason, pc.Status.CurrentPrimary, strings.Join(states, " "))
		ok := pc.Status.Phase == pgv1.PhaseHealthy && nready == instances && len(primaries) == 1 &&
			pc.Status.CurrentPrimary == primaries[0] && (want == "" || primaries[0] == want)
		if ok {
			primary = primaries[0]
		}
		return ok, state
	})
	return primary
}

func (e *env) someReplica(primary string) string {
	for _, p := range e.pods() {
		if p.Name != primary && p.Labels[roles.ObservedRoleLabel] == string(roles.RoleReplica) {
			return p.Name
		}
	}
	e.t.Fatal("no replica")
	return ""
}

func (e *env) annotateRole(pod string, role roles.Role) {
	patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:%q}}}`, roles.DesiredRoleAnnotation, role)
	if _, err := e.cs.CoreV1().Pods(e.ns).Patch(context.Background(), pod, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) password() string {
	s, err := e.cs.CoreV1().Secrets(e.ns).Get(context.Background(), e.cluster+"-superuser", metav1.GetOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	return string(s.Data["password"])
}

func (e *env) connect(ctx context.Context, host string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=5432 user=postgres dbname=postgres sslmode=disable connect_timeout=2", host))
	if err != nil {
		return nil, err
	}
	cfg.Password = e.password()
	return pgx.ConnectConfig(ctx, cfg)
}

// tryWrite inserts a row through the -rw Service's ClusterIP (from the host, through kube-proxy)
// and returns the address of the server that took it.
func (e *env) tryWrite() (string, error) {
	svc, err := e.cs.CoreV1().Services(e.ns).Get(context.Background(), e.cluster+"-rw", metav1.GetOptions{})
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := e.connect(ctx, svc.Spec.ClusterIP)
	if err != nil {
		return "", err
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "CREATE TABLE IF NOT EXISTS node_e2e (id bigserial PRIMARY KEY, at timestamptz DEFAULT now())"); err != nil {
		return "", err
	}
	var addr string
	if err := conn.QueryRow(ctx, "INSERT INTO node_e2e DEFAULT VALUES RETURNING host(inet_server_addr())").Scan(&addr); err != nil {
		return "", err
	}
	e.writes++
	return addr, nil
}

func (e *env) podByIP(ip string) string {
	for _, p := range e.pods() {
		if p.Status.PodIP == ip && p.DeletionTimestamp == nil {
			return p.Name
		}
	}
	return ""
}

// write waits until a write through -rw is taken by pod want.
func (e *env) write(want string, timeout time.Duration) {
	e.t.Helper()
	e.until("a write through "+e.cluster+"-rw on "+want, timeout, func() (bool, string) {
		addr, err := e.tryWrite()
		if err != nil {
			return false, err.Error()
		}
		got := e.podByIP(addr)
		return got == want, "written on " + addr + " (" + got + ")"
	})
}

// writeOnOther waits until a write through -rw is taken by a pod other than old; returns it.
func (e *env) writeOnOther(old string, timeout time.Duration) string {
	e.t.Helper()
	var got string
	e.until("a write through "+e.cluster+"-rw on another pod than "+old, timeout, func() (bool, string) {
		addr, err := e.tryWrite()
		if err != nil {
			return false, err.Error()
		}
		got = e.podByIP(addr)
		return got != "" && got != old, "written on " + addr + " (" + got + ")"
	})
	return got
}

func (e *env) podIP(name string) string {
	p, err := e.cs.CoreV1().Pods(e.ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	return p.Status.PodIP
}

// waitStreaming waits until primary's pg_stat_replication shows every other instance streaming,
// replica among them.
func (e *env) waitStreaming(primary, replica string, timeout time.Duration) {
	e.t.Helper()
	e.until(replica+" streaming from "+primary, timeout, func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		conn, err := e.connect(ctx, e.podIP(primary))
		if err != nil {
			return false, err.Error()
		}
		defer conn.Close(context.Background())
		rows, err := conn.Query(ctx, "SELECT application_name, state FROM pg_stat_replication")
		if err != nil {
			return false, err.Error()
		}
		streaming := map[string]bool{}
		var all []string
		for rows.Next() {
			var name, state string
			if err := rows.Scan(&name, &state); err != nil {
				return false, err.Error()
			}
			all = append(all, name+"="+state)
			if state == "streaming" {
				streaming[name] = true
			}
		}
		if err := rows.Err(); err != nil {
			return false, err.Error()
		}
		return streaming[replica] && len(streaming) == instances-1, "pg_stat_replication: " + strings.Join(all, ", ")
	})
}

func (e *env) countRows(primary string) int {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := e.connect(ctx, e.podIP(primary))
	if err != nil {
		e.t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM node_e2e").Scan(&n); err != nil {
		e.t.Fatal(err)
	}
	return n
}
