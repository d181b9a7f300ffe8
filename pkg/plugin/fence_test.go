package plugin

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
)

// fenceAnnotation returns the Pod's fence annotation and whether it is there.
func (b *bed) fenceAnnotation(t *testing.T, pod string) (string, bool) {
	t.Helper()
	p, err := b.kube.CoreV1().Pods(b.ns).Get(context.Background(), pod, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	v, ok := p.Annotations[FencedAnnotation]
	return v, ok
}

// playFence plays the instance (and, for a primary, the operator's switchover to successor):
// once pod's fence annotation is "true", after a while, the instance reports postgres stopped;
// once the annotation is gone, it reports a ready replica streaming from upstream.
func playFence(t *testing.T, b *bed, pod, successor, upstream string, f *fakeInstance) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		fenced := false
		for ctx.Err() == nil {
			time.Sleep(20 * time.Millisecond)
			p, err := b.kube.CoreV1().Pods(b.ns).Get(ctx, pod, metav1.GetOptions{})
			if err != nil {
				continue
			}
			switch want := p.Annotations[FencedAnnotation] == "true"; {
			case want && !fenced:
				if successor != "" {
					time.Sleep(150 * time.Millisecond)
					patch := fmt.Sprintf(`{"metadata":{"labels":{%q:"primary"}}}`, ObservedRoleLabel)
					_, _ = b.kube.CoreV1().Pods(b.ns).Patch(ctx, successor, types.MergePatchType, []byte(patch), metav1.PatchOptions{})
					patch = fmt.Sprintf(`{"metadata":{"labels":{%q:null}}}`, ObservedRoleLabel)
					_, _ = b.kube.CoreV1().Pods(b.ns).Patch(ctx, pod, types.MergePatchType, []byte(patch), metav1.PatchOptions{})
				}
				time.Sleep(200 * time.Millisecond)
				f.set(func(s *InstanceStatus) {
					s.Phase, s.Fenced, s.FencedReason, s.PostmasterPID, s.Ready, s.Upstream = "fenced", true, "fenced on request", 0, false, ""
				})
				fenced = true
			case !want && fenced:
				time.Sleep(200 * time.Millisecond)
				f.set(func(s *InstanceStatus) {
					s.Role, s.Phase, s.Fenced, s.FencedReason, s.PostmasterPID, s.Ready, s.Upstream = "replica", "replica", false, "", 77, true, upstream
				})
				fenced = false
			}
		}
	}()
	return func() { cancel(); <-done }
}

func testFence(t *testing.T, b *bed) {
	b.createCluster(t, "fe", "Healthy", "fe-1")
	b.createPod(t, "fe", "fe-1", "primary", "10.0.7.1", true)
	b.createPod(t, "fe", "fe-2", "replica", "10.0.7.2", true)
	f := &loopbackFetcher{}
	f1 := f.add(t, "fe-1", InstanceStatus{Role: "primary", Phase: "primary", Ready: true, PostmasterPID: 10})
	f2 := f.add(t, "fe-2", InstanceStatus{Role: "replica", Phase: "replica", Ready: true, PostmasterPID: 20, Upstream: "10.0.7.1"})

	// A replica: on, then off.
	stop := playFence(t, b, "fe-2", "", "10.0.7.1", f2)
	defer stop()
	code, out, errOut := b.run(t, f, "fence", "fe", "fe-2", "on", "-o", "json", "--timeout", "20s")
	if code != 0 {
		t.Fatalf("fence on: exit %d: %s\n%s", code, errOut, out)
	}
	var res FenceResult
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if !res.Completed || !res.Annotated || !res.Fence || res.WasPrimary || res.StoppedSeconds == nil || *res.StoppedSeconds < 0.2 || res.Error != "" {
		t.Errorf("fence on: %+v", res)
	}
	if v, ok := b.fenceAnnotation(t, "fe-2"); v != "true" || !ok {
		t.Errorf("annotation after fence on: %q %v", v, ok)
	}
	// Again: already fenced, nothing to write, done at once.
	if code, out, errOut = b.run(t, f, "fence", "fe", "fe-2", "on"); code != 0 || !strings.Contains(out, "already carries pgwarden.io/fenced=true") {
		t.Errorf("fence on again: exit %d: %s\n%s", code, errOut, out)
	}
	code, out, errOut = b.run(t, f, "fence", "fe", "fe-2", "off", "--timeout", "20s")
	if code != 0 {
		t.Fatalf("fence off: exit %d: %s\n%s", code, errOut, out)
	}
	t.Logf("\n%s", out)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], "removed pgwarden.io/fenced from fe-2") ||
		!strings.Contains(lines[1], "fe-2 is a ready replica again, streaming from 10.0.7.1") {
		t.Errorf("fence off output:\n%s", out)
	}
	if v, ok := b.fenceAnnotation(t, "fe-2"); ok {
		t.Errorf("annotation after fence off: %q", v)
	}

	// The primary: the switchover comes first.
	stop1 := playFence(t, b, "fe-1", "fe-2", "10.0.7.2", f1)
	defer stop1()
	code, out, errOut = b.run(t, f, "fence", "fe", "fe-1", "on", "--timeout", "20s")
	if code != 0 {
		t.Fatalf("fence on the primary: exit %d: %s\n%s", code, errOut, out)
	}
	t.Logf("\n%s", out)
	for _, want := range []string{"annotated fe-1 pgwarden.io/fenced=true; it is the primary: the operator switches over first",
		"fe-2 is the primary now", "fe-1 is fenced: postgres stopped and held stopped"} {
		if !strings.Contains(out, want) {
			t.Errorf("fence on the primary: output lacks %q", want)
		}
	}
}

func testFenceRefused(t *testing.T, b *bed) {
	b.createCluster(t, "fr", "Healthy", "fr-1")
	b.createPod(t, "fr", "fr-1", "primary", "10.0.8.1", true)
	f := &loopbackFetcher{}
	f.add(t, "fr-1", InstanceStatus{Role: "primary", Phase: "primary", Ready: true, PostmasterPID: 10,
		FencedReason: "fence requested (pgwarden.io/fenced=true) while primary"})
	// The operator's part: no replica, so it refuses and says so in status and an Event.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		for ctx.Err() == nil {
			if v, _ := b.fenceAnnotation(t, "fr-1"); v == "true" {
				u, err := b.dyn.Resource(ClusterResource).Namespace(b.ns).Get(ctx, "fr", metav1.GetOptions{})
				if err != nil {
					return
				}
				u.Object["status"].(map[string]any)["phase"] = "Degraded"
				u.Object["status"].(map[string]any)["phaseReason"] = "primary fr-1 is asked to fence (pgwarden.io/fenced=true) but no replica can take over (no failover candidate: no replicas): it keeps running as the primary"
				_, _ = b.dyn.Resource(ClusterResource).Namespace(b.ns).UpdateStatus(ctx, u, metav1.UpdateOptions{})
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	code, out, errOut := b.run(t, f, "fence", "fr", "fr-1", "on", "-o", "yaml", "--timeout", "20s")
	if code == 0 || !strings.Contains(errOut, "the operator refuses to fence primary fr-1") || !strings.Contains(errOut, "no replica can take over") ||
		!strings.Contains(errOut, "removed pgwarden.io/fenced again") {
		t.Errorf("exit %d, stderr %q", code, errOut)
	}
	if !strings.Contains(out, "completed: false") || !strings.Contains(out, "wasPrimary: true") {
		t.Errorf("yaml result:\n%s", out)
	}
	if v, ok := b.fenceAnnotation(t, "fr-1"); ok {
		t.Errorf("a refused fence left the annotation %q", v)
	}
}

func testFenceTimeoutAndValidation(t *testing.T, b *bed) {
	b.createCluster(t, "ft", "Healthy", "ft-1")
	b.createPod(t, "ft", "ft-1", "primary", "10.0.9.1", true)
	b.createPod(t, "ft", "ft-2", "replica", "10.0.9.2", true)
	b.createPod(t, "fu", "fu-1", "primary", "10.0.9.9", true)
	f := &loopbackFetcher{}
	f.add(t, "ft-2", InstanceStatus{Role: "replica", Phase: "replica", Ready: true, PostmasterPID: 20})
	start := time.Now()
	code, _, errOut := b.run(t, f, "fence", "ft", "ft-2", "on", "--timeout", "1s")
	if took := time.Since(start); took < time.Second || took > 5*time.Second {
		t.Errorf("a 1s timeout took %s", took)
	}
	if code == 0 || !strings.Contains(errOut, "timed out after 1s: ft-2 is not stopped (phase fenced, no postmaster); last /status: role \"replica\", phase \"replica\"") {
		t.Errorf("exit %d, stderr %q", code, errOut)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"fence", "ft", "ft-2", "maybe"}, `invalid argument "maybe": want on or off`},
		{[]string{"fence", "ft", "fu-1", "on"}, "fu-1 is not an instance of cluster ft (it belongs to fu)"},
		{[]string{"fence", "ft", "ft-9", "on"}, "not found"},
		{[]string{"fence", "ft", "ft-1"}, "accepts 3 arg(s)"},
		{[]string{"fence", "ft", "ft-1", "on", "-o", "wide"}, `unknown output format "wide"`},
	} {
		code, _, errOut := b.run(t, f, c.args...)
		if code == 0 || !strings.Contains(errOut, c.want) {
			t.Errorf("%v: exit %d, stderr %q, want %q", c.args, code, errOut, c.want)
		}
	}
	for _, pod := range []string{"fu-1", "ft-1"} {
		if v, ok := b.fenceAnnotation(t, pod); ok {
			t.Errorf("a refused command annotated %s: %q", pod, v)
		}
	}
}

func testFenceSynchronous(t *testing.T, b *bed) {
	ctx := context.Background()
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "pgwarden.io/v1", "kind": "PostgresCluster",
		"metadata": map[string]any{"name": "fs", "namespace": b.ns},
		"spec": map[string]any{"instances": int64(3), "storage": map[string]any{"size": "1Gi"},
			"replication": map[string]any{"synchronous": map[string]any{"number": int64(1)}}},
	}}
	if _, err := b.dyn.Resource(ClusterResource).Namespace(b.ns).Create(ctx, u, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	b.createPod(t, "fs", "fs-1", "primary", "10.0.10.1", true)
	b.createPod(t, "fs", "fs-2", "replica", "10.0.10.2", true)
	b.createPod(t, "fs", "fs-3", "replica", "10.0.10.3", true)
	f := &loopbackFetcher{}
	f.add(t, "fs-2", InstanceStatus{Role: "replica", Phase: "replica", Ready: true, PostmasterPID: 20})
	// fs-3 is fenced already: fs-2 is the last synchronous standby.
	patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:"true"}}}`, FencedAnnotation)
	if _, err := b.kube.CoreV1().Pods(b.ns).Patch(ctx, "fs-3", types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, pod := range []string{"fs-2", "fs-1"} {
		code, _, errOut := b.run(t, f, "fence", "fs", pod, "on")
		if code == 0 || !strings.Contains(errOut, "fencing "+pod+" would leave 0 ready replica(s) to stream, but spec.replication.synchronous.number is 1") {
			t.Errorf("fence %s: exit %d, stderr %q", pod, code, errOut)
		}
		if v, ok := b.fenceAnnotation(t, pod); ok {
			t.Errorf("a refused fence annotated %s: %q", pod, v)
		}
	}
	// --force: written (and then waited for, in vain here).
	code, _, errOut := b.run(t, f, "fence", "fs", "fs-2", "on", "--force", "--timeout", "300ms")
	if code == 0 || !strings.Contains(errOut, "timed out") {
		t.Errorf("fence --force: exit %d, stderr %q", code, errOut)
	}
	if v, _ := b.fenceAnnotation(t, "fs-2"); v != "true" {
		t.Errorf("fence --force did not annotate fs-2: %q", v)
	}
}
