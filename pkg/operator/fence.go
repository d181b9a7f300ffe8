package operator

import (
	"context"
	"fmt"
	"maps"
	"slices"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	pgv1 "github.com/pgwarden/pgwarden/api/v1"
	"github.com/pgwarden/pgwarden/pkg/roles"
)

// Fencing on request: a user (usually `kubectl pgwarden fence`) sets pgwarden.io/fenced=true on
// an instance's Pod; the instance stops PostgreSQL (fast shutdown) and keeps it stopped until the
// annotation is removed or set to "false". A primary stops only once it is a replica: the
// operator switches over to the best ready replica first, or, when there is none, leaves the
// primary running and says so (phase Degraded, Event FenceRefused). A fenced instance is never a
// failover or switchover candidate, and its being stopped is no failure: it does not make the
// cluster Degraded and triggers nothing.
//
// The fence lives on the Pod: deleting the Pod (or the operator recreating it) lifts it.

// fenceRequest reads a Pod's fence annotation. An invalid value is reported (err) and changes
// nothing: it neither starts a switchover nor makes the Pod a candidate (the instance keeps its
// last valid value, which may be "true").
func fenceRequest(p *corev1.Pod) (requested, excluded bool, err error) {
	if p == nil {
		return false, false, nil
	}
	v, found := p.Annotations[roles.FencedAnnotation]
	f, err := roles.ParseFenced(v, found)
	if err != nil {
		return false, true, err
	}
	return f, f, nil
}

// fenceExcluded says whether p must not become primary because of a fence.
func fenceExcluded(p *corev1.Pod) bool {
	_, excluded, _ := fenceRequest(p)
	return excluded
}

// handleFencedPrimary switches over away from the established primary whose Pod asks to be
// fenced. With no replica able to take over, the primary keeps running: taking the only primary
// down would be an outage nobody asked for in so many words.
func (r *Reconciler) handleFencedPrimary(ctx context.Context, c *pgv1.PostgresCluster, pods map[string]*corev1.Pod) (outcome, error) {
	st := &c.Status
	old := st.TargetPrimary
	var cands []Candidate
	for _, name := range slices.Sorted(maps.Keys(pods)) {
		if name == old || podIndex(c.Name, name) > int(c.Spec.Instances) {
			continue
		}
		problem := switchoverProblem(pods[name], name)
		cands = append(cands, Candidate{Name: name, Usable: problem == "", Why: problem})
	}
	choice, err := r.chooseSuccessor(ctx, c, pods, cands)
	if err != nil {
		reason := fmt.Sprintf("primary %s is asked to fence (%s=true) but no replica can take over (%v): it keeps running as the primary",
			old, roles.FencedAnnotation, err)
		if st.PhaseReason != reason {
			r.event(c, pods[old], corev1.EventTypeWarning, "FenceRefused", "%s", reason)
		}
		return outcome{phase: pgv1.PhaseDegraded, reason: reason, requeue: busyResync}, nil
	}
	reason := fmt.Sprintf("switching over from %s to %s: %s is asked to fence (%s=true)", old, choice, old, roles.FencedAnnotation)
	st.TargetPrimary, st.Phase, st.PhaseReason = choice, pgv1.PhaseSwitchingOver, reason
	st.TransitionStartedAt = &metav1.Time{Time: r.now()}
	if err := r.persistStatus(ctx, c); err != nil {
		return outcome{}, err
	}
	if err := r.handOver(ctx, c, pods[old], pods[choice]); err != nil {
		return outcome{}, err
	}
	switchoversTotal.Inc()
	r.event(c, pods[choice], corev1.EventTypeNormal, "SwitchoverStarted", "%s", reason)
	return outcome{phase: pgv1.PhaseSwitchingOver, reason: reason, requeue: busyResync}, nil
}

// fenceStatus fills the fence part of an instance's status: Fenced, and the message that says
// where the fence stands (or that the annotation is invalid). fencedDown is true when the
// instance is fenced and not ready: that is intended and no problem of the cluster.
func fenceStatus(is *pgv1.InstanceStatus, p *corev1.Pod, sr statusResult, hasStatus bool) (fencedDown bool) {
	requested, _, err := fenceRequest(p)
	if err != nil {
		is.Message = fmt.Sprintf("ignoring annotation %s: %v", roles.FencedAnnotation, err)
		return false
	}
	stopped := hasStatus && sr.status != nil && sr.status.Fenced
	if !requested && !stopped {
		return false
	}
	is.Fenced = true
	switch {
	case !requested:
		is.Message = "fence lifted: postgres starts again as a replica"
	case is.Ready:
		is.Message = "fence requested: keeps running until it is a replica (switchover first)"
	case stopped:
		is.Message = "fenced: postgres stopped on request"
	default:
		is.Message = "fence requested: waiting for postgres to stop"
	}
	return !is.Ready
}
