package roles_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/pgwarden/pgwarden/e2e/testbed"
	"github.com/pgwarden/pgwarden/pkg/roles"
)

const testFinalizer = "pgwarden.io/test"

// createPod creates Pod name (nothing runs it) with the given annotations and a finalizer, so
// its deletion can be watched in two steps.
func (e *env) createPod(t *testing.T, name string, annotations map[string]string) *corev1.Pod {
	t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: e.ns, Annotations: annotations, Finalizers: []string{testFinalizer}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "postgres", Image: "example"}}},
	}
	pod, err := e.admin.CoreV1().Pods(e.ns).Create(context.Background(), pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create pod: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, _ = e.admin.CoreV1().Pods(e.ns).Patch(ctx, name, types.MergePatchType, []byte(`{"metadata":{"finalizers":null}}`), metav1.PatchOptions{})
	})
	return pod
}

// patchPod applies a JSON merge patch to pod as admin.
func (e *env) patchPod(t *testing.T, pod string, patch map[string]any) {
	t.Helper()
	b, err := json.Marshal(patch)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.admin.CoreV1().Pods(e.ns).Patch(context.Background(), pod, types.MergePatchType, b, metav1.PatchOptions{}); err != nil {
		t.Fatalf("patch pod %s: %v", b, err)
	}
}

func (e *env) setDesired(t *testing.T, pod, value string) {
	t.Helper()
	e.patchPod(t, pod, map[string]any{"metadata": map[string]any{"annotations": map[string]any{roles.DesiredRoleAnnotation: value}}})
}

// startWatcher starts a PodWatcher as the restricted identity and stops it when the test ends.
func (e *env) startWatcher(t *testing.T, pod string) *roles.PodWatcher {
	t.Helper()
	logger := e.log.logger.With("pod", pod)
	w := roles.NewPodWatcher(e.client, e.ns, pod, roles.NewRecorder(e.client, e.ns, pod, logger), logger)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("PodWatcher.Start: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("PodWatcher did not stop")
		}
	})
	return w
}

// next waits for an update that satisfies want.
func next(t *testing.T, w *roles.PodWatcher, what string, want func(roles.Desired) bool) roles.Desired {
	t.Helper()
	timeout := time.After(15 * time.Second)
	for {
		select {
		case d := <-w.Updates():
			if want(d) {
				return d
			}
		case <-timeout:
			cur, _ := w.Current()
			t.Fatalf("no update with %s within 15s; current %+v", what, cur)
		}
	}
}

func role(r roles.Role) func(roles.Desired) bool {
	return func(d roles.Desired) bool { return d.Role == r }
}

func TestPodWatcher(t *testing.T) {
	api := testbed.StartAPI(t)
	e := newEnv(t, api, "pods", "demo", "demo-1", "demo-3")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pod := e.createPod(t, "demo-1", nil)
	// Another Pod the watcher must neither see nor be allowed to touch.
	e.createPod(t, "demo-2", map[string]string{roles.DesiredRoleAnnotation: "primary"})
	w := e.startWatcher(t, "demo-1")

	t.Run("NoAnnotation", func(t *testing.T) {
		d := next(t, w, "the first state", func(roles.Desired) bool { return true })
		if d.Role != roles.RoleNone || d.UID != pod.UID || d.Deleting || d.Gone {
			t.Errorf("first state %+v, want no role, the pod's UID, not deleting", d)
		}
	})

	t.Run("ValidChanges", func(t *testing.T) {
		e.setDesired(t, "demo-1", "replica")
		next(t, w, "role replica", role(roles.RoleReplica))
		e.setDesired(t, "demo-1", "primary")
		d := next(t, w, "role primary", role(roles.RolePrimary))
		if cur, ok := w.Current(); !ok || cur != d {
			t.Errorf("Current() = %+v, %v, want the last update %+v", cur, ok, d)
		}
	})

	t.Run("InvalidValuesChangeNothingAndAreReportedOnce", func(t *testing.T) {
		bad := []string{"master", "", "Primary"}
		for _, v := range bad {
			e.setDesired(t, "demo-1", v)
			waitFor(t, 10*time.Second, fmt.Sprintf("an InvalidRole event for %q", v), func() bool {
				return len(invalidRoleEvents(t, e, "demo-1", v)) > 0
			})
			if cur, _ := w.Current(); cur.Role != roles.RolePrimary {
				t.Errorf("after %q the desired role is %s, want primary (unchanged)", v, cur.Role)
			}
		}
		// More updates of the Pod, still carrying the bad value, then a valid change: once that
		// is delivered, everything before it has been handled (one watch, in order).
		for i := range 3 {
			e.patchPod(t, "demo-1", map[string]any{"metadata": map[string]any{"labels": map[string]any{"unrelated": fmt.Sprint(i)}}})
		}
		e.setDesired(t, "demo-1", "replica")
		next(t, w, "role replica", role(roles.RoleReplica))
		for _, v := range bad {
			evs := invalidRoleEvents(t, e, "demo-1", v)
			if len(evs) != 1 {
				t.Errorf("%d InvalidRole events for %q, want exactly 1", len(evs), v)
				continue
			}
			ev := evs[0]
			if ev.Type != corev1.EventTypeWarning || ev.InvolvedObject.UID != pod.UID || ev.Source.Component != roles.EventComponent ||
				!strings.Contains(ev.Message, `"primary"`) || !strings.Contains(ev.Message, `"replica"`) {
				t.Errorf("event %+v: want a Warning on the pod naming the valid values", ev)
			}
		}
		if n := len(e.events(t, "demo-1", roles.ReasonInvalidRole)); n != len(bad) {
			t.Errorf("%d InvalidRole events, want %d", n, len(bad))
		}
		if n := len(e.log.records("ignoring invalid desired role; the last valid one stays in force")); n != len(bad) {
			t.Errorf("%d log records of invalid roles, want %d", n, len(bad))
		}
	})

	t.Run("ObservedRoleLabel", func(t *testing.T) {
		label := func() (string, bool) {
			p, err := e.admin.CoreV1().Pods(e.ns).Get(ctx, "demo-1", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			v, ok := p.Labels[roles.ObservedRoleLabel]
			return v, ok
		}
		for _, r := range []roles.Role{roles.RolePrimary, roles.RolePrimary, roles.RoleReplica, roles.RoleNone, roles.RoleNone} {
			if err := w.SetObservedRole(ctx, r); err != nil {
				t.Fatalf("SetObservedRole(%s): %v", r, err)
			}
			v, ok := label()
			if ok != (r != roles.RoleNone) || v != string(r) {
				t.Errorf("after SetObservedRole(%s): label %q present %v", r, v, ok)
			}
		}
		if err := w.SetObservedRole(ctx, "master"); err == nil {
			t.Error("SetObservedRole(master) succeeded")
		}
		// The identity may touch only its own Pod.
		other := roles.NewPodWatcher(e.client, e.ns, "demo-2", nil, e.log.logger)
		if err := other.SetObservedRole(ctx, roles.RolePrimary); err == nil {
			t.Error("the instance identity could label another pod")
		}
	})

	t.Run("PodIP", func(t *testing.T) {
		p, err := e.admin.CoreV1().Pods(e.ns).Get(ctx, "demo-1", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		p.Status.PodIP = "10.1.2.3"
		p.Status.PodIPs = []corev1.PodIP{{IP: "10.1.2.3"}}
		if _, err := e.admin.CoreV1().Pods(e.ns).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		d := next(t, w, "the pod IP", func(d roles.Desired) bool { return d.PodIP == "10.1.2.3" })
		if d.Role != roles.RoleReplica {
			t.Errorf("role %s after an IP change, want replica", d.Role)
		}
	})

	t.Run("InvalidFenceAtStart", func(t *testing.T) {
		// A watcher that starts on a Pod whose fence annotation is invalid knows no earlier
		// valid value: it takes the safe side, fenced, until a valid value arrives.
		e.createPod(t, "demo-3", map[string]string{roles.FencedAnnotation: "yes"})
		w3 := e.startWatcher(t, "demo-3")
		d := next(t, w3, "the first state", func(roles.Desired) bool { return true })
		if !d.Fenced {
			t.Errorf("first state %+v: want fenced", d)
		}
		e.patchPod(t, "demo-3", map[string]any{"metadata": map[string]any{"annotations": map[string]any{roles.FencedAnnotation: "false"}}})
		next(t, w3, "not fenced", func(d roles.Desired) bool { return !d.Fenced })
	})

	t.Run("Fence", func(t *testing.T) {
		setFence := func(v any) {
			e.patchPod(t, "demo-1", map[string]any{"metadata": map[string]any{"annotations": map[string]any{roles.FencedAnnotation: v}}})
		}
		fenced := func(f bool) func(roles.Desired) bool { return func(d roles.Desired) bool { return d.Fenced == f } }
		setFence("true")
		d := next(t, w, "fenced", fenced(true))
		if d.Role != roles.RoleReplica {
			t.Errorf("fencing changed the role: %+v", d)
		}
		// Invalid values: one Event each, and the fence stays.
		for _, v := range []string{"yes", "True", ""} {
			setFence(v)
			waitFor(t, 10*time.Second, fmt.Sprintf("an InvalidFence event for %q", v), func() bool {
				for _, ev := range e.events(t, "demo-1", roles.ReasonInvalidFence) {
					if strings.Contains(ev.Message, fmt.Sprintf("%s=%q", roles.FencedAnnotation, v)) {
						return true
					}
				}
				return false
			})
			if cur, _ := w.Current(); !cur.Fenced {
				t.Errorf("after %q the instance is no longer fenced", v)
			}
		}
		setFence("false")
		next(t, w, "not fenced", fenced(false))
		setFence("true")
		next(t, w, "fenced again", fenced(true))
		setFence(nil) // removing the annotation lifts the fence
		next(t, w, "not fenced without the annotation", fenced(false))
		if n := len(e.events(t, "demo-1", roles.ReasonInvalidFence)); n != 3 {
			t.Errorf("%d InvalidFence events, want 3", n)
		}
	})

	t.Run("Deletion", func(t *testing.T) {
		if err := e.admin.CoreV1().Pods(e.ns).Delete(ctx, "demo-1", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		d := next(t, w, "deleting", func(d roles.Desired) bool { return d.Deleting })
		if d.Gone || d.Role != roles.RoleReplica {
			t.Errorf("while deleting: %+v", d)
		}
		e.patchPod(t, "demo-1", map[string]any{"metadata": map[string]any{"finalizers": nil}})
		next(t, w, "gone", func(d roles.Desired) bool { return d.Gone })
	})
}

func invalidRoleEvents(t *testing.T, e *env, pod, value string) []corev1.Event {
	t.Helper()
	var out []corev1.Event
	for _, ev := range e.events(t, pod, roles.ReasonInvalidRole) {
		if strings.Contains(ev.Message, fmt.Sprintf("%s=%q", roles.DesiredRoleAnnotation, value)) {
			out = append(out, ev)
		}
	}
	return out
}

// When the API server goes away the holder fences on time, a contender that watched all along
// takes the Lease only after that, and the PodWatcher reconnects once the API server is back.
func TestFencingAPIServerDown(t *testing.T) {
	api := testbed.StartAPI(t)
	e := newEnv(t, api, "down", "demo", "demo-1")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	e.createPod(t, "demo-1", map[string]string{roles.DesiredRoleAnnotation: "replica"})
	w := e.startWatcher(t, "demo-1")
	next(t, w, "role replica", role(roles.RoleReplica))

	a, b := e.lease(t, "demo-1", nil), e.lease(t, "demo-2", nil)
	if ok, err := a.TryAcquire(ctx); !ok || err != nil {
		t.Fatalf("TryAcquire: %v, %v", ok, err)
	}
	ha := hold(t, a)
	ab := acquire(ctx, b)
	e.waitRenewals(t, 2)
	stopped := time.Now()
	api.StopServer(t)
	t.Logf("API server stopped in %s", time.Since(stopped).Round(time.Millisecond))
	lost := ha.fenced(t, testRenewDeadline+15*time.Second)
	checkFence(t, e, lost, stopped)

	api.StartServer(t)
	ab.wait(t, 30*time.Second)
	if !ab.at.After(lost.FencedAt) || ab.at.Sub(lost.LastRenew) < testLeaseDuration {
		t.Errorf("contender acquired %s after the fence, %s after the last renew", ab.at.Sub(lost.FencedAt), ab.at.Sub(lost.LastRenew))
	}
	e.setDesired(t, "demo-1", "primary")
	next(t, w, "role primary after the API server came back", role(roles.RolePrimary))
}
