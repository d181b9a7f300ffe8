package operator

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	pgv1 "github.com/pgwarden/pgwarden/api/v1"
	"github.com/pgwarden/pgwarden/pkg/roles"
)

// leaseSkew is added to a Lease's renew time before the operator judges it: the renew time was
// written by another machine's clock. The judgement only starts a failover; the instances' own
// Lease protocol (which never trusts remote timestamps) keeps two primaries from writing.
const leaseSkew = 5 * time.Second

// leaseLapse is how long after its renew time a primary Lease counts as lapsed: the holder's
// renew deadline (the instances the operator creates use the default) plus leaseSkew. A holder
// that has not renewed for its renew deadline has fenced itself (stopped accepting writes), so
// the failover can start then; its successor still takes the Lease only once it has expired in
// the successor's own view (LeaseDuration after it last saw it renewed), so this never makes two
// writers. Waiting for the Lease duration plus leaseSkew instead would add that much to every
// failover of a partitioned or frozen primary for nothing.
const leaseLapse = roles.DefaultRenewDeadline + leaseSkew

// leaseLapsed says whether the Lease, last renewed at renew, has lapsed at now; if not, in how
// long it will (when to look again).
func leaseLapsed(renew, now time.Time) (bool, time.Duration) {
	lapses := renew.Add(leaseLapse)
	if now.After(lapses) {
		return true, 0
	}
	return false, lapses.Sub(now) + 100*time.Millisecond
}

// outcome is what reconcileRoles decided about the phase; an empty phase means "steady": the
// phase follows from the instances' readiness.
type outcome struct {
	phase   pgv1.Phase
	reason  string
	requeue time.Duration
}

// reconcileRoles decides who should be primary and writes it as pgwarden.io/role annotations.
//
// Status.TargetPrimary is the decision, Status.CurrentPrimary the last primary that confirmed
// it (labelled itself primary and is ready). They differ exactly while a failover or switchover
// runs; Status.Phase then says which.
func (r *Reconciler) reconcileRoles(ctx context.Context, c *pgv1.PostgresCluster, pods map[string]*corev1.Pod) (outcome, error) {
	st := &c.Status
	if st.TargetPrimary == "" {
		st.TargetPrimary = podName(c.Name, 1)
		r.event(c, nil, corev1.EventTypeNormal, "Bootstrapping",
			"creating %s alone as the first primary; the replicas follow once it is primary", st.TargetPrimary)
	}
	if st.CurrentPrimary == "" {
		tp := pods[st.TargetPrimary]
		if tp == nil || !hasRole(tp, roles.RolePrimary) || !podReady(tp) {
			return outcome{phase: pgv1.PhaseCreating, reason: fmt.Sprintf("waiting for %s to become a ready primary", st.TargetPrimary)},
				r.enforceRoles(ctx, c, pods)
		}
		st.CurrentPrimary = st.TargetPrimary
		r.event(c, tp, corev1.EventTypeNormal, "PrimaryEstablished", "%s is the first primary; creating the replicas", tp.Name)
	}
	var out outcome
	var err error
	switch {
	case st.TargetPrimary != st.CurrentPrimary:
		out, err = r.reconcileTransition(ctx, c, pods)
	default:
		var failing bool
		var why string
		var recheck time.Duration
		failing, why, recheck, err = r.primaryFailing(ctx, c, pods[st.TargetPrimary])
		if err != nil {
			return outcome{}, err
		}
		if failing {
			out, err = r.handleFailingPrimary(ctx, c, pods, why)
			break
		}
		if st.PrimaryFailingSince != nil {
			st.PrimaryFailingSince = nil
			r.event(c, pods[st.TargetPrimary], corev1.EventTypeNormal, "PrimaryRecovered", "primary %s is healthy again; no failover", st.TargetPrimary)
		}
		out, err = r.handleSwitchoverRequests(ctx, c, pods)
		if requested, _, _ := fenceRequest(pods[st.TargetPrimary]); err == nil && out.phase == "" && requested {
			out, err = r.handleFencedPrimary(ctx, c, pods)
		}
		if err == nil && out.requeue == 0 && recheck > 0 && recheck < steadyResync {
			out.requeue = recheck // the Lease lapses before the next steady resync
		}
	}
	if err != nil {
		return outcome{}, err
	}
	return out, r.enforceRoles(ctx, c, pods)
}

// reconcileTransition follows a running failover or switchover to its end.
func (r *Reconciler) reconcileTransition(ctx context.Context, c *pgv1.PostgresCluster, pods map[string]*corev1.Pod) (outcome, error) {
	st := &c.Status
	kind := st.Phase
	if kind != pgv1.PhaseSwitchingOver {
		kind = pgv1.PhaseFailingOver
	}
	tp := pods[st.TargetPrimary]
	if tp != nil && tp.DeletionTimestamp == nil && hasRole(tp, roles.RolePrimary) && podReady(tp) {
		var took time.Duration
		if st.TransitionStartedAt != nil {
			took = r.now().Sub(st.TransitionStartedAt.Time)
		}
		old := st.CurrentPrimary
		st.CurrentPrimary, st.TransitionStartedAt = st.TargetPrimary, nil
		if kind == pgv1.PhaseSwitchingOver {
			switchoverDuration.Observe(took.Seconds())
			r.event(c, tp, corev1.EventTypeNormal, "SwitchoverCompleted", "%s is primary (was %s) after %s", tp.Name, old, took.Round(time.Millisecond))
		} else {
			failoverDuration.Observe(took.Seconds())
			r.event(c, tp, corev1.EventTypeNormal, "FailoverCompleted", "%s is primary (was %s) after %s", tp.Name, old, took.Round(time.Millisecond))
		}
		return outcome{}, nil
	}
	if why := podGone(tp, st.TargetPrimary); why != "" {
		return r.failover(ctx, c, pods, st.TargetPrimary, fmt.Sprintf("the new primary failed before it took over: %s", why))
	}
	return outcome{phase: kind, reason: fmt.Sprintf("waiting for %s to become a ready primary", st.TargetPrimary), requeue: busyResync}, nil
}

// podGone says why pod (named name) cannot run PostgreSQL now, or "".
func podGone(p *corev1.Pod, name string) string {
	switch {
	case p == nil:
		return fmt.Sprintf("pod %s does not exist", name)
	case p.DeletionTimestamp != nil:
		return fmt.Sprintf("pod %s is being deleted", name)
	}
	return containerNotRunning(p)
}

// primaryFailing says whether the established primary is failing, and why; when it is not,
// recheck (if not zero) says when its Lease would lapse without a renewal.
func (r *Reconciler) primaryFailing(ctx context.Context, c *pgv1.PostgresCluster, p *corev1.Pod) (failing bool, why string, recheck time.Duration, err error) {
	if why := podGone(p, c.Status.TargetPrimary); why != "" {
		return true, why, 0, nil
	}
	if !podReady(p) {
		return true, fmt.Sprintf("pod %s is not ready", p.Name), 0, nil
	}
	lease, err := r.getLease(ctx, c)
	if err != nil || lease == nil {
		return false, "", 0, err // no Lease: nothing to judge by (the holder re-creates a deleted one)
	}
	holder := ""
	if lease.Spec.HolderIdentity != nil {
		holder = *lease.Spec.HolderIdentity
	}
	switch {
	case holder == "":
		return true, fmt.Sprintf("the primary Lease %s has no holder", lease.Name), 0, nil
	case holder != p.Name:
		return true, fmt.Sprintf("the primary Lease %s is held by %s, not %s", lease.Name, holder, p.Name), 0, nil
	case lease.Spec.RenewTime != nil:
		lapsed, in := leaseLapsed(lease.Spec.RenewTime.Time, r.now())
		if lapsed {
			return true, fmt.Sprintf("the primary Lease %s was not renewed within the holder's renew deadline (last renewed %s)",
				lease.Name, lease.Spec.RenewTime.UTC().Format(time.RFC3339Nano)), 0, nil
		}
		return false, "", in, nil
	}
	return false, "", 0, nil
}

// handleFailingPrimary waits failover.delay, then fails over, unless failover is disabled.
func (r *Reconciler) handleFailingPrimary(ctx context.Context, c *pgv1.PostgresCluster, pods map[string]*corev1.Pod, why string) (outcome, error) {
	st := &c.Status
	now := r.now()
	if st.PrimaryFailingSince == nil {
		st.PrimaryFailingSince = &metav1.Time{Time: now}
		r.event(c, pods[st.TargetPrimary], corev1.EventTypeWarning, "PrimaryFailing", "primary %s is failing: %s", st.TargetPrimary, why)
	}
	if c.Spec.Failover.IsDisabled {
		reason := why + "; automatic failover is disabled (spec.failover.isDisabled)"
		if st.PhaseReason != reason {
			r.event(c, nil, corev1.EventTypeWarning, "FailoverDisabled", "not failing over: %s", reason)
		}
		return outcome{phase: pgv1.PhaseFailoverRequired, reason: reason, requeue: busyResync}, nil
	}
	delay := time.Duration(c.Spec.Failover.Delay) * time.Second
	if wait := st.PrimaryFailingSince.Add(delay).Sub(now); wait > 0 {
		return outcome{phase: pgv1.PhaseFailoverRequired,
			reason:  fmt.Sprintf("%s; failing over in %s (spec.failover.delay)", why, wait.Round(time.Second)),
			requeue: wait}, nil
	}
	return r.failover(ctx, c, pods, st.TargetPrimary, why)
}

// failover asks every other instance for its position, chooses the best (ChooseCandidate),
// records the choice, then hands over (handOver: the choice annotated primary, old's Lease broken
// if its container is not running, old annotated replica).
//
// The old primary is demoted only once there is a successor: a primary that is merely not
// ready, with no replica able to take over, keeps its role rather than being taken down for
// nothing. Choosing before the demotion loses nothing: a promoting instance waits until it has
// replayed the old primary's final LSN (handed over on the Lease) when there is one.
func (r *Reconciler) failover(ctx context.Context, c *pgv1.PostgresCluster, pods map[string]*corev1.Pod, old, why string) (outcome, error) {
	st := &c.Status
	var cands []Candidate
	for i := 1; i <= int(c.Spec.Instances); i++ {
		name := podName(c.Name, i)
		if name == old {
			continue
		}
		p := pods[name]
		why := podGone(p, name)
		if why == "" && fenceExcluded(p) {
			why = fmt.Sprintf("fenced (%s)", roles.FencedAnnotation)
		}
		cands = append(cands, Candidate{Name: name, Usable: why == "", Why: why})
	}
	choice, err := r.chooseSuccessor(ctx, c, pods, cands)
	if err != nil {
		reason := fmt.Sprintf("primary %s failed (%s); %v", old, why, err)
		if st.PhaseReason != reason {
			r.event(c, nil, corev1.EventTypeWarning, "NoFailoverCandidate", "%s", reason)
		}
		if st.PrimaryFailingSince == nil {
			st.PrimaryFailingSince = &metav1.Time{Time: r.now()}
		}
		return outcome{phase: pgv1.PhaseFailoverRequired, reason: reason, requeue: busyResync}, nil
	}
	lsn := ""
	for _, cd := range cands {
		if cd.Name == choice {
			lsn = cd.Status.ReceivedLSN
		}
	}
	reason := fmt.Sprintf("primary %s failed (%s); promoting %s (received LSN %s, the highest)", old, why, choice, lsn)
	st.TargetPrimary, st.Phase, st.PhaseReason = choice, pgv1.PhaseFailingOver, reason
	st.TransitionStartedAt, st.PrimaryFailingSince = &metav1.Time{Time: r.now()}, nil
	if err := r.persistStatus(ctx, c); err != nil {
		return outcome{}, err
	}
	// The old pod also when it is being deleted: its instance manager is shutting down, and once
	// it sees it is replaced it ends its smart shutdown early and hands over its final LSN.
	if err := r.handOver(ctx, c, pods[old], pods[choice]); err != nil {
		return outcome{}, err
	}
	failoversTotal.Inc()
	r.event(c, pods[choice], corev1.EventTypeWarning, "FailoverStarted", "%s", reason)
	return outcome{phase: pgv1.PhaseFailingOver, reason: reason, requeue: busyResync}, nil
}

// chooseSuccessor asks the usable candidates for their /status, in parallel and each bounded by
// StatusTimeout, fills their answers into cands, and chooses among them (ChooseCandidate).
func (r *Reconciler) chooseSuccessor(ctx context.Context, c *pgv1.PostgresCluster, pods map[string]*corev1.Pod, cands []Candidate) (string, error) {
	var ask []*corev1.Pod
	for _, cd := range cands {
		if cd.Usable {
			ask = append(ask, pods[cd.Name])
		}
	}
	answers := fetchStatuses(ctx, r.Status, ask, r.StatusTimeout)
	for i := range cands {
		if a, ok := answers[cands[i].Name]; ok {
			cands[i].Status, cands[i].Err = a.status, a.err
		}
	}
	return ChooseCandidate(cands, int(c.Spec.Replication.Synchronous.Number))
}

// handOver carries out a recorded decision: it annotates the successor primary, breaks the old
// primary's Lease if the kubelet reports its container not running (no process of it can write),
// and annotates the old primary replica (old may be nil), in this order. An operator that dies
// between two of these steps leaves a cluster that recovers without it: before the Lease is
// broken, the old primary's restarted instance still holds it and serves again (a restart) while
// the successor waits for it; after, the successor takes it at once. Annotating the old primary
// first would leave, for a leader Lease (~15 s), no instance asked to be primary. Who writes is
// decided by the primary Lease in every order: the successor waits while the old primary holds it.
func (r *Reconciler) handOver(ctx context.Context, c *pgv1.PostgresCluster, old, successor *corev1.Pod) error {
	if err := r.setDesiredRole(ctx, successor, roles.RolePrimary); err != nil {
		return err
	}
	if old == nil {
		return nil
	}
	if containerNotRunning(old) != "" {
		if err := r.breakLease(ctx, c, old.Name); err != nil {
			return err
		}
	}
	return r.setDesiredRole(ctx, old, roles.RoleReplica)
}

// breakLease clears the primary Lease's holder if it is old: the kubelet reports old's
// container not running, so no process of old can still write, and its successor need not wait
// for the Lease to expire. The update carries the resourceVersion of the read, so a renewal in
// between (impossible without a running process, but cheap to guard) makes it fail.
func (r *Reconciler) breakLease(ctx context.Context, c *pgv1.PostgresCluster, old string) error {
	l, err := r.getLease(ctx, c)
	if err != nil || l == nil || l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity != old {
		return err
	}
	l.Spec.HolderIdentity = nil
	if err := r.Client.Update(ctx, l); err != nil {
		if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
			return nil // changed meanwhile: the next reconcile looks again
		}
		return fmt.Errorf("cannot break Lease %s: %w", l.Name, err)
	}
	r.event(c, l, corev1.EventTypeWarning, "LeaseBroken",
		"the kubelet reports the container of %s not running: cleared the holder of Lease %s instead of waiting for it to expire", old, l.Name)
	return nil
}

// switchoverRequest is a request to make pod primary.
type switchoverRequest struct {
	pod      string
	fromSpec bool      // spec.failover.promotePod; else the pod's annotation
	at       time.Time // when it was made (managedFields)
}

func (q switchoverRequest) source() string {
	if q.fromSpec {
		return "spec.failover.promotePod"
	}
	return "annotation " + roles.DesiredRoleAnnotation + "=primary on " + q.pod
}

// handleSwitchoverRequests starts a switchover to the most recent request; every other request
// is reverted (an annotation goes back to replica; a promotePod is marked handled) with an Event.
func (r *Reconciler) handleSwitchoverRequests(ctx context.Context, c *pgv1.PostgresCluster, pods map[string]*corev1.Pod) (outcome, error) {
	st := &c.Status
	var reqs []switchoverRequest
	for name, p := range pods {
		if name != st.TargetPrimary && p.DeletionTimestamp == nil && p.Annotations[roles.DesiredRoleAnnotation] == string(roles.RolePrimary) {
			reqs = append(reqs, switchoverRequest{pod: name,
				at: fieldTime(p.ManagedFields, "f:metadata", "f:annotations", "f:"+roles.DesiredRoleAnnotation)})
		}
	}
	if c.Spec.Failover.PromotePod == "" {
		// A cleared field ends the request: setting the same pod again is a new request.
		st.HandledPromotePod = ""
	}
	if pp := c.Spec.Failover.PromotePod; pp != "" && pp != st.HandledPromotePod {
		if pp == st.TargetPrimary {
			st.HandledPromotePod = pp
			r.event(c, nil, corev1.EventTypeNormal, "SwitchoverNotNeeded", "spec.failover.promotePod: %s is already the primary", pp)
		} else {
			reqs = append(reqs, switchoverRequest{pod: pp, fromSpec: true,
				at: fieldTime(c.ManagedFields, "f:spec", "f:failover", "f:promotePod")})
		}
	}
	if len(reqs) == 0 {
		return outcome{}, nil
	}
	slices.SortFunc(reqs, func(a, b switchoverRequest) int {
		return cmp.Or(b.at.Compare(a.at), boolCmp(b.fromSpec, a.fromSpec), cmp.Compare(a.pod, b.pod))
	})
	win := reqs[0]
	for _, lose := range reqs[1:] {
		if err := r.rejectRequest(ctx, c, pods, lose, fmt.Sprintf("superseded by the more recent request (%s)", win.source())); err != nil {
			return outcome{}, err
		}
	}
	if problem := switchoverProblem(pods[win.pod], win.pod); problem != "" {
		return outcome{}, r.rejectRequest(ctx, c, pods, win, problem)
	}
	old := st.TargetPrimary
	if win.fromSpec {
		st.HandledPromotePod = win.pod
	}
	reason := fmt.Sprintf("switching over from %s to %s, requested by %s", old, win.pod, win.source())
	st.TargetPrimary, st.Phase, st.PhaseReason = win.pod, pgv1.PhaseSwitchingOver, reason
	st.TransitionStartedAt = &metav1.Time{Time: r.now()}
	if err := r.persistStatus(ctx, c); err != nil {
		return outcome{}, err
	}
	if err := r.handOver(ctx, c, pods[old], pods[win.pod]); err != nil {
		return outcome{}, err
	}
	switchoversTotal.Inc()
	r.event(c, pods[win.pod], corev1.EventTypeNormal, "SwitchoverStarted", "%s", reason)
	return outcome{phase: pgv1.PhaseSwitchingOver, reason: reason, requeue: busyResync}, nil
}

func boolCmp(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}

// switchoverProblem says why pod cannot become primary by switchover now, or "".
func switchoverProblem(p *corev1.Pod, name string) string {
	if why := podGone(p, name); why != "" {
		return why
	}
	if fenceExcluded(p) {
		return fmt.Sprintf("pod %s is fenced (%s)", name, roles.FencedAnnotation)
	}
	if !podReady(p) {
		return fmt.Sprintf("pod %s is not ready", name)
	}
	if !hasRole(p, roles.RoleReplica) {
		return fmt.Sprintf("pod %s is not a running replica (label %s=%q)", name, roles.ObservedRoleLabel, p.Labels[roles.ObservedRoleLabel])
	}
	return ""
}

func (r *Reconciler) rejectRequest(ctx context.Context, c *pgv1.PostgresCluster, pods map[string]*corev1.Pod, q switchoverRequest, why string) error {
	if q.fromSpec {
		c.Status.HandledPromotePod = q.pod
		r.event(c, nil, corev1.EventTypeWarning, "SwitchoverRequestRejected", "ignoring %s=%s: %s", q.source(), q.pod, why)
		return nil
	}
	r.event(c, pods[q.pod], corev1.EventTypeWarning, "SwitchoverRequestRejected", "reverting %s to replica: %s", q.source(), why)
	if p := pods[q.pod]; p != nil {
		return r.setDesiredRole(ctx, p, roles.RoleReplica)
	}
	return nil
}

// enforceRoles annotates the target primary primary and every other instance replica.
func (r *Reconciler) enforceRoles(ctx context.Context, c *pgv1.PostgresCluster, pods map[string]*corev1.Pod) error {
	// The target primary first, for the reason handOver gives.
	names := slices.Sorted(maps.Keys(pods))
	slices.SortStableFunc(names, func(a, b string) int {
		return boolCmp(b == c.Status.TargetPrimary, a == c.Status.TargetPrimary)
	})
	for _, name := range names {
		p := pods[name]
		if p.DeletionTimestamp != nil {
			continue
		}
		want := roles.RoleReplica
		if name == c.Status.TargetPrimary {
			want = roles.RolePrimary
		}
		have := p.Annotations[roles.DesiredRoleAnnotation]
		if have == string(want) {
			continue
		}
		if have == string(roles.RolePrimary) {
			r.event(c, p, corev1.EventTypeWarning, "SwitchoverRequestRejected",
				"reverting %s=primary on %s: the primary is %s and no switchover can start now (phase %s)",
				roles.DesiredRoleAnnotation, name, c.Status.TargetPrimary, c.Status.Phase)
		} else {
			r.event(c, p, corev1.EventTypeNormal, "RoleAssigned", "%s should be %s (was %q)", name, want, have)
		}
		if err := r.setDesiredRole(ctx, p, want); err != nil {
			return err
		}
	}
	return nil
}

// fieldTime is the latest managedFields time of a manager that owns the field at path (in
// FieldsV1 notation, e.g. "f:spec", "f:failover", "f:promotePod"); zero if none.
func fieldTime(entries []metav1.ManagedFieldsEntry, path ...string) time.Time {
	var latest time.Time
	for _, e := range entries {
		if e.FieldsV1 == nil || e.Time == nil {
			continue
		}
		var m map[string]any
		if json.Unmarshal(e.FieldsV1.Raw, &m) != nil {
			continue
		}
		found := true
		for _, k := range path {
			next, ok := m[k].(map[string]any)
			if !ok {
				found = false
				break
			}
			m = next
		}
		if found && e.Time.After(latest) {
			latest = e.Time.Time
		}
	}
	return latest
}

func hasRole(p *corev1.Pod, role roles.Role) bool {
	return p.Labels[roles.ObservedRoleLabel] == string(role)
}

func podReady(p *corev1.Pod) bool {
	for _, cond := range p.Status.Conditions {
		if cond.Type == corev1.PodReady {
			return cond.Status == corev1.ConditionTrue
		}
	}
	return false
}

// containerNotRunning says why the kubelet reports the PostgreSQL container not running (it
// terminated, or waits to restart after terminating), or "" when it runs or has not started yet.
func containerNotRunning(p *corev1.Pod) string {
	for _, cs := range p.Status.ContainerStatuses {
		if cs.Name != instanceContainerName {
			continue
		}
		if t := cs.State.Terminated; t != nil {
			return fmt.Sprintf("container of %s terminated (%s, exit code %d)", p.Name, t.Reason, t.ExitCode)
		}
		if w := cs.State.Waiting; w != nil && cs.LastTerminationState.Terminated != nil {
			t := cs.LastTerminationState.Terminated
			return fmt.Sprintf("container of %s terminated (%s, exit code %d) and waits to restart (%s)", p.Name, t.Reason, t.ExitCode, w.Reason)
		}
	}
	return ""
}
