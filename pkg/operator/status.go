package operator

import (
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	pgv1 "github.com/pgwarden/pgwarden/api/v1"
	"github.com/pgwarden/pgwarden/pkg/roles"
)

func equalStatus(a, b *pgv1.PostgresClusterStatus) bool { return equality.Semantic.DeepEqual(a, b) }

// waitingReasons are container waiting reasons that need a human (reported as Warning Events).
var waitingReasons = map[string]bool{
	"ErrImagePull": true, "ImagePullBackOff": true, "InvalidImageName": true,
	"CrashLoopBackOff": true, "CreateContainerConfigError": true, "CreateContainerError": true,
}

// diagnose says why an instance is not ready, or "". serious marks what needs a human.
func diagnose(name string, p *corev1.Pod, pvc *corev1.PersistentVolumeClaim) (msg string, serious bool) {
	if pvc == nil {
		return fmt.Sprintf("PVC %s does not exist", name), false
	}
	if p == nil {
		return fmt.Sprintf("pod %s does not exist", name), false
	}
	if p.DeletionTimestamp != nil {
		return "pod is being deleted", false
	}
	for _, cond := range p.Status.Conditions {
		if cond.Type == corev1.PodScheduled && cond.Status == corev1.ConditionFalse {
			return fmt.Sprintf("pod cannot be scheduled (%s): %s", cond.Reason, cond.Message), cond.Reason == corev1.PodReasonUnschedulable
		}
	}
	for _, cs := range p.Status.ContainerStatuses {
		if cs.Name != instanceContainerName {
			continue
		}
		if w := cs.State.Waiting; w != nil && w.Reason != "" && w.Reason != "ContainerCreating" {
			return strings.TrimSpace(fmt.Sprintf("container waiting: %s: %s", w.Reason, w.Message)), waitingReasons[w.Reason]
		}
		if t := cs.State.Terminated; t != nil {
			return fmt.Sprintf("container terminated: %s (exit code %d)", t.Reason, t.ExitCode), false
		}
	}
	if pvc.Status.Phase == corev1.ClaimPending {
		return fmt.Sprintf("PVC %s is not bound yet", name), false
	}
	if !podReady(p) {
		return "not ready", false
	}
	return "", false
}

// updateObservedStatus fills the per-instance status, counts, phase and conditions.
func (r *Reconciler) updateObservedStatus(c *pgv1.PostgresCluster, pods map[string]*corev1.Pod,
	pvcs map[string]*corev1.PersistentVolumeClaim, statuses map[string]statusResult,
	before *pgv1.PostgresClusterStatus, secretsOK bool, out outcome) {
	st := &c.Status
	prevMsg := map[string]string{}
	for _, is := range before.InstancesStatus {
		prevMsg[is.Name] = is.Message
	}
	var list []pgv1.InstanceStatus
	var ready, fencedDown int32
	var problems, fenced []string
	for _, name := range instanceNames(c, pods) {
		p := pods[name]
		is := pgv1.InstanceStatus{Name: name}
		if p != nil {
			is.Role = p.Labels[roles.ObservedRoleLabel]
			is.DesiredRole = p.Annotations[roles.DesiredRoleAnnotation]
			is.Ready = p.DeletionTimestamp == nil && podReady(p)
		}
		if sr, ok := statuses[name]; ok && sr.status != nil {
			is.Timeline = sr.status.Timeline
			is.LSN = sr.status.CurrentLSN
			if is.LSN == "" {
				is.LSN = sr.status.ReceivedLSN
			}
			is.ReplayLSN = sr.status.ReplayLSN
		}
		if p == nil && name != st.TargetPrimary && st.CurrentPrimary == "" {
			continue // not created yet: the first instance is created alone
		}
		msg, serious := diagnose(name, p, pvcs[name])
		is.Message = msg
		if serious && msg != prevMsg[name] {
			r.event(c, p, corev1.EventTypeWarning, "InstanceProblem", "%s: %s", name, msg)
		}
		if p != nil && !serious && p.DeletionTimestamp == nil {
			sr, ok := statuses[name]
			if fenceStatus(&is, p, sr, ok) {
				fencedDown++
				msg = ""
			}
			if is.Fenced {
				fenced = append(fenced, name)
			}
			if _, _, err := fenceRequest(p); err != nil && is.Message != prevMsg[name] {
				r.event(c, p, corev1.EventTypeWarning, "InvalidFence", "%s: %s; nothing changes", name, is.Message)
			}
		}
		if is.Ready {
			ready++
		} else if msg != "" {
			problems = append(problems, name+": "+msg)
		}
		list = append(list, is)
	}
	st.InstancesStatus = list
	st.Instances = int32(len(pods))
	st.ReadyInstances = ready

	phase, reason := out.phase, out.reason
	if phase == "" {
		switch {
		case !secretsOK:
			phase = pgv1.PhaseDegraded
			reason = meta.FindStatusCondition(st.Conditions, pgv1.ConditionSecretsReady).Message
		case ready+fencedDown < c.Spec.Instances || int32(len(pods)) != c.Spec.Instances:
			phase = pgv1.PhaseDegraded
			reason = fmt.Sprintf("%d of %d instances ready", ready, c.Spec.Instances)
			if before.Phase == pgv1.PhaseCreating || before.Phase == "" {
				// A new cluster whose replicas are still being cloned is not degraded: it
				// stays Creating until it has been Healthy once.
				phase = pgv1.PhaseCreating
			}
			if len(problems) > 0 {
				reason += ": " + strings.Join(problems, "; ")
			}
		default:
			phase, reason = pgv1.PhaseHealthy, fmt.Sprintf("primary %s and %d replicas ready", st.CurrentPrimary, ready-1)
		}
		if len(fenced) > 0 {
			reason += "; fenced: " + strings.Join(fenced, ", ")
		}
	} else if phase == pgv1.PhaseCreating && !secretsOK {
		reason += "; " + meta.FindStatusCondition(st.Conditions, pgv1.ConditionSecretsReady).Message
	}
	st.Phase, st.PhaseReason = phase, reason
	if before.Phase != phase {
		typ := corev1.EventTypeNormal
		if phase == pgv1.PhaseDegraded || phase == pgv1.PhaseFailoverRequired {
			typ = corev1.EventTypeWarning
		}
		r.event(c, nil, typ, "Phase"+string(phase), "phase %s: %s", phase, reason)
	}

	readyCond := metav1.Condition{Type: pgv1.ConditionReady, Status: metav1.ConditionFalse, Reason: string(phase),
		Message: reason, ObservedGeneration: c.Generation}
	if phase == pgv1.PhaseHealthy {
		readyCond.Status = metav1.ConditionTrue
	}
	meta.SetStatusCondition(&st.Conditions, readyCond)
	af := metav1.Condition{Type: pgv1.ConditionAutomaticFailover, Status: metav1.ConditionTrue, Reason: "Enabled",
		Message: "the operator fails over when the primary fails", ObservedGeneration: c.Generation}
	if c.Spec.Failover.IsDisabled {
		af.Status, af.Reason, af.Message = metav1.ConditionFalse, "Disabled",
			"automatic failover is disabled by spec.failover.isDisabled; switchover on request still works"
	}
	meta.SetStatusCondition(&st.Conditions, af)
	cp := pods[st.CurrentPrimary]
	observeCluster(c, cp != nil && cp.DeletionTimestamp == nil && hasRole(cp, roles.RolePrimary) && podReady(cp))
}
