package operator

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextensionsclient "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	pgv1 "github.com/pgwarden/pgwarden/api/v1"
	"github.com/pgwarden/pgwarden/e2e/testbed"
	"github.com/pgwarden/pgwarden/pkg/operator"
	"github.com/pgwarden/pgwarden/pkg/roles"
)

// waitTimeout bounds every wait for the operator; it reacts within a second normally.
const waitTimeout = 20 * time.Second

// startAPI starts an API server with the CRD installed and returns an admin client.
func startAPI(t *testing.T) (*testbed.API, client.Client) {
	t.Helper()
	api := testbed.StartAPI(t)
	installCRD(t, api)
	c, err := client.New(api.Config, client.Options{Scheme: operator.NewScheme()})
	if err != nil {
		t.Fatal(err)
	}
	return api, c
}

func installCRD(t *testing.T, api *testbed.API) {
	t.Helper()
	root, err := testbed.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "deploy", "crd", "pgwarden.io_postgresclusters.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var crd apiextensionsv1.CustomResourceDefinition
	if err := yaml.UnmarshalStrict(b, &crd); err != nil {
		t.Fatalf("cannot parse the CRD: %v", err)
	}
	cs, err := apiextensionsclient.NewForConfig(api.Config)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := cs.ApiextensionsV1().CustomResourceDefinitions().Create(ctx, &crd, metav1.CreateOptions{}); err != nil {
		t.Fatalf("the API server rejects the CRD: %v", err)
	}
	eventually(t, "CRD established", func() (bool, string) {
		got, err := cs.ApiextensionsV1().CustomResourceDefinitions().Get(ctx, crd.Name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		for _, c := range got.Status.Conditions {
			if c.Type == apiextensionsv1.Established && c.Status == apiextensionsv1.ConditionTrue {
				return true, ""
			}
		}
		return false, fmt.Sprintf("%+v", got.Status.Conditions)
	})
}

// eventually polls cond until it holds or waitTimeout passes.
func eventually(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	last := ""
	for {
		ok, msg := cond()
		if ok {
			return
		}
		if msg != "" {
			last = msg
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s: %s", what, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// instances serves fake /status answers, one loopback server per instance.
type instances struct {
	mu      sync.Mutex
	status  map[string]*operator.InstanceStatus
	servers map[string]*httptest.Server
	t       *testing.T
}

func newInstances(t *testing.T) *instances {
	return &instances{status: map[string]*operator.InstanceStatus{}, servers: map[string]*httptest.Server{}, t: t}
}

// set makes pod answer st (nil: stop answering, like a dead instance).
func (f *instances) set(pod string, st *operator.InstanceStatus) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.status[pod] = st
	if f.servers[pod] == nil {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			f.mu.Lock()
			s := f.status[pod]
			f.mu.Unlock()
			if s == nil || r.URL.Path != "/status" {
				http.Error(w, "down", http.StatusServiceUnavailable)
				return
			}
			_ = json.NewEncoder(w).Encode(s)
		}))
		f.t.Cleanup(srv.Close)
		f.servers[pod] = srv
	}
}

func (f *instances) addressFor(pod *corev1.Pod) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	srv := f.servers[pod.Name]
	if srv == nil {
		return "", fmt.Errorf("no instance %s", pod.Name)
	}
	return strings.TrimPrefix(srv.URL, "http://"), nil
}

// startOperator runs the operator's manager in process until the returned stop is called
// (or the test ends).
func startOperator(t *testing.T, api *testbed.API, inst *instances, extra func(*operator.Options)) (stop func()) {
	t.Helper()
	o := operator.DefaultOptions()
	o.RestConfig = api.Config
	o.Addr = "0"
	o.DefaultImage = "pgwarden.local/pgwarden:testbed"
	o.StatusTimeout = 500 * time.Millisecond
	o.StatusClient = &operator.HTTPStatusClient{AddressFor: inst.addressFor, Client: &http.Client{}}
	if extra != nil {
		extra(&o)
	}
	logFile, err := os.OpenFile(filepath.Join(api.Dir, "operator.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	log := logr.FromSlogHandler(slog.NewJSONHandler(logFile, &slog.HandlerOptions{Level: slog.LevelDebug}))
	mgr, err := operator.NewManager(o, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("operator: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Errorf("operator did not stop")
			}
			logFile.Close()
		})
	}
	t.Cleanup(stop)
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(logFile.Name())
			lines := strings.Split(strings.TrimSpace(string(b)), "\n")
			t.Logf("operator log (last 150 lines):\n%s", strings.Join(lines[max(0, len(lines)-150):], "\n"))
		}
	})
	return stop
}

func createNamespace(t *testing.T, c client.Client, ns string) {
	t.Helper()
	if err := c.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}

func newCluster(ns, name string, instances int32) *pgv1.PostgresCluster {
	return &pgv1.PostgresCluster{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: pgv1.PostgresClusterSpec{
			Instances: instances,
			Storage:   pgv1.StorageSpec{Size: resource.MustParse("1Gi")},
		},
	}
}

func getCluster(t *testing.T, c client.Client, ns, name string) *pgv1.PostgresCluster {
	t.Helper()
	pc := &pgv1.PostgresCluster{}
	if err := c.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: name}, pc); err != nil {
		t.Fatal(err)
	}
	return pc
}

func getPod(c client.Client, ns, name string) (*corev1.Pod, error) {
	p := &corev1.Pod{}
	err := c.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: name}, p)
	return p, err
}

// waitPod waits for pod ns/name with desired role annotation role.
func waitPod(t *testing.T, c client.Client, ns, name string, role roles.Role) *corev1.Pod {
	t.Helper()
	var p *corev1.Pod
	eventually(t, fmt.Sprintf("pod %s annotated %s", name, role), func() (bool, string) {
		var err error
		p, err = getPod(c, ns, name)
		if err != nil {
			return false, err.Error()
		}
		got := p.Annotations[roles.DesiredRoleAnnotation]
		return got == string(role), "annotation is " + got
	})
	return p
}

// waitPhase waits for the cluster's phase and returns the cluster.
func waitPhase(t *testing.T, c client.Client, ns, name string, phase pgv1.Phase, extra func(*pgv1.PostgresCluster) (bool, string)) *pgv1.PostgresCluster {
	t.Helper()
	var pc *pgv1.PostgresCluster
	eventually(t, fmt.Sprintf("cluster %s phase %s", name, phase), func() (bool, string) {
		pc = getCluster(t, c, ns, name)
		if pc.Status.Phase != phase {
			return false, fmt.Sprintf("phase %s (%s)", pc.Status.Phase, pc.Status.PhaseReason)
		}
		if extra != nil {
			return extra(pc)
		}
		return true, ""
	})
	return pc
}

var podIPs sync.Map // pod name -> fake IP, stable per name

// kubeletRun plays the kubelet and the instance: the pod runs, is ready with the given
// observed role label, and (for a replica) answers /status with received LSN lsn.
func kubeletRun(t *testing.T, c client.Client, inst *instances, ns, name string, role roles.Role, lsn string) {
	t.Helper()
	ctx := context.Background()
	p, err := getPod(c, ns, name)
	if err != nil {
		t.Fatalf("pod %s: %v", name, err)
	}
	patch := client.MergeFrom(p.DeepCopy())
	p.Labels[roles.ObservedRoleLabel] = string(role)
	if err := c.Patch(ctx, p, patch, client.FieldOwner("pgwarden-instance")); err != nil {
		t.Fatal(err)
	}
	now := metav1.Now()
	p.Status = corev1.PodStatus{
		Phase: corev1.PodRunning,
		PodIP: "10.1.0." + strings.TrimPrefix(name[strings.LastIndexByte(name, '-'):], "-"),
		Conditions: []corev1.PodCondition{
			{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
		},
		ContainerStatuses: []corev1.ContainerStatus{{Name: "postgres", Ready: true, Image: "img", ImageID: "img",
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}}}},
	}
	if err := c.Status().Update(ctx, p); err != nil {
		t.Fatal(err)
	}
	st := &operator.InstanceStatus{Role: string(role), Timeline: 1, Ready: true, PostmasterPID: 42}
	if role == roles.RolePrimary {
		st.CurrentLSN = lsn
	} else {
		st.ReceivedLSN, st.ReplayLSN = lsn, lsn
	}
	inst.set(name, st)
}

// kubeletTerminate reports the pod's container terminated (and the pod not ready).
func kubeletTerminate(t *testing.T, c client.Client, inst *instances, ns, name string) {
	t.Helper()
	p, err := getPod(c, ns, name)
	if err != nil {
		t.Fatal(err)
	}
	now := metav1.Now()
	for i := range p.Status.Conditions {
		if p.Status.Conditions[i].Type == corev1.PodReady {
			p.Status.Conditions[i].Status, p.Status.Conditions[i].LastTransitionTime = corev1.ConditionFalse, now
		}
	}
	p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "postgres", Image: "img", ImageID: "img",
		State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 137, Reason: "Error", FinishedAt: now}}}}
	if err := c.Status().Update(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	inst.set(name, nil)
}

// kubeletNotReady reports the pod not ready (container still running).
func kubeletNotReady(t *testing.T, c client.Client, ns, name string) {
	t.Helper()
	p, err := getPod(c, ns, name)
	if err != nil {
		t.Fatal(err)
	}
	for i := range p.Status.Conditions {
		if p.Status.Conditions[i].Type == corev1.PodReady {
			p.Status.Conditions[i].Status, p.Status.Conditions[i].LastTransitionTime = corev1.ConditionFalse, metav1.Now()
		}
	}
	if err := c.Status().Update(context.Background(), p); err != nil {
		t.Fatal(err)
	}
}

// renewers are the background renewals started by holdLease, by namespace/cluster.
var renewers sync.Map

type renewer struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// stopRenewing stops the renewal of the cluster's Lease started by holdLease, as when its holder
// dies or is cut off, and returns once it has stopped.
func stopRenewing(ns, cluster string) {
	if v, ok := renewers.LoadAndDelete(ns + "/" + cluster); ok {
		r := v.(*renewer)
		r.cancel()
		<-r.done
	}
}

// holdLease makes holder the primary Lease's holder and keeps renewing it every 2 s, as the
// instance would, until stopRenewing, the next holdLease, or someone else takes or breaks the
// Lease (or the API server goes away at the end of the test).
func holdLease(t *testing.T, c client.Client, ns, cluster, holder string) {
	t.Helper()
	stopRenewing(ns, cluster)
	setLease(t, c, ns, cluster, holder)
	ctx, cancel := context.WithCancel(context.Background())
	r := &renewer{cancel: cancel, done: make(chan struct{})}
	renewers.Store(ns+"/"+cluster, r)
	go func() {
		defer close(r.done)
		tick := time.NewTicker(2 * time.Second)
		defer tick.Stop()
		renewed := time.Now()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			// Like a real holder: errors (a loaded API server) are retried until the renew
			// deadline, then it gives up (a real one fences). Ending at the first error let
			// the Lease lapse, and the operator fail over, in the middle of a test.
			if time.Since(renewed) > roles.DefaultRenewDeadline {
				return
			}
			l := &coordinationv1.Lease{}
			if err := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: roles.LeaseName(cluster)}, l); err != nil {
				continue
			}
			if l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity != holder {
				return // taken or broken: a real holder would fence itself now
			}
			now := metav1.NewMicroTime(time.Now())
			l.Spec.RenewTime = &now
			if c.Update(ctx, l) == nil { // a conflict is retried at the next tick
				renewed = time.Now()
			}
		}
	}()
}

// setLease writes holder into the primary Lease once, with the renew time now.
func setLease(t *testing.T, c client.Client, ns, cluster, holder string) {
	t.Helper()
	ctx := context.Background()
	now := metav1.NewMicroTime(time.Now())
	l := &coordinationv1.Lease{}
	err := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: roles.LeaseName(cluster)}, l)
	if apierrors.IsNotFound(err) {
		l = &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: roles.LeaseName(cluster), Namespace: ns},
			Spec: coordinationv1.LeaseSpec{HolderIdentity: ptr.To(holder), LeaseDurationSeconds: ptr.To[int32](15),
				AcquireTime: &now, RenewTime: &now}}
		if err := c.Create(ctx, l); err != nil {
			t.Fatal(err)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	l.Spec.HolderIdentity, l.Spec.RenewTime, l.Spec.AcquireTime = ptr.To(holder), &now, &now
	if err := c.Update(ctx, l); err != nil {
		t.Fatal(err)
	}
}

func leaseHolder(t *testing.T, c client.Client, ns, cluster string) string {
	t.Helper()
	l := &coordinationv1.Lease{}
	if err := c.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: roles.LeaseName(cluster)}, l); err != nil {
		t.Fatal(err)
	}
	if l.Spec.HolderIdentity == nil {
		return ""
	}
	return *l.Spec.HolderIdentity
}

// waitEvent waits for an Event with reason on the cluster whose message contains substr.
func waitEvent(t *testing.T, c client.Client, ns, reason, substr string) {
	t.Helper()
	eventually(t, "event "+reason, func() (bool, string) {
		var el corev1.EventList
		if err := c.List(context.Background(), &el, client.InNamespace(ns)); err != nil {
			return false, err.Error()
		}
		var seen []string
		for _, e := range el.Items {
			if e.Reason == reason {
				if strings.Contains(e.Message, substr) {
					return true, ""
				}
				seen = append(seen, e.Message)
			}
		}
		return false, fmt.Sprintf("%s events: %q", reason, seen)
	})
}
