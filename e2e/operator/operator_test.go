package operator

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	pgv1 "github.com/pgwarden/pgwarden/api/v1"
	"github.com/pgwarden/pgwarden/pkg/operator"
	"github.com/pgwarden/pgwarden/pkg/roles"
)

// TestLifecycle walks one 3-instance cluster through creation, failovers (pod deleted,
// container terminated), switchovers (annotation, promotePod, two conflicting requests across
// an operator restart) and scale down.
func TestLifecycle(t *testing.T) {
	api, c := startAPI(t)
	inst := newInstances(t)
	// The operator runs with exactly the permissions of deploy/rbac/role.yaml.
	identity := operatorIdentity(t, api, c)
	asDeployed := func(o *operator.Options) { o.RestConfig = identity }
	stop := startOperator(t, api, inst, asDeployed)
	root := t
	ctx := context.Background()
	const ns, name = "lifecycle", "demo"
	createNamespace(t, c, ns)
	pc := newCluster(ns, name, 3)
	pc.Spec.PostgreSQL.Parameters = map[string]string{"max_connections": "50"}
	if err := c.Create(ctx, pc); err != nil {
		t.Fatal(err)
	}

	// Creating: everything around the instances, and the first instance alone, as primary.
	waitPod(t, c, ns, "demo-1", roles.RolePrimary)
	checkSupporting(t, c, ns, name, []string{"demo-1", "demo-2", "demo-3"})
	pc = waitPhase(t, c, ns, name, pgv1.PhaseCreating, nil)
	if pc.Status.TargetPrimary != "demo-1" || pc.Status.CurrentPrimary != "" {
		t.Fatalf("creating: target %q current %q", pc.Status.TargetPrimary, pc.Status.CurrentPrimary)
	}
	time.Sleep(time.Second)
	for _, n := range []string{"demo-2", "demo-3"} {
		if _, err := getPod(c, ns, n); !apierrors.IsNotFound(err) {
			t.Fatalf("%s exists before the first primary is established (err %v)", n, err)
		}
	}
	var pvc corev1.PersistentVolumeClaim
	if err := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: "demo-1"}, &pvc); err != nil {
		t.Fatalf("PVC demo-1: %v", err)
	}
	if got := pvc.Spec.Resources.Requests[corev1.ResourceStorage]; got.String() != "1Gi" {
		t.Errorf("PVC size %s", got.String())
	}

	// The first instance becomes primary: the replicas follow.
	kubeletRun(t, c, inst, ns, "demo-1", roles.RolePrimary, "0/7000000")
	holdLease(t, c, ns, name, "demo-1")
	waitPod(t, c, ns, "demo-2", roles.RoleReplica)
	waitPod(t, c, ns, "demo-3", roles.RoleReplica)
	kubeletRun(t, c, inst, ns, "demo-2", roles.RoleReplica, "0/5000000")
	kubeletRun(t, c, inst, ns, "demo-3", roles.RoleReplica, "0/6000000")
	pc = waitPhase(t, c, ns, name, pgv1.PhaseHealthy, func(pc *pgv1.PostgresCluster) (bool, string) {
		return pc.Status.ReadyInstances == 3 && len(pc.Status.InstancesStatus) == 3 && pc.Status.InstancesStatus[2].LSN == "0/6000000",
			fmt.Sprintf("%+v", pc.Status.InstancesStatus)
	})
	if pc.Status.CurrentPrimary != "demo-1" || !meta.IsStatusConditionTrue(pc.Status.Conditions, pgv1.ConditionReady) {
		t.Fatalf("healthy: %+v", pc.Status)
	}
	// A new cluster goes from Creating to Healthy; it is not Degraded while its replicas start.
	var el corev1.EventList
	if err := c.List(ctx, &el, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	for _, e := range el.Items {
		if e.Reason == "PhaseDegraded" {
			t.Errorf("a new cluster was reported Degraded before it was first Healthy: %s", e.Message)
		}
	}

	step(t, "failover when the primary pod is deleted", func(t *testing.T) {
		p, _ := getPod(c, ns, "demo-1")
		// A finalizer keeps the pod terminating for a while, as the kubelet does while its
		// container shuts down.
		p.Finalizers = append(p.Finalizers, "pgwarden.io/test-keep")
		if err := c.Update(ctx, p); err != nil {
			t.Fatal(err)
		}
		if err := c.Delete(ctx, p); err != nil {
			t.Fatal(err)
		}
		// demo-3 has received more WAL than demo-2.
		waitPod(t, c, ns, "demo-3", roles.RolePrimary)
		// The terminating old primary is told it is replaced: its instance then ends its smart
		// shutdown early instead of keeping writes out for half of stopDelay.
		if p := waitPod(t, c, ns, "demo-1", roles.RoleReplica); p.DeletionTimestamp == nil {
			t.Fatal("demo-1 is not terminating")
		}
		p, _ = getPod(c, ns, "demo-1")
		p.Finalizers = nil
		if err := c.Update(ctx, p); err != nil {
			t.Fatal(err)
		}
		inst.set("demo-1", nil)
		pc := getCluster(t, c, ns, name)
		if pc.Status.TargetPrimary != "demo-3" || pc.Status.Phase != pgv1.PhaseFailingOver {
			t.Fatalf("status %+v", pc.Status)
		}
		waitEvent(t, c, ns, "FailoverStarted", "promoting demo-3")
		// The old primary comes back as a replica.
		waitPod(t, c, ns, "demo-1", roles.RoleReplica)
		if got := waitPod(t, c, ns, "demo-2", roles.RoleReplica); got == nil {
			t.Fatal("demo-2")
		}
		kubeletRun(t, c, inst, ns, "demo-3", roles.RolePrimary, "0/6000000")
		holdLease(t, c, ns, name, "demo-3")
		kubeletRun(t, c, inst, ns, "demo-1", roles.RoleReplica, "0/6000000")
		waitPhase(t, c, ns, name, pgv1.PhaseHealthy, func(pc *pgv1.PostgresCluster) (bool, string) {
			return pc.Status.CurrentPrimary == "demo-3", "current primary " + pc.Status.CurrentPrimary
		})
		waitEvent(t, c, ns, "FailoverCompleted", "demo-3 is primary")
	})

	step(t, "failover when the primary's container terminates breaks the Lease", func(t *testing.T) {
		inst.set("demo-1", replicaStatus("0/8000000"))
		inst.set("demo-2", replicaStatus("0/9000000"))
		kubeletTerminate(t, c, inst, ns, "demo-3")
		waitPod(t, c, ns, "demo-2", roles.RolePrimary)
		waitPod(t, c, ns, "demo-3", roles.RoleReplica)
		if h := leaseHolder(t, c, ns, name); h != "" {
			t.Errorf("Lease still held by %q after the holder's container terminated", h)
		}
		waitEvent(t, c, ns, "LeaseBroken", "demo-3")
		kubeletRun(t, c, inst, ns, "demo-2", roles.RolePrimary, "0/9000000")
		holdLease(t, c, ns, name, "demo-2")
		kubeletRun(t, c, inst, ns, "demo-3", roles.RoleReplica, "0/9000000")
		waitPhase(t, c, ns, name, pgv1.PhaseHealthy, func(pc *pgv1.PostgresCluster) (bool, string) {
			return pc.Status.CurrentPrimary == "demo-2", "current primary " + pc.Status.CurrentPrimary
		})
	})

	step(t, "failover disabled: a not ready primary is reported, not replaced", func(t *testing.T) {
		setSpec(t, c, ns, name, func(pc *pgv1.PostgresCluster) { pc.Spec.Failover.IsDisabled = true })
		kubeletNotReady(t, c, ns, "demo-2")
		pc := waitPhase(t, c, ns, name, pgv1.PhaseFailoverRequired, func(pc *pgv1.PostgresCluster) (bool, string) {
			return strings.Contains(pc.Status.PhaseReason, "spec.failover.isDisabled"), pc.Status.PhaseReason
		})
		if meta.IsStatusConditionTrue(pc.Status.Conditions, pgv1.ConditionAutomaticFailover) {
			t.Errorf("AutomaticFailover condition true while disabled")
		}
		time.Sleep(time.Second)
		if p := waitPod(t, c, ns, "demo-2", roles.RolePrimary); p == nil {
			t.Fatal()
		}
		// Enabling it again fails over to the best replica.
		inst.set("demo-1", replicaStatus("0/9000000"))
		inst.set("demo-3", replicaStatus("0/8FFFFFF"))
		setSpec(t, c, ns, name, func(pc *pgv1.PostgresCluster) { pc.Spec.Failover.IsDisabled = false })
		waitPod(t, c, ns, "demo-1", roles.RolePrimary)
		waitPod(t, c, ns, "demo-2", roles.RoleReplica)
		kubeletRun(t, c, inst, ns, "demo-1", roles.RolePrimary, "0/9000000")
		holdLease(t, c, ns, name, "demo-1")
		kubeletRun(t, c, inst, ns, "demo-2", roles.RoleReplica, "0/9000000")
		waitPhase(t, c, ns, name, pgv1.PhaseHealthy, func(pc *pgv1.PostgresCluster) (bool, string) {
			return pc.Status.CurrentPrimary == "demo-1", "current primary " + pc.Status.CurrentPrimary
		})
	})

	step(t, "switchover by annotation", func(t *testing.T) {
		annotate(t, c, ns, "demo-3", "primary")
		waitPod(t, c, ns, "demo-1", roles.RoleReplica)
		pc := getCluster(t, c, ns, name)
		if pc.Status.TargetPrimary != "demo-3" || pc.Status.Phase != pgv1.PhaseSwitchingOver {
			t.Fatalf("status %+v", pc.Status)
		}
		kubeletRun(t, c, inst, ns, "demo-1", roles.RoleReplica, "0/9000000")
		kubeletRun(t, c, inst, ns, "demo-3", roles.RolePrimary, "0/9000000")
		holdLease(t, c, ns, name, "demo-3")
		waitPhase(t, c, ns, name, pgv1.PhaseHealthy, func(pc *pgv1.PostgresCluster) (bool, string) {
			return pc.Status.CurrentPrimary == "demo-3", "current primary " + pc.Status.CurrentPrimary
		})
		waitEvent(t, c, ns, "SwitchoverCompleted", "demo-3 is primary")
	})

	step(t, "two requests: the most recent wins, also across an operator restart", func(t *testing.T) {
		stop() // the requests arrive while no operator runs; a new one must sort them out
		annotate(t, c, ns, "demo-2", "primary")
		time.Sleep(1100 * time.Millisecond) // managedFields times have a resolution of a second
		setSpec(t, c, ns, name, func(pc *pgv1.PostgresCluster) { pc.Spec.Failover.PromotePod = "demo-1" })
		stop = startOperator(root, api, inst, asDeployed) // lives on after this step
		waitPod(t, c, ns, "demo-1", roles.RolePrimary)
		waitPod(t, c, ns, "demo-2", roles.RoleReplica) // reverted
		waitPod(t, c, ns, "demo-3", roles.RoleReplica)
		waitEvent(t, c, ns, "SwitchoverRequestRejected", "demo-2")
		pc := getCluster(t, c, ns, name)
		if pc.Status.HandledPromotePod != "demo-1" || pc.Status.Phase != pgv1.PhaseSwitchingOver {
			t.Fatalf("status %+v", pc.Status)
		}
		kubeletRun(t, c, inst, ns, "demo-3", roles.RoleReplica, "0/9000000")
		kubeletRun(t, c, inst, ns, "demo-1", roles.RolePrimary, "0/9000000")
		holdLease(t, c, ns, name, "demo-1")
		waitPhase(t, c, ns, name, pgv1.PhaseHealthy, func(pc *pgv1.PostgresCluster) (bool, string) {
			return pc.Status.CurrentPrimary == "demo-1", "current primary " + pc.Status.CurrentPrimary
		})
	})

	step(t, "a cleared promotePod can name the same pod again", func(t *testing.T) {
		// The one-shot semantics: demo-1 stays in spec.failover.promotePod and is handled; the same
		// value again is no change. Clearing the field ends the request, so demo-1 is a new one.
		setSpec(t, c, ns, name, func(pc *pgv1.PostgresCluster) { pc.Spec.Failover.PromotePod = "" })
		eventually(t, "status.handledPromotePod cleared", func() (bool, string) {
			h := getCluster(t, c, ns, name).Status.HandledPromotePod
			return h == "", "handledPromotePod " + h
		})
		setSpec(t, c, ns, name, func(pc *pgv1.PostgresCluster) { pc.Spec.Failover.PromotePod = "demo-1" })
		waitEvent(t, c, ns, "SwitchoverNotNeeded", "demo-1 is already the primary")
		if h := getCluster(t, c, ns, name).Status.HandledPromotePod; h != "demo-1" {
			t.Fatalf("handledPromotePod %q, want demo-1", h)
		}
		// Every decision is in the operator's log too (the Events expire after an hour).
		eventually(t, "the decision in the operator's log", func() (bool, string) {
			b, err := os.ReadFile(filepath.Join(api.Dir, "operator.log"))
			if err != nil {
				return false, err.Error()
			}
			for _, line := range strings.Split(string(b), "\n") {
				var rec map[string]any
				if json.Unmarshal([]byte(line), &rec) == nil && rec["logger"] == "decisions" &&
					rec["reason"] == "SwitchoverNotNeeded" && rec["cluster"] == ns+"/"+name && rec["type"] == "Normal" &&
					rec["msg"] == "spec.failover.promotePod: demo-1 is already the primary" {
					return true, ""
				}
			}
			return false, "no decisions record with reason SwitchoverNotNeeded"
		})
	})

	step(t, "deleted replica pod and PVC are recreated", func(t *testing.T) {
		p, _ := getPod(c, ns, "demo-2")
		uid := p.UID
		if err := c.Delete(ctx, p); err != nil {
			t.Fatal(err)
		}
		var old corev1.PersistentVolumeClaim
		if err := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: "demo-2"}, &old); err != nil {
			t.Fatal(err)
		}
		deletePVC(t, c, &old)
		eventually(t, "demo-2 recreated", func() (bool, string) {
			p, err := getPod(c, ns, "demo-2")
			if err != nil {
				return false, err.Error()
			}
			var pvc corev1.PersistentVolumeClaim
			if err := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: "demo-2"}, &pvc); err != nil {
				return false, err.Error()
			}
			return p.UID != uid && pvc.UID != old.UID && p.Annotations[roles.DesiredRoleAnnotation] == "replica", "old pod or PVC"
		})
		kubeletRun(t, c, inst, ns, "demo-2", roles.RoleReplica, "0/9000000")
		waitPhase(t, c, ns, name, pgv1.PhaseHealthy, nil)
	})

	step(t, "scale down removes the last instance and narrows the Role", func(t *testing.T) {
		setSpec(t, c, ns, name, func(pc *pgv1.PostgresCluster) { pc.Spec.Instances = 2 })
		eventually(t, "demo-3 removed", func() (bool, string) {
			_, err := getPod(c, ns, "demo-3")
			var pvc corev1.PersistentVolumeClaim
			errPVC := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: "demo-3"}, &pvc)
			// No controller-manager removes the pvc-protection finalizer: deleted means marked.
			pvcGone := apierrors.IsNotFound(errPVC) || (errPVC == nil && pvc.DeletionTimestamp != nil)
			return apierrors.IsNotFound(err) && pvcGone, fmt.Sprintf("pod: %v, pvc: %v %v", err, errPVC, pvc.DeletionTimestamp)
		})
		eventually(t, "Role narrowed", func() (bool, string) {
			var role rbacv1.Role
			if err := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: "demo-instance"}, &role); err != nil {
				return false, err.Error()
			}
			d := cmp.Diff(roles.PolicyRules(name, []string{"demo-1", "demo-2"}), role.Rules)
			return d == "", d
		})
		waitPhase(t, c, ns, name, pgv1.PhaseHealthy, func(pc *pgv1.PostgresCluster) (bool, string) {
			return pc.Status.ReadyInstances == 2 && len(pc.Status.InstancesStatus) == 2, fmt.Sprintf("%+v", pc.Status.InstancesStatus)
		})
	})

	step(t, "failover when the primary's Lease lapses, not before, and soon after", func(t *testing.T) {
		// The primary's pod stays Ready and its container running (a partition from the API
		// server looks like this from the operator): only the Lease tells.
		pc := getCluster(t, c, ns, name)
		primary, other := pc.Status.CurrentPrimary, "demo-1"
		if primary == "demo-1" {
			other = "demo-2"
		}
		inst.set(other, replicaStatus("0/A000000"))
		stopRenewing(ns, name)
		l := &coordinationv1.Lease{}
		if err := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: roles.LeaseName(name)}, l); err != nil {
			t.Fatal(err)
		}
		if l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity != primary || l.Spec.RenewTime == nil {
			t.Fatalf("Lease before the test: %+v", l.Spec)
		}
		// The holder fences itself at its renew deadline; the operator may fail over once that
		// (plus 5 s for clocks) has passed, and looks exactly then rather than at a periodic
		// resync: within half of one (5 s) after that.
		fenced := l.Spec.RenewTime.Add(roles.DefaultRenewDeadline)
		deadline := fenced.Add(5*time.Second + 5*time.Second)
		for {
			pc := getCluster(t, c, ns, name)
			now := time.Now()
			if pc.Status.TargetPrimary != primary {
				if now.Before(fenced) {
					t.Fatalf("failover to %s at %s, before the holder's renew deadline at %s", pc.Status.TargetPrimary, now.Format(time.RFC3339Nano), fenced.Format(time.RFC3339Nano))
				}
				t.Logf("failover decided %v after the holder's renew deadline", now.Sub(fenced).Round(time.Millisecond))
				break
			}
			if now.After(deadline) {
				t.Fatalf("no failover %v after the holder's renew deadline (phase %s: %s)", now.Sub(fenced).Round(time.Millisecond), pc.Status.Phase, pc.Status.PhaseReason)
			}
			time.Sleep(100 * time.Millisecond)
		}
		waitEvent(t, c, ns, "PrimaryFailing", "not renewed within")
		waitPod(t, c, ns, other, roles.RolePrimary)
		waitPod(t, c, ns, primary, roles.RoleReplica)
	})
}

// step runs a subtest; the later steps build on it, so a failure ends the test.
func step(t *testing.T, name string, f func(t *testing.T)) {
	t.Helper()
	if !t.Run(name, f) {
		t.FailNow()
	}
}

func replicaStatus(lsn string) *operator.InstanceStatus {
	return &operator.InstanceStatus{Role: "replica", Timeline: 1, ReceivedLSN: lsn, ReplayLSN: lsn, Ready: true}
}

// deletePVC deletes pvc and, playing the controller-manager, removes its pvc-protection
// finalizer (its pod is gone).
func deletePVC(t *testing.T, c client.Client, pvc *corev1.PersistentVolumeClaim) {
	t.Helper()
	ctx := context.Background()
	if err := c.Delete(ctx, pvc); err != nil {
		t.Fatal(err)
	}
	if err := c.Get(ctx, client.ObjectKeyFromObject(pvc), pvc); apierrors.IsNotFound(err) {
		return
	}
	patch := client.MergeFrom(pvc.DeepCopy())
	pvc.Finalizers = nil
	if err := c.Patch(ctx, pvc, patch); err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
}

// annotate sets the desired role annotation as a user would (kubectl annotate).
func annotate(t *testing.T, c client.Client, ns, pod, role string) {
	t.Helper()
	p, err := getPod(c, ns, pod)
	if err != nil {
		t.Fatal(err)
	}
	patch := client.MergeFrom(p.DeepCopy())
	p.Annotations[roles.DesiredRoleAnnotation] = role
	if err := c.Patch(context.Background(), p, patch, client.FieldOwner("kubectl-annotate")); err != nil {
		t.Fatal(err)
	}
}

// setSpec changes the cluster's spec as a user would (kubectl edit).
func setSpec(t *testing.T, c client.Client, ns, name string, change func(*pgv1.PostgresCluster)) {
	t.Helper()
	for range 10 {
		pc := getCluster(t, c, ns, name)
		change(pc)
		err := c.Update(context.Background(), pc, client.FieldOwner("kubectl-edit"))
		if err == nil {
			return
		}
		if !apierrors.IsConflict(err) {
			t.Fatal(err)
		}
	}
	t.Fatal("cannot update the spec: conflicts")
}

// checkSupporting asserts the objects around the instances.
func checkSupporting(t *testing.T, c client.Client, ns, name string, pods []string) {
	t.Helper()
	ctx := context.Background()
	get := func(obj client.Object, n string) {
		t.Helper()
		eventually(t, fmt.Sprintf("%T %s", obj, n), func() (bool, string) {
			err := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: n}, obj)
			return err == nil, fmt.Sprint(err)
		})
		owner := metav1.GetControllerOf(obj)
		if owner == nil || owner.Kind != "PostgresCluster" || owner.Name != name {
			t.Errorf("%T %s: controller %+v", obj, n, owner)
		}
	}
	for _, s := range []string{name + "-superuser", name + "-replication"} {
		var sec corev1.Secret
		get(&sec, s)
		if len(sec.Data["password"]) < 32 {
			t.Errorf("Secret %s: password of %d bytes", s, len(sec.Data["password"]))
		}
	}
	var sa corev1.ServiceAccount
	get(&sa, name+"-instance")
	var role rbacv1.Role
	get(&role, name+"-instance")
	if d := cmp.Diff(roles.PolicyRules(name, pods), role.Rules); d != "" {
		t.Errorf("Role rules (-want +got):\n%s", d)
	}
	var rb rbacv1.RoleBinding
	get(&rb, name+"-instance")
	if rb.RoleRef.Name != role.Name || len(rb.Subjects) != 1 || rb.Subjects[0].Name != sa.Name {
		t.Errorf("RoleBinding %+v", rb)
	}
	var cm corev1.ConfigMap
	get(&cm, name+"-config")
	if !strings.Contains(cm.Data["postgresql.conf"], "max_connections = '50'") {
		t.Errorf("ConfigMap: %q", cm.Data["postgresql.conf"])
	}
	for suffix, want := range map[string]map[string]string{
		"-rw": {"pgwarden.io/cluster": name, roles.ObservedRoleLabel: "primary"},
		"-ro": {"pgwarden.io/cluster": name, roles.ObservedRoleLabel: "replica"},
		"-r":  {"pgwarden.io/cluster": name},
	} {
		var svc corev1.Service
		get(&svc, name+suffix)
		if d := cmp.Diff(want, svc.Spec.Selector); d != "" {
			t.Errorf("Service %s%s selector (-want +got):\n%s", name, suffix, d)
		}
	}
	var pdbPrimary, pdbReplicas policyv1.PodDisruptionBudget
	get(&pdbPrimary, name+"-primary")
	get(&pdbReplicas, name+"-replicas")
	if pdbPrimary.Spec.MinAvailable == nil || pdbPrimary.Spec.MinAvailable.IntValue() != 1 ||
		pdbReplicas.Spec.MaxUnavailable != nil || pdbReplicas.Spec.MinAvailable == nil || pdbReplicas.Spec.MinAvailable.IntValue() != 1 {
		t.Errorf("PDBs: %+v / %+v", pdbPrimary.Spec, pdbReplicas.Spec)
	}
	p, err := getPod(c, ns, name+"-1")
	if err != nil {
		t.Fatal(err)
	}
	ct := p.Spec.Containers[0]
	if p.Spec.ServiceAccountName != sa.Name || *p.Spec.TerminationGracePeriodSeconds != 30 ||
		!slices.Contains(ct.Args, "--stop-delay=30s") || ct.StartupProbe.FailureThreshold != 3 ||
		ct.Image != "pgwarden.local/pgwarden:testbed" {
		t.Errorf("pod: sa %s grace %d args %v startup %+v image %s", p.Spec.ServiceAccountName,
			*p.Spec.TerminationGracePeriodSeconds, ct.Args, ct.StartupProbe, ct.Image)
	}
}

// TestMissingSecret: a superuser Secret named in the spec but missing is reported in status and
// Events; nothing is created that would mount it, and nothing is deleted. Creating the Secret
// lets the cluster proceed.
func TestMissingSecret(t *testing.T) {
	api, c := startAPI(t)
	inst := newInstances(t)
	startOperator(t, api, inst, nil)
	ctx := context.Background()
	const ns, name = "secrets", "db"
	createNamespace(t, c, ns)
	pc := newCluster(ns, name, 2)
	pc.Spec.SuperuserSecret = &corev1.LocalObjectReference{Name: "my-superuser"}
	if err := c.Create(ctx, pc); err != nil {
		t.Fatal(err)
	}
	waitPhase(t, c, ns, name, pgv1.PhaseCreating, func(pc *pgv1.PostgresCluster) (bool, string) {
		cond := meta.FindStatusCondition(pc.Status.Conditions, pgv1.ConditionSecretsReady)
		return cond != nil && cond.Status == metav1.ConditionFalse && strings.Contains(cond.Message, "my-superuser"),
			fmt.Sprintf("%+v", cond)
	})
	waitEvent(t, c, ns, "SecretMissing", "my-superuser")
	var pods corev1.PodList
	if err := c.List(ctx, &pods, client.InNamespace(ns)); err != nil || len(pods.Items) != 0 {
		t.Fatalf("pods created without their Secret: %d (%v)", len(pods.Items), err)
	}
	var other corev1.Secret
	if err := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: "db-superuser"}, &other); !apierrors.IsNotFound(err) {
		t.Errorf("a superuser Secret was generated although the spec names one: %v", err)
	}

	if err := c.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "my-superuser"},
		Data: map[string][]byte{"password": []byte("s3cret-but-not-logged")}}); err != nil {
		t.Fatal(err)
	}
	p := waitPod(t, c, ns, "db-1", roles.RolePrimary)
	for _, v := range p.Spec.Volumes {
		if v.Name == "superuser" && v.Secret.SecretName != "my-superuser" {
			t.Errorf("superuser volume from %s", v.Secret.SecretName)
		}
	}
	// Deleting the Secret again: reported, the running pod stays.
	if err := c.Delete(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "my-superuser"}}); err != nil {
		t.Fatal(err)
	}
	kubeletRun(t, c, inst, ns, "db-1", roles.RolePrimary, "0/1000000")
	waitPhase(t, c, ns, name, pgv1.PhaseDegraded, func(pc *pgv1.PostgresCluster) (bool, string) {
		return strings.Contains(pc.Status.PhaseReason, "my-superuser"), pc.Status.PhaseReason
	})
	if _, err := getPod(c, ns, "db-1"); err != nil {
		t.Fatalf("pod deleted: %v", err)
	}
	if _, err := getPod(c, ns, "db-2"); !apierrors.IsNotFound(err) {
		t.Fatalf("replica created without its Secret: %v", err)
	}
}

// TestImagePullReported: an image that cannot be pulled is reported per instance and as an Event.
func TestImagePullReported(t *testing.T) {
	api, c := startAPI(t)
	inst := newInstances(t)
	startOperator(t, api, inst, nil)
	ctx := context.Background()
	const ns, name = "images", "db"
	createNamespace(t, c, ns)
	pc := newCluster(ns, name, 1)
	pc.Spec.Image = "example.invalid/nope:1"
	if err := c.Create(ctx, pc); err != nil {
		t.Fatal(err)
	}
	p := waitPod(t, c, ns, "db-1", roles.RolePrimary)
	if p.Spec.Containers[0].Image != "example.invalid/nope:1" {
		t.Fatalf("image %s", p.Spec.Containers[0].Image)
	}
	p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "postgres", Image: pc.Spec.Image,
		State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ImagePullBackOff", Message: "Back-off pulling image"}}}}
	if err := c.Status().Update(ctx, p); err != nil {
		t.Fatal(err)
	}
	waitPhase(t, c, ns, name, pgv1.PhaseCreating, func(pc *pgv1.PostgresCluster) (bool, string) {
		return len(pc.Status.InstancesStatus) == 1 && strings.Contains(pc.Status.InstancesStatus[0].Message, "ImagePullBackOff"),
			fmt.Sprintf("%+v", pc.Status.InstancesStatus)
	})
	waitEvent(t, c, ns, "InstanceProblem", "ImagePullBackOff")
	if _, err := getPod(c, ns, "db-1"); err != nil {
		t.Fatalf("pod deleted: %v", err)
	}
}
