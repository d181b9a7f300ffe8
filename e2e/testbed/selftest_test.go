//go:build testbed

// The node level's self-test: run with `make testbed-selftest`, which brings the node up if
// needed (and down again afterwards), or `go test -tags testbed -run Selftest ./e2e/testbed/`
// against a node that is already up.
package testbed_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"

	"github.com/pgwarden/pgwarden/e2e/testbed"
	"github.com/pgwarden/pgwarden/e2e/testbed/internal/imagespec"
)

const dnsServiceIP = "10.96.0.10"

type selftest struct {
	t     *testing.T
	cs    kubernetes.Interface
	node  *testbed.Node
	ns    string
	image string
}

func newSelftest(t *testing.T) *selftest {
	node := testbed.ConnectNode(t)
	spec, err := imagespec.Load("images.conf")
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	s := &selftest{t: t, cs: node.Clientset(t), node: node, ns: "selftest-" + hex.EncodeToString(b), image: spec["APP_IMAGE"]}
	ctx := context.Background()
	if _, err := s.cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: s.ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		_ = s.cs.CoreV1().Namespaces().Delete(ctx, s.ns, metav1.DeleteOptions{})
		s.until(ctx, "namespace "+s.ns+" to be gone", func() (bool, error) {
			_, err := s.cs.CoreV1().Namespaces().Get(ctx, s.ns, metav1.GetOptions{})
			return apierrors.IsNotFound(err), nil
		})
		_ = os.RemoveAll(filepath.Join(s.node.Dir, "selftest", s.ns))
	})
	// Pods need the namespace's default ServiceAccount, which the controller-manager makes.
	s.until(ctx, "ServiceAccount default", func() (bool, error) {
		_, err := s.cs.CoreV1().ServiceAccounts(s.ns).Get(ctx, "default", metav1.GetOptions{})
		return err == nil, nil
	})
	return s
}

// until polls cond every 100 ms until it is true, fails the test on error or after ctx's deadline
// (one minute if ctx has none).
func (s *selftest) until(ctx context.Context, what string, cond func() (bool, error)) {
	s.t.Helper()
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Minute)
		defer cancel()
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		ok, err := cond()
		if err != nil {
			s.t.Fatalf("waiting for %s: %v", what, err)
		}
		if ok {
			return
		}
		select {
		case <-ctx.Done():
			s.t.Fatalf("timed out waiting for %s", what)
		case <-tick.C:
		}
	}
}

func (s *selftest) pod(name string, args []string, mutate func(*corev1.Pod)) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: s.ns, Labels: map[string]string{"app": name}},
		Spec: corev1.PodSpec{
			Containers: []corev1.Container{{
				Name: "app", Image: s.image, ImagePullPolicy: corev1.PullNever, Args: args,
			}},
		},
	}
	if mutate != nil {
		mutate(p)
	}
	created, err := s.cs.CoreV1().Pods(s.ns).Create(context.Background(), p, metav1.CreateOptions{})
	if err != nil {
		s.t.Fatalf("create pod %s: %v", name, err)
	}
	return created
}

func (s *selftest) waitPod(name, what string, cond func(*corev1.Pod) bool) *corev1.Pod {
	s.t.Helper()
	var last *corev1.Pod
	ctx := context.Background()
	start := time.Now()
	s.until(ctx, "pod "+name+" "+what, func() (bool, error) {
		p, err := s.cs.CoreV1().Pods(s.ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		last = p
		if p.Status.Phase == corev1.PodFailed && what != "failed" {
			return false, fmt.Errorf("pod failed: %s", s.podLog(name))
		}
		return cond(p), nil
	})
	s.t.Logf("pod %s %s after %s", name, what, time.Since(start).Round(time.Millisecond))
	return last
}

func (s *selftest) podLog(name string) string {
	b, err := s.cs.CoreV1().Pods(s.ns).GetLogs(name, &corev1.PodLogOptions{}).DoRaw(context.Background())
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	return string(b)
}

func ready(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func succeeded(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodSucceeded }

// TestSelftestServiceReadiness: a pod with an HTTP readiness probe becomes Ready and is reached
// through its Service from the host (ClusterIP via kube-proxy, and the CoreDNS name) and from
// another pod (cluster DNS); pods reach the API server through the kubernetes Service.
func TestSelftestServiceReadiness(t *testing.T) {
	s := newSelftest(t)
	ctx := context.Background()
	s.pod("web", []string{"serve", "-addr", ":8080"}, func(p *corev1.Pod) {
		p.Spec.Containers[0].ReadinessProbe = &corev1.Probe{
			ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/ready", Port: intstr.FromInt32(8080)}},
			PeriodSeconds: 1,
		}
	})
	svc, err := s.cs.CoreV1().Services(s.ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: s.ns},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "web"},
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod := s.waitPod("web", "Ready", ready)
	if pod.Status.PodIP == "" || !strings.HasPrefix(pod.Status.PodIP, "10.244.0.") {
		t.Errorf("pod IP %q is not on the test bed's bridge", pod.Status.PodIP)
	}

	client := &http.Client{Timeout: 2 * time.Second}
	fetch := func(url string) (string, error) {
		resp, err := client.Get(url)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return "", fmt.Errorf("HTTP %d", resp.StatusCode)
		}
		return string(b), nil
	}
	want := "hello from web"
	viaClusterIP := "http://" + net.JoinHostPort(svc.Spec.ClusterIP, "80") + "/"
	s.until(ctx, "GET "+viaClusterIP+" from the host", func() (bool, error) {
		body, err := fetch(viaClusterIP)
		return err == nil && strings.Contains(body, want), nil
	})

	// CoreDNS, through its own Service address, resolves the Service's name to its ClusterIP.
	resolver := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, net.JoinHostPort(dnsServiceIP, "53"))
	}}
	name := "web." + s.ns + ".svc.cluster.local"
	var addrs []string
	s.until(ctx, "CoreDNS to resolve "+name, func() (bool, error) {
		lctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		addrs, err = resolver.LookupHost(lctx, name)
		return err == nil && len(addrs) > 0, nil
	})
	if addrs[0] != svc.Spec.ClusterIP {
		t.Errorf("%s resolved to %v, want %s", name, addrs, svc.Spec.ClusterIP)
	}

	// From a pod: cluster DNS (search path), the Service, and the API server with the pod's token.
	s.pod("client", []string{"get", "-timeout", "60s", "http://web/"}, func(p *corev1.Pod) { p.Spec.RestartPolicy = corev1.RestartPolicyNever })
	s.pod("apiclient", []string{"get", "-sa", "-timeout", "60s", "https://kubernetes.default.svc/version"}, func(p *corev1.Pod) { p.Spec.RestartPolicy = corev1.RestartPolicyNever })
	s.waitPod("client", "Succeeded", succeeded)
	if out := s.podLog("client"); !strings.Contains(out, want) {
		t.Errorf("pod client got %q, want %q", out, want)
	}
	s.waitPod("apiclient", "Succeeded", succeeded)
	if out := s.podLog("apiclient"); !strings.Contains(out, `"gitVersion"`) {
		t.Errorf("pod apiclient got %q, want the API server's version", out)
	}
}

// TestSelftestGracefulDeletion: a deleted pod's process gets SIGTERM at once and SIGKILL at the
// end of its grace period (the program ignores SIGTERM and records what it sees).
func TestSelftestGracefulDeletion(t *testing.T) {
	s := newSelftest(t)
	ctx := context.Background()
	const grace = 3
	dir := filepath.Join(s.node.Dir, "selftest", s.ns)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	record := filepath.Join(dir, "events")
	hostPathType := corev1.HostPathDirectory
	s.pod("term", []string{"serve", "-record", "/record/events", "-ignore-term"}, func(p *corev1.Pod) {
		g := int64(grace)
		p.Spec.TerminationGracePeriodSeconds = &g
		p.Spec.Volumes = []corev1.Volume{{Name: "record", VolumeSource: corev1.VolumeSource{
			HostPath: &corev1.HostPathVolumeSource{Path: dir, Type: &hostPathType}}}}
		p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "record", MountPath: "/record"}}
	})
	s.waitPod("term", "Running", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning })
	s.until(ctx, "the program to record its start", func() (bool, error) {
		b, _ := os.ReadFile(record)
		return strings.HasPrefix(string(b), "start "), nil
	})

	w, err := s.cs.CoreV1().Pods(s.ns).Watch(ctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("metadata.name", "term").String()})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	deleted := time.Now()
	if err := s.cs.CoreV1().Pods(s.ns).Delete(ctx, "term", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	var exitCode int32 = -1
	timeout := time.NewTimer(time.Duration(grace)*time.Second + 60*time.Second)
	defer timeout.Stop()
wait:
	for {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				t.Fatal("watch ended before the pod was gone")
			}
			if p, ok := ev.Object.(*corev1.Pod); ok {
				for _, c := range p.Status.ContainerStatuses {
					if c.State.Terminated != nil {
						exitCode = c.State.Terminated.ExitCode
					}
				}
			}
			if ev.Type == watch.Deleted {
				break wait
			}
		case <-timeout.C:
			t.Fatal("pod still there long after its grace period")
		}
	}
	gone := time.Since(deleted)
	t.Logf("pod gone %s after deletion; container exit code %d", gone.Round(time.Millisecond), exitCode)

	b, err := os.ReadFile(record)
	if err != nil {
		t.Fatal(err)
	}
	var term, lastAlive int64
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Fields(line)
		if len(f) != 2 {
			continue
		}
		ms, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "SIGTERM":
			term = ms
		case "alive":
			lastAlive = ms
		case "exit":
			t.Errorf("the program exited by itself: %s", line)
		}
	}
	if term == 0 {
		t.Fatalf("no SIGTERM recorded:\n%s", b)
	}
	termAfter := time.Duration(term-deleted.UnixMilli()) * time.Millisecond
	aliveFor := time.Duration(lastAlive-term) * time.Millisecond
	t.Logf("SIGTERM %s after deletion; alive %s after SIGTERM", termAfter, aliveFor)
	if termAfter > 5*time.Second {
		t.Errorf("SIGTERM came %s after deletion, want at once", termAfter)
	}
	// Killed at the end of the grace period: alive until shortly before it, not long after.
	if aliveFor < time.Duration(grace)*time.Second-500*time.Millisecond || aliveFor > time.Duration(grace)*time.Second+2*time.Second {
		t.Errorf("process lived %s after SIGTERM, want about the %ds grace period", aliveFor, grace)
	}
	if exitCode != -1 && exitCode != 137 {
		t.Errorf("container exit code %d, want 137 (SIGKILL)", exitCode)
	}
}

// TestSelftestVolume: a PVC of the default StorageClass gets a real directory on the host; a pod
// writes into it; deleting the claim removes it.
func TestSelftestVolume(t *testing.T) {
	s := newSelftest(t)
	ctx := context.Background()
	_, err := s.cs.CoreV1().PersistentVolumeClaims(s.ns).Create(ctx, &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: "data", Namespace: s.ns},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s.pod("writer", []string{"serve", "-write", "/data/hello"}, func(p *corev1.Pod) {
		p.Spec.Volumes = []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
			PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "data"}}}}
		p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "data", MountPath: "/data"}}
	})
	s.waitPod("writer", "Running", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning })
	pvc, err := s.cs.CoreV1().PersistentVolumeClaims(s.ns).Get(ctx, "data", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if pvc.Status.Phase != corev1.ClaimBound {
		t.Fatalf("claim is %s, want Bound", pvc.Status.Phase)
	}
	pv, err := s.cs.CoreV1().PersistentVolumes().Get(ctx, pvc.Spec.VolumeName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var hostDir string
	switch {
	case pv.Spec.HostPath != nil:
		hostDir = pv.Spec.HostPath.Path
	case pv.Spec.Local != nil:
		hostDir = pv.Spec.Local.Path
	default:
		t.Fatalf("volume %s is neither hostPath nor local", pv.Name)
	}
	if !strings.HasPrefix(hostDir, s.node.Dir+"/") {
		t.Errorf("volume directory %s is outside the test bed's directory %s", hostDir, s.node.Dir)
	}
	file := filepath.Join(hostDir, "hello")
	s.until(ctx, file+" on the host", func() (bool, error) {
		b, err := os.ReadFile(file)
		return err == nil && strings.TrimSpace(string(b)) == "writer", nil
	})
	t.Logf("volume %s is %s on the host", pv.Name, hostDir)

	// Deleting the pod and the claim deletes the volume and its directory.
	zero := int64(0)
	if err := s.cs.CoreV1().Pods(s.ns).Delete(ctx, "writer", metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatal(err)
	}
	if err := s.cs.CoreV1().PersistentVolumeClaims(s.ns).Delete(ctx, "data", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	s.until(ctx, "volume "+pv.Name+" and "+hostDir+" to be deleted", func() (bool, error) {
		_, err := s.cs.CoreV1().PersistentVolumes().Get(ctx, pv.Name, metav1.GetOptions{})
		_, statErr := os.Stat(hostDir)
		return apierrors.IsNotFound(err) && os.IsNotExist(statErr), nil
	})
}
