package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// PollInterval is how often promote reads the Lease, the Pods and the instances' /status.
const PollInterval = 100 * time.Millisecond

// PromoteResult is what promote reports; durations are from the annotation write.
type PromoteResult struct {
	Cluster    string    `json:"cluster"`
	Namespace  string    `json:"namespace"`
	NewPrimary string    `json:"newPrimary"`
	OldPrimary string    `json:"oldPrimary,omitempty"`
	StartedAt  time.Time `json:"startedAt"`
	// Annotated is false when the Pod already carried pgwarden.io/role=primary (a switchover to
	// it was already requested); promote then only follows it.
	Annotated bool `json:"annotated"`
	// LeaseAcquiredSeconds: the primary Lease names the new primary.
	LeaseAcquiredSeconds *float64 `json:"leaseAcquiredSeconds,omitempty"`
	// AcceptsWritesSeconds: the new primary's /status says role primary and ready.
	AcceptsWritesSeconds *float64 `json:"acceptsWritesSeconds,omitempty"`
	// OldPrimaryStreamingSeconds: the old primary's /status says role replica with an upstream.
	OldPrimaryStreamingSeconds *float64 `json:"oldPrimaryStreamingSeconds,omitempty"`
	OldPrimaryUpstream         string   `json:"oldPrimaryUpstream,omitempty"`
	// RWRoutesSeconds: the -rw Service's EndpointSlices name the new primary, ready, and no
	// other ready endpoint (kube-proxy programs that a moment later). Not waited for when the
	// Service has no EndpointSlices (no endpoint-slice controller).
	RWRoutesSeconds *float64 `json:"rwRoutesSeconds,omitempty"`
	rwUntracked     bool
	Completed       bool   `json:"completed"`
	Error           string `json:"error,omitempty"`
}

// PromoteOptions configure Promote.
type PromoteOptions struct {
	Timeout time.Duration
	// Progress receives one line per milestone as it happens (nil: none).
	Progress io.Writer
}

// Promote asks for pod to become the primary of cluster with the annotation pgwarden.io/role=primary
// and follows the switchover until the new primary accepts writes and the old primary streams
// from it, or until opts.Timeout. The result is returned also with an error.
func (e *Env) Promote(ctx context.Context, cluster, pod string, opts PromoteOptions) (*PromoteResult, error) {
	res := &PromoteResult{Cluster: cluster, Namespace: e.Namespace, NewPrimary: pod}
	progress := func(format string, args ...any) {
		if opts.Progress != nil {
			fmt.Fprintf(opts.Progress, format+"\n", args...)
		}
	}
	fail := func(err error) (*PromoteResult, error) {
		res.Error = err.Error()
		return res, err
	}

	target, err := e.instancePod(ctx, cluster, pod)
	if err != nil {
		return fail(err)
	}
	if target.Labels[ObservedRoleLabel] == rolePrimary {
		return fail(fmt.Errorf("pod %s is already the primary of %s", pod, cluster))
	}

	pods, err := e.clusterPods(ctx, cluster)
	if err != nil {
		return fail(err)
	}
	for _, p := range pods {
		if p.Name != pod && p.Labels[ObservedRoleLabel] == rolePrimary {
			res.OldPrimary = p.Name
		}
	}
	if res.OldPrimary == "" {
		if l, err := e.Kube.CoordinationV1().Leases(e.Namespace).Get(ctx, LeaseName(cluster), metav1.GetOptions{}); err == nil &&
			l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity != pod && *l.Spec.HolderIdentity != "" {
			res.OldPrimary = *l.Spec.HolderIdentity
		}
	}

	res.StartedAt = e.now()
	if target.Annotations[DesiredRoleAnnotation] == rolePrimary {
		progress("%s already carries %s=primary: following the switchover", pod, DesiredRoleAnnotation)
	} else {
		patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{DesiredRoleAnnotation: rolePrimary}}})
		if _, err := e.Kube.CoreV1().Pods(e.Namespace).Patch(ctx, pod, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
			return fail(fmt.Errorf("cannot annotate Pod %s: %w", pod, err))
		}
		res.Annotated = true
		res.StartedAt = e.now()
		if res.OldPrimary != "" {
			progress("annotated %s %s=primary (primary now: %s)", pod, DesiredRoleAnnotation, res.OldPrimary)
		} else {
			progress("annotated %s %s=primary (no current primary)", pod, DesiredRoleAnnotation)
		}
	}

	since := func() *float64 { s := e.now().Sub(res.StartedAt).Seconds(); return &s }
	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = 60 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(PollInterval)
	defer tick.Stop()
	routesKnown := true // the -rw Service has EndpointSlices to follow
	for {
		// The operator may reject the request and write the annotation back to replica.
		if p, err := e.Kube.CoreV1().Pods(e.Namespace).Get(ctx, pod, metav1.GetOptions{}); err == nil &&
			p.Annotations[DesiredRoleAnnotation] != rolePrimary && res.AcceptsWritesSeconds == nil {
			why := e.rejection(ctx, cluster, pod)
			return fail(fmt.Errorf("the switchover to %s was refused: %s=%q now%s", pod, DesiredRoleAnnotation, p.Annotations[DesiredRoleAnnotation], why))
		}
		if res.LeaseAcquiredSeconds == nil {
			if l, err := e.Kube.CoordinationV1().Leases(e.Namespace).Get(ctx, LeaseName(cluster), metav1.GetOptions{}); err == nil &&
				l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity == pod {
				res.LeaseAcquiredSeconds = since()
				progress("+%s  Lease %s held by %s", fmtDur(*res.LeaseAcquiredSeconds), LeaseName(cluster), pod)
			}
		}
		newSt, oldSt := e.fetchPair(ctx, pod, res.OldPrimary)
		if res.AcceptsWritesSeconds == nil && newSt != nil && newSt.Role == rolePrimary && newSt.Ready {
			res.AcceptsWritesSeconds = since()
			progress("+%s  %s accepts writes (role primary, ready, timeline %d)", fmtDur(*res.AcceptsWritesSeconds), pod, newSt.Timeline)
		}
		if res.OldPrimary != "" && res.OldPrimaryStreamingSeconds == nil && oldSt != nil && oldSt.Role == roleReplica && oldSt.Upstream != "" {
			res.OldPrimaryStreamingSeconds, res.OldPrimaryUpstream = since(), oldSt.Upstream
			progress("+%s  %s streams again (role replica, upstream %s)", fmtDur(*res.OldPrimaryStreamingSeconds), res.OldPrimary, oldSt.Upstream)
		}
		if res.AcceptsWritesSeconds != nil && res.RWRoutesSeconds == nil {
			if routes, known := e.rwRoutesTo(ctx, cluster, pod); !known {
				routesKnown, res.rwUntracked = false, true
			} else if routes {
				res.RWRoutesSeconds = since()
				progress("+%s  Service %s-rw routes to %s", fmtDur(*res.RWRoutesSeconds), cluster, pod)
			}
		}
		if res.AcceptsWritesSeconds != nil && (res.OldPrimary == "" || res.OldPrimaryStreamingSeconds != nil) &&
			(res.RWRoutesSeconds != nil || !routesKnown) {
			res.Completed = true
			progress("switchover to %s completed in %s", pod, fmtDur(*since()))
			return res, nil
		}
		select {
		case <-ctx.Done():
			if parent := context.Cause(ctx); parent != nil && !errors.Is(parent, context.DeadlineExceeded) {
				return fail(parent)
			}
			return fail(fmt.Errorf("timed out after %s: %s", timeout, res.missing()))
		case <-tick.C:
		}
	}
}

// rwRoutesTo says whether the cluster's -rw Service routes to pod alone: its EndpointSlices list
// pod as ready and no other ready endpoint. known is false when the Service has no
// EndpointSlices at all (nothing maintains them) or they cannot be read.
func (e *Env) rwRoutesTo(ctx context.Context, cluster, pod string) (routes, known bool) {
	slices, err := e.Kube.DiscoveryV1().EndpointSlices(e.Namespace).List(ctx,
		metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + cluster + "-rw"})
	if err != nil || len(slices.Items) == 0 {
		return false, false
	}
	found := false
	for _, sl := range slices.Items {
		for _, ep := range sl.Endpoints {
			if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
				continue
			}
			if ep.TargetRef == nil || ep.TargetRef.Kind != "Pod" || ep.TargetRef.Name != pod {
				return false, true
			}
			found = true
		}
	}
	return found, true
}

// instancePod reads pod and checks that it is a running instance of cluster.
func (e *Env) instancePod(ctx context.Context, cluster, pod string) (*corev1.Pod, error) {
	target, err := e.Kube.CoreV1().Pods(e.Namespace).Get(ctx, pod, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("cannot read Pod %s/%s: %w", e.Namespace, pod, err)
	}
	if got := target.Labels[ClusterLabel]; got != cluster {
		if got == "" {
			return nil, fmt.Errorf("pod %s is not an instance of cluster %s (it has no %s label)", pod, cluster, ClusterLabel)
		}
		return nil, fmt.Errorf("pod %s is not an instance of cluster %s (it belongs to %s)", pod, cluster, got)
	}
	if target.DeletionTimestamp != nil {
		return nil, fmt.Errorf("pod %s is being deleted", pod)
	}
	return target, nil
}

// missing says which milestones were not reached.
func (r *PromoteResult) missing() string {
	var m []string
	if r.LeaseAcquiredSeconds == nil {
		m = append(m, fmt.Sprintf("the Lease was not acquired by %s", r.NewPrimary))
	}
	if r.AcceptsWritesSeconds == nil {
		m = append(m, fmt.Sprintf("%s does not report role primary and ready", r.NewPrimary))
	}
	if r.OldPrimary != "" && r.OldPrimaryStreamingSeconds == nil {
		m = append(m, fmt.Sprintf("%s (the old primary) does not report role replica with an upstream", r.OldPrimary))
	}
	if r.AcceptsWritesSeconds != nil && r.RWRoutesSeconds == nil && !r.rwUntracked {
		m = append(m, fmt.Sprintf("Service %s-rw does not route to %s alone", r.Cluster, r.NewPrimary))
	}
	return strings.Join(m, "; ")
}

// fetchPair reads the /status of a and b (if not empty) in parallel; a failed read is nil.
func (e *Env) fetchPair(ctx context.Context, a, b string) (sa, sb *InstanceStatus) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	var wg sync.WaitGroup
	get := func(name string, into **InstanceStatus) {
		defer wg.Done()
		if st, err := e.Fetcher.FetchStatus(ctx, e.Namespace, name); err == nil {
			*into = st
		}
	}
	wg.Add(1)
	go get(a, &sa)
	if b != "" {
		wg.Add(1)
		go get(b, &sb)
	}
	wg.Wait()
	return sa, sb
}

// rejection returns ": <message>" of the latest SwitchoverRequestRejected Event about the cluster
// or pod, or "".
func (e *Env) rejection(ctx context.Context, cluster, pod string) string {
	list, err := e.Kube.CoreV1().Events(e.Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return ""
	}
	var evs []corev1.Event
	for _, ev := range list.Items {
		if ev.Reason == "SwitchoverRequestRejected" &&
			((ev.InvolvedObject.Kind == "Pod" && ev.InvolvedObject.Name == pod) || (ev.InvolvedObject.Kind == "PostgresCluster" && ev.InvolvedObject.Name == cluster)) {
			evs = append(evs, ev)
		}
	}
	if len(evs) == 0 {
		return ""
	}
	sort.SliceStable(evs, func(i, j int) bool { return eventTime(&evs[i]).Before(eventTime(&evs[j])) })
	return ": " + oneLine(evs[len(evs)-1].Message)
}

func fmtDur(s float64) string { return fmt.Sprintf("%.3fs", s) }
