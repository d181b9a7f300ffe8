package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"

	pgv1 "github.com/pgwarden/pgwarden/api/v1"
)

// FenceResult is what fence reports; durations are from the annotation write.
type FenceResult struct {
	Cluster   string    `json:"cluster"`
	Namespace string    `json:"namespace"`
	Pod       string    `json:"pod"`
	Fence     bool      `json:"fence"` // true: on, false: off
	StartedAt time.Time `json:"startedAt"`
	// Annotated is false when the Pod already carried the requested state; fence then only waits.
	Annotated bool `json:"annotated"`
	// WasPrimary: the Pod was the primary when fence on began; NewPrimary is who took over.
	WasPrimary bool   `json:"wasPrimary,omitempty"`
	NewPrimary string `json:"newPrimary,omitempty"`
	// StoppedSeconds (on): the instance reports postgres stopped on request.
	StoppedSeconds *float64 `json:"stoppedSeconds,omitempty"`
	// StreamingSeconds (off): the instance reports a ready replica with an upstream.
	StreamingSeconds *float64 `json:"streamingSeconds,omitempty"`
	Upstream         string   `json:"upstream,omitempty"`
	Completed        bool     `json:"completed"`
	Error            string   `json:"error,omitempty"`
}

// FenceOptions configure Fence.
type FenceOptions struct {
	Timeout time.Duration
	// Force fences even when too few synchronous standbys would be left (commits would wait).
	Force bool
	// Progress receives one line per milestone as it happens (nil: none).
	Progress io.Writer
}

// Fence sets (on) or removes (off) the annotation pgwarden.io/fenced=true on pod and waits until
// the instance has stopped postgres (on) or streams again as a ready replica (off), or until
// opts.Timeout. When the operator refuses to fence a primary (no replica can take over), the
// annotation this call wrote is removed again and an error says why. The result is returned
// also with an error.
func (e *Env) Fence(ctx context.Context, cluster, pod string, on bool, opts FenceOptions) (*FenceResult, error) {
	res := &FenceResult{Cluster: cluster, Namespace: e.Namespace, Pod: pod, Fence: on}
	progress := func(format string, args ...any) {
		if opts.Progress != nil {
			fmt.Fprintf(opts.Progress, format+"\n", args...)
		}
	}
	fail := func(err error) (*FenceResult, error) {
		res.Error = err.Error()
		return res, err
	}
	target, err := e.instancePod(ctx, cluster, pod)
	if err != nil {
		return fail(err)
	}
	res.WasPrimary = on && target.Labels[ObservedRoleLabel] == rolePrimary
	if on && !opts.Force && target.Annotations[FencedAnnotation] != "true" {
		if err := e.checkSynchronous(ctx, cluster, pod, res.WasPrimary); err != nil {
			return fail(err)
		}
	}

	have, found := target.Annotations[FencedAnnotation]
	res.StartedAt = e.now()
	switch {
	case on && have == "true":
		progress("%s already carries %s=true: waiting for it to be stopped", pod, FencedAnnotation)
	case !on && !found:
		progress("%s carries no %s annotation: waiting for it to stream", pod, FencedAnnotation)
	default:
		var value any // nil: JSON null removes the annotation
		if on {
			value = "true"
		}
		if err := e.patchFence(ctx, pod, value); err != nil {
			return fail(err)
		}
		res.Annotated = true
		res.StartedAt = e.now()
		switch {
		case !on:
			progress("removed %s from %s", FencedAnnotation, pod)
		case res.WasPrimary:
			progress("annotated %s %s=true; it is the primary: the operator switches over first", pod, FencedAnnotation)
		default:
			progress("annotated %s %s=true", pod, FencedAnnotation)
		}
	}

	since := func() *float64 { s := e.now().Sub(res.StartedAt).Seconds(); return &s }
	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = 2 * time.Minute
	}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(PollInterval)
	defer tick.Stop()
	var last *InstanceStatus
	for {
		if on && res.WasPrimary && res.StoppedSeconds == nil {
			if why := e.fenceRefused(wctx, cluster, pod, res.StartedAt); why != "" {
				err := fmt.Errorf("the operator refuses to fence primary %s: %s", pod, why)
				if res.Annotated {
					// Nothing changes: the request this call made is withdrawn.
					if rerr := e.patchFence(context.WithoutCancel(ctx), pod, nil); rerr != nil {
						err = fmt.Errorf("%w; removing the annotation again failed too: %v", err, rerr)
					} else {
						err = fmt.Errorf("%w; removed %s again", err, FencedAnnotation)
					}
				}
				return fail(err)
			}
			if res.NewPrimary == "" {
				if p := e.otherPrimary(wctx, cluster, pod); p != "" {
					res.NewPrimary = p
					progress("+%s  %s is the primary now", fmtDur(*since()), p)
				}
			}
		}
		st, err := e.Fetcher.FetchStatus(wctx, e.Namespace, pod)
		if err == nil {
			last = st
			if on && st.Fenced && st.Phase == "fenced" && st.PostmasterPID == 0 {
				res.StoppedSeconds = since()
				res.Completed = true
				progress("+%s  %s is fenced: postgres stopped and held stopped", fmtDur(*res.StoppedSeconds), pod)
				return res, nil
			}
			if !on && !st.Fenced && st.Role == roleReplica && st.Phase == roleReplica && st.Ready && st.Upstream != "" {
				res.StreamingSeconds, res.Upstream = since(), st.Upstream
				res.Completed = true
				progress("+%s  %s is a ready replica again, streaming from %s", fmtDur(*res.StreamingSeconds), pod, st.Upstream)
				return res, nil
			}
		}
		select {
		case <-wctx.Done():
			if parent := context.Cause(ctx); parent != nil && !errors.Is(parent, context.DeadlineExceeded) {
				return fail(parent)
			}
			what := "stopped (phase fenced, no postmaster)"
			if !on {
				what = "a ready replica with an upstream"
			}
			seen := "its /status did not answer"
			if last != nil {
				seen = fmt.Sprintf("last /status: role %q, phase %q, fenced %t, postmaster %d, ready %t", last.Role, last.Phase, last.Fenced, last.PostmasterPID, last.Ready)
				if last.FencedReason != "" {
					seen += ": " + last.FencedReason
				}
			}
			return fail(fmt.Errorf("timed out after %s: %s is not %s; %s", timeout, pod, what, seen))
		case <-tick.C:
		}
	}
}

// checkSynchronous refuses a fence that would leave fewer ready replicas than
// spec.replication.synchronous.number: every commit would wait until the fence is lifted.
func (e *Env) checkSynchronous(ctx context.Context, cluster, pod string, primary bool) error {
	if e.Dynamic == nil {
		return nil
	}
	u, err := e.Dynamic.Resource(ClusterResource).Namespace(e.Namespace).Get(ctx, cluster, metav1.GetOptions{})
	if err != nil {
		return nil // no spec to check against (the instance alone decides)
	}
	var c pgv1.PostgresCluster
	if runtime.DefaultUnstructuredConverter.FromUnstructured(u.UnstructuredContent(), &c) != nil {
		return nil
	}
	n := int(c.Spec.Replication.Synchronous.Number)
	if n <= 0 {
		return nil
	}
	pods, err := e.clusterPods(ctx, cluster)
	if err != nil {
		return err
	}
	left := 0
	for _, p := range pods {
		if p.Name != pod && p.DeletionTimestamp == nil && p.Labels[ObservedRoleLabel] == roleReplica && podReady(&p) &&
			p.Annotations[FencedAnnotation] != "true" {
			left++
		}
	}
	if primary {
		left-- // one of them becomes the primary
	}
	if left < n {
		return fmt.Errorf("fencing %s would leave %d ready replica(s) to stream, but spec.replication.synchronous.number is %d: "+
			"every commit would wait until the fence is lifted; use --force to fence anyway", pod, max(left, 0), n)
	}
	return nil
}

func (e *Env) patchFence(ctx context.Context, pod string, value any) error {
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]any{FencedAnnotation: value}}})
	if _, err := e.Kube.CoreV1().Pods(e.Namespace).Patch(ctx, pod, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("cannot annotate Pod %s: %w", pod, err)
	}
	return nil
}

// otherPrimary returns the Pod of cluster other than pod labelled primary, or "".
func (e *Env) otherPrimary(ctx context.Context, cluster, pod string) string {
	pods, err := e.clusterPods(ctx, cluster)
	if err != nil {
		return ""
	}
	for _, p := range pods {
		if p.Name != pod && p.Labels[ObservedRoleLabel] == rolePrimary {
			return p.Name
		}
	}
	return ""
}

// fenceRefused returns the operator's reason for refusing to fence primary pod: a FenceRefused
// Event about the cluster or pod since `since`, or the cluster's status saying so; "" if none.
func (e *Env) fenceRefused(ctx context.Context, cluster, pod string, since time.Time) string {
	if e.Dynamic != nil {
		if u, err := e.Dynamic.Resource(ClusterResource).Namespace(e.Namespace).Get(ctx, cluster, metav1.GetOptions{}); err == nil {
			var c pgv1.PostgresCluster
			if runtime.DefaultUnstructuredConverter.FromUnstructured(u.UnstructuredContent(), &c) == nil &&
				strings.Contains(c.Status.PhaseReason, "primary "+pod+" is asked to fence") && strings.Contains(c.Status.PhaseReason, "no replica can take over") {
				return oneLine(c.Status.PhaseReason)
			}
		}
	}
	list, err := e.Kube.CoreV1().Events(e.Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return ""
	}
	var latest *corev1.Event
	for i := range list.Items {
		ev := &list.Items[i]
		if ev.Reason != "FenceRefused" || eventTime(ev).Before(since.Add(-time.Second)) {
			continue
		}
		if (ev.InvolvedObject.Kind == "Pod" && ev.InvolvedObject.Name == pod) || (ev.InvolvedObject.Kind == "PostgresCluster" && ev.InvolvedObject.Name == cluster) {
			if latest == nil || eventTime(ev).After(eventTime(latest)) {
				latest = ev
			}
		}
	}
	if latest == nil {
		return ""
	}
	return oneLine(latest.Message)
}
