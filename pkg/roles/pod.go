package roles

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
)

// Desired is what the instance's own Pod says, as last seen by the PodWatcher.
type Desired struct {
	// Role is the last valid desired role (annotation pgwarden.io/role). RoleNone means no valid
	// value has been seen yet: the instance must neither promote nor demote because of it.
	Role Role
	// ResourceVersion and UID are those of the Pod object this view was taken from.
	ResourceVersion string
	UID             types.UID
	// Fenced is the last valid value of annotation pgwarden.io/fenced (false until one is seen,
	// and when the annotation is removed).
	Fenced bool
	// PodIP is the Pod's status.podIP, empty until the kubelet reports it.
	PodIP string
	// Deleting is true once the Pod has a deletionTimestamp (it is being terminated).
	Deleting bool
	// Gone is true once the Pod has been deleted from the API.
	Gone bool
}

// same reports whether d and o differ only in ResourceVersion: consumers are only told about
// changes that matter to them.
func (d Desired) same(o Desired) bool {
	d.ResourceVersion, o.ResourceVersion = "", ""
	return d == o
}

// PodWatcher watches the instance's own Pod, and only it, and reports its desired role, IP and
// deletion state. It also writes the observed role label on that Pod.
type PodWatcher struct {
	client    *Client
	namespace string
	name      string
	recorder  *Recorder
	log       *slog.Logger
	updates   chan Desired

	mu            sync.Mutex
	started       bool
	current       Desired
	seen          bool   // current is valid: the Pod has been seen at least once
	raw           string // the annotation's last raw value
	rawFound      bool   // whether the annotation was present last time
	rawFence      string // the fence annotation's last raw value
	rawFenceFound bool
	fenceKnown    bool // a valid fence value (or no annotation) has been seen
}

// NewPodWatcher returns a watcher of Pod namespace/name. recorder receives the InvalidRole
// Events (nil: no Events, only log records); a nil logger means slog.Default().
func NewPodWatcher(client *Client, namespace, name string, recorder *Recorder, logger *slog.Logger) *PodWatcher {
	if logger == nil {
		logger = slog.Default()
	}
	return &PodWatcher{
		client: client, namespace: namespace, name: name, recorder: recorder,
		log:     logger.With("pod", namespace+"/"+name),
		updates: make(chan Desired, 1),
	}
}

// Updates delivers the Pod's state each time its role, IP, UID or deletion state changes. It
// holds only the latest state: a slow reader skips intermediate states, never sees a stale one
// after a newer one, and never blocks the watcher. Current always has the latest.
func (w *PodWatcher) Updates() <-chan Desired { return w.updates }

// Current returns the latest state; false until the Pod has been seen once.
func (w *PodWatcher) Current() (Desired, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.current, w.seen
}

// Start watches the Pod until ctx ends, then returns nil. It lists and watches with a
// metadata.name field selector, so it needs list and watch on this one Pod only. Every watch is
// followed by a fresh list (a single object: cheap), so a watch that ended, failed or missed
// events is repaired by the next list; errors are logged and retried with capped backoff. It may
// be called once.
func (w *PodWatcher) Start(ctx context.Context) error {
	w.mu.Lock()
	if w.started {
		w.mu.Unlock()
		return errors.New("pod watcher already started")
	}
	w.started = true
	w.mu.Unlock()

	w.log.Info("watching own pod")
	backoff := watchBackoffMin
	for {
		err := w.listAndWatch(ctx)
		if ctx.Err() != nil {
			return nil
		}
		wait := time.Duration(0)
		if err != nil {
			w.log.Warn("own pod watch failed; retrying", "err", err, "retryIn", backoff)
			wait = backoff
			backoff = min(2*backoff, watchBackoffMax)
		} else {
			backoff = watchBackoffMin
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// Reconnection timing of the pod watch. The minimum keeps a flapping API server from being
// hammered; the maximum bounds how stale the desired role can be after the API server is back.
const (
	watchBackoffMin = 250 * time.Millisecond
	watchBackoffMax = 5 * time.Second
)

// watchTimeout is how long one watch request lasts before the server ends it and the watcher
// lists again: the resync period. Jittered by up to a third so instances do not relist in step.
const watchTimeout = 60 * time.Second

// listAndWatch lists the Pod, then watches it from the list's resourceVersion until the watch
// ends. It returns nil when the watch ended normally.
func (w *PodWatcher) listAndWatch(ctx context.Context) error {
	selector := fields.OneTermEqualSelector("metadata.name", w.name).String()
	list, err := w.client.ListPods(ctx, w.namespace, metav1.ListOptions{FieldSelector: selector})
	if err != nil {
		return fmt.Errorf("cannot list own pod: %w", err)
	}
	if len(list.Items) == 0 {
		w.gone()
	}
	for i := range list.Items {
		w.observe(ctx, &list.Items[i])
	}
	timeout := int64((watchTimeout + time.Duration(rand.Int64N(int64(watchTimeout/3)))) / time.Second)
	wi, err := w.client.watchPods(ctx, w.namespace, metav1.ListOptions{
		FieldSelector: selector, ResourceVersion: list.ResourceVersion,
		AllowWatchBookmarks: true, TimeoutSeconds: &timeout,
	})
	if err != nil {
		return fmt.Errorf("cannot watch own pod: %w", err)
	}
	defer wi.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-wi.ResultChan():
			if !ok {
				return nil
			}
			switch ev.Type {
			case watch.Added, watch.Modified:
				if pod, ok := ev.Object.(*corev1.Pod); ok {
					w.observe(ctx, pod)
				}
			case watch.Deleted:
				w.gone()
			case watch.Error:
				// Typically 410 Gone (the resourceVersion is too old): list again.
				return fmt.Errorf("watch of own pod ended: %w", apierrors.FromObject(ev.Object))
			}
		}
	}
}

func (w *PodWatcher) observe(ctx context.Context, pod *corev1.Pod) {
	if pod.Name != w.name {
		return
	}
	if w.recorder != nil {
		w.recorder.SetUID(pod.UID)
	}
	raw, found := pod.Annotations[DesiredRoleAnnotation]

	w.mu.Lock()
	next := w.current
	next.ResourceVersion, next.UID = pod.ResourceVersion, pod.UID
	next.PodIP = pod.Status.PodIP
	next.Deleting = pod.DeletionTimestamp != nil
	next.Gone = false
	changedRaw := found != w.rawFound || raw != w.raw
	w.raw, w.rawFound = raw, found
	var invalid error
	if found {
		if r, err := ParseRole(raw); err != nil {
			invalid = err
		} else {
			next.Role = r
		}
	}
	rawFence, fenceFound := pod.Annotations[FencedAnnotation]
	changedFence := fenceFound != w.rawFenceFound || rawFence != w.rawFence
	w.rawFence, w.rawFenceFound = rawFence, fenceFound
	fenced, invalidFence := ParseFenced(rawFence, fenceFound)
	switch {
	case invalidFence == nil:
		next.Fenced, w.fenceKnown = fenced, true
	case !w.fenceKnown:
		// Just started, and the first value seen is invalid: the last valid one is unknown
		// (perhaps "true" before a restart). Fenced is the safe side: a replica stays stopped,
		// a primary keeps running until it is switched over.
		next.Fenced = true
	}
	w.publishLocked(next)
	w.mu.Unlock()

	if invalidFence != nil && changedFence {
		w.log.Warn("ignoring invalid fence annotation; the last valid value stays in force",
			"annotation", FencedAnnotation, "value", rawFence, "fenced", next.Fenced)
		w.recorder.Eventf(ctx, corev1.EventTypeWarning, ReasonInvalidFence,
			"Ignoring annotation %s=%q: valid values are \"true\" and \"false\"; the instance stays %s",
			FencedAnnotation, rawFence, fencedWord(next.Fenced))
	}

	// Reported once each time the annotation takes a bad value, not on every later update or
	// resync of the Pod that still carries it.
	if invalid != nil && changedRaw {
		w.log.Warn("ignoring invalid desired role; the last valid one stays in force",
			"annotation", DesiredRoleAnnotation, "value", raw, "inForce", next.Role.String())
		w.recorder.Eventf(ctx, corev1.EventTypeWarning, ReasonInvalidRole,
			"Ignoring annotation %s=%q: valid values are %q and %q; the desired role stays %s",
			DesiredRoleAnnotation, raw, RolePrimary, RoleReplica, next.Role)
	}
}

// gone records that the Pod no longer exists (a delete event, or a list without it). Before the
// Pod was ever seen there is nothing to report.
func (w *PodWatcher) gone() {
	w.mu.Lock()
	if !w.seen || w.current.Gone {
		w.mu.Unlock()
		return
	}
	next := w.current
	next.Gone, next.Deleting = true, true
	w.publishLocked(next)
	w.mu.Unlock()
	w.log.Info("own pod deleted")
}

// publishLocked makes next current and, if it matters, replaces whatever is waiting in updates.
func (w *PodWatcher) publishLocked(next Desired) {
	first := !w.seen
	changed := first || !next.same(w.current)
	w.current, w.seen = next, true
	if !changed {
		return
	}
	w.log.Info("own pod changed", "desiredRole", next.Role.String(), "fenced", next.Fenced, "podIP", next.PodIP,
		"deleting", next.Deleting, "gone", next.Gone)
	select {
	case <-w.updates:
	default:
	}
	w.updates <- next // cannot block: w.mu makes this the only sender and the slot is free
}

// SetObservedRole sets the Pod's label pgwarden.io/instance-role to role, or removes it for
// RoleNone. It is one JSON merge patch of the label alone, so it never conflicts with other
// writers of the Pod and is idempotent (removing an absent label succeeds).
func (w *PodWatcher) SetObservedRole(ctx context.Context, role Role) error {
	var value any // nil: JSON null removes the label
	switch role {
	case RolePrimary, RoleReplica:
		value = string(role)
	case RoleNone:
	default:
		return fmt.Errorf("cannot set observed role: %w", &InvalidRoleError{Value: string(role)})
	}
	patch, err := json.Marshal(map[string]any{
		"metadata": map[string]any{"labels": map[string]any{ObservedRoleLabel: value}},
	})
	if err != nil {
		return fmt.Errorf("cannot set observed role %s: %w", role, err)
	}
	if _, err := w.client.patchPod(ctx, w.namespace, w.name, types.MergePatchType, patch); err != nil {
		return fmt.Errorf("cannot set observed role %s on pod %s/%s: %w", role, w.namespace, w.name, err)
	}
	w.log.Info("observed role label set", "label", ObservedRoleLabel, "role", role.String())
	return nil
}

func fencedWord(f bool) string {
	if f {
		return "fenced"
	}
	return "not fenced"
}
