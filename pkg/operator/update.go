package operator

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	pgv1 "github.com/pgwarden/pgwarden/api/v1"
	"github.com/pgwarden/pgwarden/pkg/roles"
)

// SpecHashAnnotation on an instance Pod is the hash of the Pod spec the operator built it
// with. Pod specs are mostly immutable, so a changed spec (image, resources, delays,
// scheduling) is applied by recreating the Pods, one at a time: replicas first, then the
// primary after a switchover to an updated replica.
const SpecHashAnnotation = "pgwarden.io/spec-hash"

// podSpecHash hashes the Pod spec newPod builds, independent of the instance's name and role.
func podSpecHash(c *pgv1.PostgresCluster, image string) string {
	p := newPod(c, "instance", roles.RoleReplica, image)
	b, _ := json.Marshal(p.Spec) // a PodSpec always marshals
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

// rollingUpdate recreates one instance whose Pod spec is stale, only when every instance is
// ready and no failover or switchover runs: replicas first (lowest number first); the primary
// last, after a switchover to the best replica (a single instance is simply recreated). It
// returns an outcome when it started a switchover.
func (r *Reconciler) rollingUpdate(ctx context.Context, c *pgv1.PostgresCluster, pods map[string]*corev1.Pod,
	statuses map[string]statusResult) (outcome, error) {
	st := &c.Status
	n := int(c.Spec.Instances)
	if st.CurrentPrimary == "" || st.TargetPrimary != st.CurrentPrimary || len(pods) != n {
		return outcome{}, nil
	}
	want := podSpecHash(c, r.image(c))
	var stale []string
	for name, p := range pods {
		if p.DeletionTimestamp != nil || !podReady(p) || podIndex(c.Name, name) > n {
			return outcome{}, nil // one change at a time, and only from a healthy cluster
		}
		if p.Annotations[SpecHashAnnotation] != want {
			stale = append(stale, name)
		}
	}
	if len(stale) == 0 {
		return outcome{}, nil
	}
	slices.SortFunc(stale, func(a, b string) int { return podIndex(c.Name, a) - podIndex(c.Name, b) })
	for _, name := range stale {
		if name == st.TargetPrimary {
			continue
		}
		if err := r.Client.Delete(ctx, pods[name]); err != nil {
			return outcome{}, fmt.Errorf("cannot delete pod %s to update it: %w", name, err)
		}
		r.event(c, pods[name], corev1.EventTypeNormal, "InstanceUpdating", "recreating replica %s with the new pod spec", name)
		return outcome{}, nil
	}
	// Only the primary is stale.
	primary := pods[st.TargetPrimary]
	if n == 1 {
		if err := r.Client.Delete(ctx, primary); err != nil {
			return outcome{}, fmt.Errorf("cannot delete pod %s to update it: %w", primary.Name, err)
		}
		r.event(c, primary, corev1.EventTypeWarning, "InstanceUpdating",
			"recreating the only instance %s with the new pod spec: the cluster is down until it is back", primary.Name)
		return outcome{}, nil
	}
	var cands []Candidate
	for name, p := range pods {
		if name == st.TargetPrimary {
			continue
		}
		cd := Candidate{Name: name, Usable: switchoverProblem(p, name) == ""}
		if a, ok := statuses[name]; ok {
			cd.Status, cd.Err = a.status, a.err
		}
		cands = append(cands, cd)
	}
	choice, err := ChooseCandidate(cands, int(c.Spec.Replication.Synchronous.Number))
	if err != nil {
		return outcome{}, nil // retried at the next resync; the status shows why nothing moves
	}
	old := st.TargetPrimary
	reason := fmt.Sprintf("switching over from %s to %s to apply the new pod spec to %s", old, choice, old)
	st.TargetPrimary, st.Phase, st.PhaseReason = choice, pgv1.PhaseSwitchingOver, reason
	st.TransitionStartedAt = &metav1.Time{Time: r.now()}
	if err := r.persistStatus(ctx, c); err != nil {
		return outcome{}, err
	}
	if err := r.handOver(ctx, c, primary, pods[choice]); err != nil {
		return outcome{}, err
	}
	switchoversTotal.Inc()
	r.event(c, pods[choice], corev1.EventTypeNormal, "SwitchoverStarted", "%s", reason)
	return outcome{phase: pgv1.PhaseSwitchingOver, reason: reason, requeue: busyResync}, nil
}
