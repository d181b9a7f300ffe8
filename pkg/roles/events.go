package roles

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Reasons of the Events this package and the instance manager write on the instance's Pod.
const (
	ReasonInvalidRole   = "InvalidRole"
	ReasonPromoted      = "Promoted"
	ReasonDemoted       = "Demoted"
	ReasonFenced        = "Fenced"
	ReasonLeaseAcquired = "LeaseAcquired"
	ReasonLeaseReleased = "LeaseReleased"
	// Written by the instance manager's role controller.
	ReasonInitialized  = "Initialized"  // an empty data directory was initialised (initdb) as the first primary
	ReasonCloned       = "Cloned"       // an empty data directory was cloned from the primary
	ReasonRewound      = "Rewound"      // a former primary was rewound (pg_rewind) to follow the new one
	ReasonRewindFailed = "RewindFailed" // pg_rewind failed; a fresh clone follows
	ReasonRecloned     = "Recloned"     // the data directory was replaced by a fresh clone
	ReasonFollowing    = "Following"    // the replica streams from a (new) primary
	// Fencing on request (annotation pgwarden.io/fenced).
	ReasonInvalidFence  = "InvalidFence"  // the annotation has an invalid value; nothing changes
	ReasonFenceWaiting  = "FenceWaiting"  // fenced while primary: waits for a switchover first
	ReasonFencedStopped = "FencedStopped" // postgres stopped and stays stopped
	ReasonUnfenced      = "Unfenced"      // the fence was lifted; postgres starts as a replica
)

// EventComponent is the source component and reporting controller of the Events.
const EventComponent = "pgwarden-instance"

// eventTimeout bounds writing one Event. Events are best effort: an unreachable API server must
// not hold up a role change or a fence for longer than this.
const eventTimeout = 3 * time.Second

// Recorder writes core/v1 Events about one Pod. It writes one Event per call, without the
// aggregation and rate limiting of client-go's broadcaster: the instance emits a handful of
// Events per role change, and every caller that could repeat itself (an invalid annotation seen
// again on every resync) de-duplicates before calling.
type Recorder struct {
	client    *Client
	namespace string
	pod       string
	log       *slog.Logger

	mu  sync.Mutex
	uid types.UID // of the Pod, once known; Events without it still show in kubectl describe
}

// NewRecorder returns a Recorder for Events on Pod namespace/pod. A nil logger means
// slog.Default().
func NewRecorder(client *Client, namespace, pod string, logger *slog.Logger) *Recorder {
	if logger == nil {
		logger = slog.Default()
	}
	return &Recorder{client: client, namespace: namespace, pod: pod, log: logger}
}

// SetUID records the Pod's UID for the Events' involvedObject. The PodWatcher calls it.
func (r *Recorder) SetUID(uid types.UID) {
	r.mu.Lock()
	r.uid = uid
	r.mu.Unlock()
}

// Event writes an Event of type eventType (corev1.EventTypeNormal or corev1.EventTypeWarning)
// with reason and message, waiting at most a few seconds. A failure is logged and returned;
// callers normally ignore it.
func (r *Recorder) Event(ctx context.Context, eventType, reason, message string) error {
	if r == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, eventTimeout)
	defer cancel()
	r.mu.Lock()
	uid := r.uid
	r.mu.Unlock()
	now := time.Now()
	ev := &corev1.Event{
		ObjectMeta: metav1.ObjectMeta{
			// Like client-go: unique per Pod and nanosecond.
			Name:      r.pod + "." + strconv.FormatInt(now.UnixNano(), 16),
			Namespace: r.namespace,
		},
		InvolvedObject: corev1.ObjectReference{
			APIVersion: "v1", Kind: "Pod", Namespace: r.namespace, Name: r.pod, UID: uid,
		},
		Reason:              reason,
		Message:             message,
		Type:                eventType,
		Source:              corev1.EventSource{Component: EventComponent},
		FirstTimestamp:      metav1.NewTime(now),
		LastTimestamp:       metav1.NewTime(now),
		Count:               1,
		ReportingController: "pgwarden.io/instance",
		ReportingInstance:   r.pod,
	}
	if _, err := r.client.createEvent(ctx, ev); err != nil {
		r.log.Warn("cannot write event", "reason", reason, "message", message, "err", err)
		return fmt.Errorf("cannot write event %s: %w", reason, err)
	}
	return nil
}

// Eventf is Event with a formatted message and the error dropped (it is logged).
func (r *Recorder) Eventf(ctx context.Context, eventType, reason, format string, args ...any) {
	_ = r.Event(ctx, eventType, reason, fmt.Sprintf(format, args...))
}
