package plugin

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextensionsclient "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"

	"github.com/pgwarden/pgwarden/e2e/testbed"
)

// fakeInstance serves an instance manager's /status on loopback.
type fakeInstance struct {
	mu  sync.Mutex
	st  InstanceStatus
	srv *httptest.Server
}

func (f *fakeInstance) set(change func(*InstanceStatus)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	change(&f.st)
}

// loopbackFetcher reads /status from the fake instances (the pod proxy needs a kubelet, and the
// api test bed has none). A pod without a fake instance does not answer.
type loopbackFetcher struct {
	mu        sync.Mutex
	instances map[string]*fakeInstance
}

func (l *loopbackFetcher) add(t *testing.T, pod string, st InstanceStatus) *fakeInstance {
	f := &fakeInstance{st: st}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/status" {
			http.NotFound(w, r)
			return
		}
		f.mu.Lock()
		b, _ := json.Marshal(f.st)
		f.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(b)
	}))
	t.Cleanup(f.srv.Close)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.instances == nil {
		l.instances = map[string]*fakeInstance{}
	}
	l.instances[pod] = f
	return f
}

func (l *loopbackFetcher) FetchStatus(ctx context.Context, namespace, pod string) (*InstanceStatus, error) {
	l.mu.Lock()
	f := l.instances[pod]
	l.mu.Unlock()
	if f == nil {
		<-ctx.Done() // like an instance that does not answer
		return nil, ctx.Err()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, f.srv.URL+"/status", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	if _, err := b.ReadFrom(resp.Body); err != nil {
		return nil, err
	}
	return decodeStatus(b.Bytes())
}

type bed struct {
	api  *testbed.API
	kube kubernetes.Interface
	dyn  dynamic.Interface
	ns   string
}

func startBed(t *testing.T) *bed {
	t.Helper()
	api := testbed.StartAPI(t)
	b := &bed{api: api, ns: "db"}
	var err error
	if b.kube, err = kubernetes.NewForConfig(api.Config); err != nil {
		t.Fatal(err)
	}
	if b.dyn, err = dynamic.NewForConfig(api.Config); err != nil {
		t.Fatal(err)
	}
	installCRD(t, api)
	if _, err := b.kube.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: b.ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return b
}

func installCRD(t *testing.T, api *testbed.API) {
	t.Helper()
	root, err := testbed.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(root, "deploy", "crd", "pgwarden.io_postgresclusters.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var crd apiextensionsv1.CustomResourceDefinition
	if err := yaml.Unmarshal(raw, &crd); err != nil {
		t.Fatal(err)
	}
	cs, err := apiextensionsclient.NewForConfig(api.Config)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := cs.ApiextensionsV1().CustomResourceDefinitions().Create(ctx, &crd, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the CRD is established", func() bool {
		got, err := cs.ApiextensionsV1().CustomResourceDefinitions().Get(ctx, crd.Name, metav1.GetOptions{})
		if err != nil {
			return false
		}
		for _, c := range got.Status.Conditions {
			if c.Type == apiextensionsv1.Established && c.Status == apiextensionsv1.ConditionTrue {
				return true
			}
		}
		return false
	})
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// createCluster creates the PostgresCluster object (status set) in the bed's namespace.
func (b *bed) createCluster(t *testing.T, name, phase, primary string) {
	t.Helper()
	ctx := context.Background()
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "pgwarden.io/v1", "kind": "PostgresCluster",
		"metadata": map[string]any{"name": name, "namespace": b.ns},
		"spec":     map[string]any{"instances": int64(3), "storage": map[string]any{"size": "1Gi"}},
	}}
	got, err := b.dyn.Resource(ClusterResource).Namespace(b.ns).Create(ctx, u, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got.Object["status"] = map[string]any{"phase": phase, "currentPrimary": primary, "targetPrimary": primary}
	if _, err := b.dyn.Resource(ClusterResource).Namespace(b.ns).UpdateStatus(ctx, got, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// createPod creates an instance Pod of cluster, with the role label and annotation, and sets its
// status (no kubelet does it here).
func (b *bed) createPod(t *testing.T, cluster, name, role, ip string, ready bool) {
	t.Helper()
	ctx := context.Background()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: b.ns,
			Labels:      map[string]string{ClusterLabel: cluster, InstanceLabel: name, ObservedRoleLabel: role},
			Annotations: map[string]string{DesiredRoleAnnotation: role}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "postgres", Image: "pgwarden:test"}}},
	}
	created, err := b.kube.CoreV1().Pods(b.ns).Create(ctx, p, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cond := corev1.ConditionFalse
	if ready {
		cond = corev1.ConditionTrue
	}
	created.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip,
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: cond, LastTransitionTime: metav1.Now()}}}
	if _, err := b.kube.CoreV1().Pods(b.ns).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func (b *bed) createLease(t *testing.T, cluster, holder, ip string, renewed time.Time) {
	t.Helper()
	dur := int32(10)
	l := &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: cluster + "-primary", Namespace: b.ns, Annotations: map[string]string{HolderIPAnnotation: ip}},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: &holder, LeaseDurationSeconds: &dur,
			RenewTime: &metav1.MicroTime{Time: renewed}, AcquireTime: &metav1.MicroTime{Time: renewed}},
	}
	if _, err := b.kube.CoordinationV1().Leases(b.ns).Create(context.Background(), l, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func (b *bed) event(t *testing.T, kind, name, typ, reason, msg string, at time.Time) {
	t.Helper()
	ev := &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{GenerateName: name + ".", Namespace: b.ns},
		InvolvedObject: corev1.ObjectReference{Kind: kind, Name: name, Namespace: b.ns},
		Type:           typ, Reason: reason, Message: msg, Count: 1,
		FirstTimestamp: metav1.NewTime(at), LastTimestamp: metav1.NewTime(at),
		Source: corev1.EventSource{Component: "test"},
	}
	if _, err := b.kube.CoreV1().Events(b.ns).Create(context.Background(), ev, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// run runs the plugin's command line against the bed, through --kubeconfig and -n like a user,
// with /status served by fetcher.
func (b *bed) run(t *testing.T, fetcher StatusFetcher, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	factory := func(cf connFlags) (*Env, error) {
		env, err := newEnvFromKubeconfig(cf)
		if err != nil {
			return nil, err
		}
		env.Fetcher = fetcher
		return env, nil
	}
	args = append(args, "--kubeconfig", b.api.Kubeconfig, "-n", b.ns)
	code = run(context.Background(), args, &out, &errOut, factory)
	return code, out.String(), errOut.String()
}

func TestAgainstAPIServer(t *testing.T) {
	b := startBed(t)
	t.Run("status", func(t *testing.T) { testStatus(t, b) })
	t.Run("promote", func(t *testing.T) { testPromote(t, b) })
	t.Run("promote refused", func(t *testing.T) { testPromoteRefused(t, b) })
	t.Run("promote timeout", func(t *testing.T) { testPromoteTimeout(t, b) })
	t.Run("promote validation", func(t *testing.T) { testPromoteValidation(t, b) })
	t.Run("pod proxy", func(t *testing.T) { testPodProxy(t, b) })
	t.Run("fence", func(t *testing.T) { testFence(t, b) })
	t.Run("fence refused", func(t *testing.T) { testFenceRefused(t, b) })
	t.Run("fence timeout and validation", func(t *testing.T) { testFenceTimeoutAndValidation(t, b) })
	t.Run("fence synchronous", func(t *testing.T) { testFenceSynchronous(t, b) })
}

// hostIP is a non-loopback IPv4 address of this machine (the API server refuses to proxy to
// loopback), or "".
func hostIP() string {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return ""
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && n.IP.IsGlobalUnicast() {
			return n.IP.String()
		}
	}
	return ""
}

// testPodProxy reads /status through the real API server's pod proxy: the Pod's IP is an address
// of this machine where a fake instance listens (on a free port, not 8000, which other tests use).
func testPodProxy(t *testing.T, b *bed) {
	ip := hostIP()
	if ip == "" {
		t.Skip("no non-loopback IPv4 address to serve a pod IP on")
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Skipf("cannot listen on %s: %v", ip, err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/status" {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write([]byte(`{"role":"replica","timeline":4,"receivedLSN":"0/7000000","replayLSN":"0/6FFFFFF","ready":true,"upstream":"10.9.9.9","phase":"replica"}`))
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	port := ln.Addr().(*net.TCPAddr).Port

	b.createPod(t, "px", "px-1", "replica", ip, true)
	b.createPod(t, "px", "px-2", "replica", "192.0.2.254", true) // TEST-NET: nothing answers
	fetcher := PodProxyFetcher{Client: b.kube, Port: port, Timeout: 5 * time.Second}
	st, err := fetcher.FetchStatus(context.Background(), b.ns, "px-1")
	if err != nil {
		t.Fatalf("through the pod proxy: %v", err)
	}
	if st.Role != "replica" || st.Timeline != 4 || st.ReplayLSN != "0/6FFFFFF" || st.Upstream != "10.9.9.9" || !st.Ready {
		t.Errorf("status: %+v", st)
	}
	env := &Env{Kube: b.kube, Dynamic: b.dyn, Namespace: b.ns, StatusTimeout: time.Second,
		Fetcher: PodProxyFetcher{Client: b.kube, Port: port}}
	start := time.Now()
	r, err := env.Collect(context.Background(), "px", 0)
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 4*time.Second {
		t.Errorf("Collect took %s with a 1s status timeout", took)
	}
	if len(r.Instances) != 2 || !r.Instances[0].Reachable || r.Instances[0].Timeline != 4 || r.Instances[1].Reachable || r.Instances[1].Error == "" {
		t.Errorf("instances: %+v", r.Instances)
	}
	t.Logf("px-2: %s", r.Instances[1].Error)
}

func testStatus(t *testing.T, b *bed) {
	now := time.Now()
	b.createCluster(t, "st", "Healthy", "st-1")
	b.createPod(t, "st", "st-1", "primary", "10.0.0.1", true)
	b.createPod(t, "st", "st-2", "replica", "10.0.0.2", true)
	b.createPod(t, "st", "st-3", "replica", "10.0.0.3", false)
	b.createPod(t, "other", "other-1", "primary", "10.0.1.1", true) // another cluster: not shown
	b.createLease(t, "st", "st-1", "10.0.0.1", now.Add(-3*time.Second))
	b.event(t, "Pod", "st-2", "Normal", "Started", "old event", now.Add(-time.Hour))
	b.event(t, "PostgresCluster", "st", "Normal", "SwitchoverCompleted", "st-1 is primary", now.Add(-time.Minute))
	b.event(t, "Pod", "st-3", "Warning", "Unhealthy", "readiness probe failed", now.Add(-10*time.Second))
	b.event(t, "Pod", "other-1", "Normal", "Started", "not this cluster", now)

	f := &loopbackFetcher{}
	f.add(t, "st-1", InstanceStatus{Role: "primary", Timeline: 3, CurrentLSN: "0/5000100", Ready: true, LeaseHolder: "st-1", Phase: "primary", Mode: "kubernetes"})
	f.add(t, "st-2", InstanceStatus{Role: "replica", Timeline: 3, ReceivedLSN: "0/5000100", ReplayLSN: "0/5000000", Ready: true, Phase: "replica", Upstream: "10.0.0.1"})
	// st-3 does not answer.

	start := time.Now()
	code, out, errOut := b.run(t, f, "status", "st", "-o", "json", "--events", "2", "--status-timeout", "500ms")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("status took %s with one silent instance and a 500ms timeout", took)
	}
	var r Report
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if r.Cluster != "st" || r.Namespace != "db" || r.Phase != "Healthy" || r.CurrentPrimary != "st-1" {
		t.Errorf("cluster: %+v", r)
	}
	if len(r.Instances) != 3 {
		t.Fatalf("instances: %+v", r.Instances)
	}
	i1, i2, i3 := r.Instances[0], r.Instances[1], r.Instances[2]
	if i1.Pod != "st-1" || i1.Role != "primary" || i1.DesiredRole != "primary" || !i1.Ready || !i1.Reachable || i1.Timeline != 3 || i1.CurrentLSN != "0/5000100" {
		t.Errorf("st-1: %+v", i1)
	}
	if i2.Pod != "st-2" || i2.Role != "replica" || !i2.Reachable || i2.LagBytes == nil || *i2.LagBytes != 0x100 || i2.Upstream != "10.0.0.1" {
		t.Errorf("st-2: %+v (lag %v)", i2, deref(i2.LagBytes))
	}
	if i3.Pod != "st-3" || i3.Ready || i3.Reachable || i3.Error == "" || i3.LagBytes != nil {
		t.Errorf("st-3 should be unknown: %+v", i3)
	}
	if r.Lease == nil || r.Lease.Holder != "st-1" || r.Lease.HolderIP != "10.0.0.1" || r.Lease.AgeSeconds == nil ||
		*r.Lease.AgeSeconds < 2.5 || *r.Lease.AgeSeconds > 30 {
		t.Errorf("lease: %+v", r.Lease)
	}
	if len(r.Events) != 2 || r.Events[0].Reason != "SwitchoverCompleted" || r.Events[1].Reason != "Unhealthy" || r.Events[1].Object != "pod/st-3" {
		t.Errorf("events (the 2 latest of this cluster, oldest first): %+v", r.Events)
	}

	// The table shows the same, the silent instance as unknown.
	code, out, errOut = b.run(t, f, "status", "st", "--status-timeout", "300ms")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	t.Logf("\n%s", out)
	for _, want := range []string{"Cluster st (namespace db): Healthy", "holder st-1 (10.0.0.1), renewed", "256 B", "unknown", "readiness probe failed"} {
		if !strings.Contains(out, want) {
			t.Errorf("table misses %q", want)
		}
	}
	if strings.Contains(out, "other-1") {
		t.Error("table shows another cluster's pod")
	}

	// YAML, and a cluster that does not exist.
	if code, out, _ = b.run(t, f, "status", "st", "-o", "yaml", "--status-timeout", "300ms"); code != 0 || !strings.Contains(out, "cluster: st\n") {
		t.Errorf("yaml: exit %d\n%s", code, out)
	}
	if code, _, errOut = b.run(t, f, "status", "nope"); code == 0 || !strings.Contains(errOut, `cluster "nope" not found`) {
		t.Errorf("missing cluster: exit %d, %s", code, errOut)
	}
}

// playInstances plays the instance managers of a switchover from old to target: when the target's
// annotation says primary, the target takes the Lease, then reports primary and ready (and labels
// itself), then the old primary restarts as a replica and streams from the target.
func playInstances(t *testing.T, b *bed, cluster, old, target, targetIP string, fOld, fTarget *fakeInstance) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			p, err := b.kube.CoreV1().Pods(b.ns).Get(ctx, target, metav1.GetOptions{})
			if err != nil || p.Annotations[DesiredRoleAnnotation] != "primary" {
				continue
			}
			// The operator's part: the old primary is asked to step down.
			patchAnnotation(ctx, b, old, "replica")
			fOld.set(func(s *InstanceStatus) { s.Role, s.Ready, s.Phase = "primary", false, "demoting" })
			time.Sleep(150 * time.Millisecond)
			l, err := b.kube.CoordinationV1().Leases(b.ns).Get(ctx, cluster+"-primary", metav1.GetOptions{})
			if err != nil {
				t.Errorf("player: %v", err)
				return
			}
			l.Spec.HolderIdentity = &target
			l.Spec.RenewTime = &metav1.MicroTime{Time: time.Now()}
			l.Annotations[HolderIPAnnotation] = targetIP
			if _, err := b.kube.CoordinationV1().Leases(b.ns).Update(ctx, l, metav1.UpdateOptions{}); err != nil {
				t.Errorf("player: %v", err)
				return
			}
			fOld.set(func(s *InstanceStatus) { s.Role, s.Phase, s.CurrentLSN, s.PostmasterPID = "", "rejoining", "", 0 })
			time.Sleep(150 * time.Millisecond)
			fTarget.set(func(s *InstanceStatus) {
				s.Role, s.Ready, s.Phase, s.Timeline, s.CurrentLSN, s.ReceivedLSN, s.ReplayLSN, s.Upstream = "primary", true, "primary", s.Timeline+1, "0/6000000", "", "", ""
			})
			time.Sleep(300 * time.Millisecond)
			fOld.set(func(s *InstanceStatus) {
				s.Role, s.Phase, s.Ready, s.ReceivedLSN, s.ReplayLSN, s.Upstream = "replica", "replica", true, "0/6000000", "0/6000000", targetIP
			})
			return
		}
	}()
	return func() { cancel(); <-done }
}

func patchAnnotation(ctx context.Context, b *bed, pod, role string) {
	patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:%q}}}`, DesiredRoleAnnotation, role)
	_, _ = b.kube.CoreV1().Pods(b.ns).Patch(ctx, pod, "application/merge-patch+json", []byte(patch), metav1.PatchOptions{})
}

func setupSwitchover(t *testing.T, b *bed, c, net string) (f *loopbackFetcher, stop func()) {
	b.createCluster(t, c, "Healthy", c+"-1")
	b.createPod(t, c, c+"-1", "primary", net+".1", true)
	b.createPod(t, c, c+"-2", "replica", net+".2", true)
	b.createLease(t, c, c+"-1", net+".1", time.Now())
	f = &loopbackFetcher{}
	fOld := f.add(t, c+"-1", InstanceStatus{Role: "primary", Timeline: 1, CurrentLSN: "0/5000000", Ready: true, Phase: "primary"})
	fNew := f.add(t, c+"-2", InstanceStatus{Role: "replica", Timeline: 1, ReceivedLSN: "0/5000000", ReplayLSN: "0/5000000", Ready: true, Phase: "replica", Upstream: net + ".1"})
	return f, playInstances(t, b, c, c+"-1", c+"-2", net+".2", fOld, fNew)
}

// endpointSlice writes the -rw Service's EndpointSlice as the endpoint-slice controller would:
// one ready endpoint, the pod.
func endpointSlice(t *testing.T, b *bed, cluster, pod, ip string) {
	t.Helper()
	ctx := context.Background()
	name := cluster + "-rw-abcde"
	sl := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: name, Namespace: b.ns, Labels: map[string]string{discoveryv1.LabelServiceName: cluster + "-rw"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{{Addresses: []string{ip}, Conditions: discoveryv1.EndpointConditions{Ready: ptr(true)},
			TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: b.ns, Name: pod}}},
	}
	old, err := b.kube.DiscoveryV1().EndpointSlices(b.ns).Get(ctx, name, metav1.GetOptions{})
	if err == nil {
		sl.ResourceVersion = old.ResourceVersion
		_, err = b.kube.DiscoveryV1().EndpointSlices(b.ns).Update(ctx, sl, metav1.UpdateOptions{})
	} else {
		_, err = b.kube.DiscoveryV1().EndpointSlices(b.ns).Create(ctx, sl, metav1.CreateOptions{})
	}
	if err != nil {
		t.Error(err)
	}
}

func testPromote(t *testing.T, b *bed) {
	f, stop := setupSwitchover(t, b, "pr", "10.0.2")
	defer stop()
	// The -rw Service routes to the old primary, and moves to the new one only 700 ms after the
	// new primary took the Lease: promote must wait for it.
	endpointSlice(t, b, "pr", "pr-1", "10.0.2.1")
	moved := make(chan time.Time, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		for ctx.Err() == nil {
			if l, err := b.kube.CoordinationV1().Leases(b.ns).Get(ctx, "pr-primary", metav1.GetOptions{}); err == nil &&
				l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity == "pr-2" {
				time.Sleep(700 * time.Millisecond) // the endpoint-slice controller and the Service lagging
				endpointSlice(t, b, "pr", "pr-2", "10.0.2.2")
				moved <- time.Now()
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	code, out, errOut := b.run(t, f, "promote", "pr", "pr-2", "-o", "json", "--timeout", "20s")
	if code != 0 {
		t.Fatalf("exit %d: %s\n%s", code, errOut, out)
	}
	var res PromoteResult
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	t.Logf("%+v", out)
	if !res.Completed || !res.Annotated || res.NewPrimary != "pr-2" || res.OldPrimary != "pr-1" || res.OldPrimaryUpstream != "10.0.2.2" || res.Error != "" {
		t.Errorf("result: %+v", res)
	}
	if res.LeaseAcquiredSeconds == nil || res.AcceptsWritesSeconds == nil || res.OldPrimaryStreamingSeconds == nil {
		t.Fatalf("milestones missing: %+v", res)
	}
	if res.RWRoutesSeconds == nil {
		t.Fatalf("promote completed without the -rw Service routing to the new primary: %+v", res)
	}
	select {
	case at := <-moved:
		if done := res.StartedAt.Add(time.Duration(*res.RWRoutesSeconds * float64(time.Second))); done.Before(at) {
			t.Errorf("rwRoutesSeconds %.3f is before the EndpointSlice moved", *res.RWRoutesSeconds)
		}
	default:
		t.Errorf("promote completed before the EndpointSlice moved to the new primary")
	}
	l, a, s := *res.LeaseAcquiredSeconds, *res.AcceptsWritesSeconds, *res.OldPrimaryStreamingSeconds
	// The player waits 150 ms, 150 ms, 300 ms between its steps; the plugin polls every 100 ms, so
	// each milestone is seen up to ~100 ms late.
	if !(l >= 0.1 && l <= a && a <= s && s-a >= 0.15 && s < 5) {
		t.Errorf("durations out of order or off: lease %.3f, writes %.3f, streaming %.3f", l, a, s)
	}
	p, err := b.kube.CoreV1().Pods(b.ns).Get(context.Background(), "pr-2", metav1.GetOptions{})
	if err != nil || p.Annotations[DesiredRoleAnnotation] != "primary" {
		t.Errorf("the annotation was not written: %v %v", p.Annotations, err)
	}

	// The default output: one progress line per milestone, in order.
	f, stop2 := setupSwitchover(t, b, "pt", "10.0.6")
	defer stop2()
	code, out, errOut = b.run(t, f, "promote", "pt", "pt-2")
	if code != 0 {
		t.Fatalf("exit %d: %s\n%s", code, errOut, out)
	}
	t.Logf("\n%s", out)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	want := []string{"annotated pt-2 pgwarden.io/role=primary (primary now: pt-1)", "Lease pt-primary held by pt-2",
		"pt-2 accepts writes (role primary, ready, timeline 2)", "pt-1 streams again (role replica, upstream 10.0.6.2)", "switchover to pt-2 completed in "}
	if len(lines) != len(want) {
		t.Fatalf("%d lines, want %d", len(lines), len(want))
	}
	for i := range want {
		if !strings.Contains(lines[i], want[i]) {
			t.Errorf("line %d %q, want %q", i, lines[i], want[i])
		}
	}
}

func testPromoteRefused(t *testing.T, b *bed) {
	b.createCluster(t, "rf", "Healthy", "rf-1")
	b.createPod(t, "rf", "rf-1", "primary", "10.0.3.1", true)
	b.createPod(t, "rf", "rf-2", "replica", "10.0.3.2", false)
	b.createLease(t, "rf", "rf-1", "10.0.3.1", time.Now())
	f := &loopbackFetcher{}
	f.add(t, "rf-1", InstanceStatus{Role: "primary", Ready: true})
	f.add(t, "rf-2", InstanceStatus{Role: "replica"})
	// The operator's part: it refuses (rf-2 is not ready) and writes the annotation back.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		for ctx.Err() == nil {
			p, err := b.kube.CoreV1().Pods(b.ns).Get(ctx, "rf-2", metav1.GetOptions{})
			if err == nil && p.Annotations[DesiredRoleAnnotation] == "primary" {
				b.event(t, "Pod", "rf-2", "Warning", "SwitchoverRequestRejected", "reverting pgwarden.io/role=primary on rf-2: not ready", time.Now())
				patchAnnotation(ctx, b, "rf-2", "replica")
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	code, _, errOut := b.run(t, f, "promote", "rf", "rf-2", "--timeout", "20s")
	if code == 0 || !strings.Contains(errOut, "refused") || !strings.Contains(errOut, "rf-2: not ready") {
		t.Errorf("exit %d, stderr %q; want a refusal with the operator's reason", code, errOut)
	}
}

func testPromoteTimeout(t *testing.T, b *bed) {
	b.createCluster(t, "to", "Healthy", "to-1")
	b.createPod(t, "to", "to-1", "primary", "10.0.4.1", true)
	b.createPod(t, "to", "to-2", "replica", "10.0.4.2", true)
	b.createLease(t, "to", "to-1", "10.0.4.1", time.Now())
	f := &loopbackFetcher{}
	f.add(t, "to-1", InstanceStatus{Role: "primary", Ready: true})
	f.add(t, "to-2", InstanceStatus{Role: "replica", Upstream: "10.0.4.1"})
	start := time.Now()
	code, out, errOut := b.run(t, f, "promote", "to", "to-2", "--timeout", "1s")
	took := time.Since(start)
	if code == 0 || !strings.Contains(errOut, "timed out after 1s") || !strings.Contains(errOut, "the Lease was not acquired by to-2") ||
		!strings.Contains(errOut, "to-1 (the old primary) does not report role replica") {
		t.Errorf("exit %d, stderr %q", code, errOut)
	}
	if !strings.Contains(out, "annotated to-2 pgwarden.io/role=primary (primary now: to-1)") {
		t.Errorf("progress: %q", out)
	}
	if took < time.Second || took > 5*time.Second {
		t.Errorf("a 1s timeout took %s", took)
	}
}

func testPromoteValidation(t *testing.T, b *bed) {
	b.createCluster(t, "va", "Healthy", "va-1")
	b.createPod(t, "va", "va-1", "primary", "10.0.5.1", true)
	b.createPod(t, "vb", "vb-1", "replica", "10.0.5.9", true)
	f := &loopbackFetcher{}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"promote", "va", "va-1"}, "va-1 is already the primary of va"},
		{[]string{"promote", "va", "vb-1"}, "vb-1 is not an instance of cluster va (it belongs to vb)"},
		{[]string{"promote", "va", "va-9"}, "not found"},
		{[]string{"promote", "va"}, "accepts 2 arg(s)"},
		{[]string{"status", "va", "-o", "wide"}, `unknown output format "wide"`},
	} {
		code, _, errOut := b.run(t, f, c.args...)
		if code == 0 || !strings.Contains(errOut, c.want) {
			t.Errorf("%v: exit %d, stderr %q, want %q", c.args, code, errOut, c.want)
		}
	}
	p, _ := b.kube.CoreV1().Pods(b.ns).Get(context.Background(), "vb-1", metav1.GetOptions{})
	if p.Annotations[DesiredRoleAnnotation] != "replica" {
		t.Errorf("a refused promote wrote the annotation: %v", p.Annotations)
	}
}
