package operator

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	pgv1 "github.com/pgwarden/pgwarden/api/v1"
	"github.com/pgwarden/pgwarden/e2e/internal/harness"
	"github.com/pgwarden/pgwarden/pkg/operator"
	"github.com/pgwarden/pgwarden/pkg/roles"
)

// setFence sets pgwarden.io/fenced on a Pod as a user would; nil removes it.
func setFence(t *testing.T, c client.Client, ns, pod string, value any) {
	t.Helper()
	p, err := getPod(c, ns, pod)
	if err != nil {
		t.Fatal(err)
	}
	patch := client.MergeFrom(p.DeepCopy())
	if value == nil {
		delete(p.Annotations, roles.FencedAnnotation)
	} else {
		p.Annotations[roles.FencedAnnotation] = value.(string)
	}
	if err := c.Patch(context.Background(), p, patch, client.FieldOwner("kubectl-pgwarden")); err != nil {
		t.Fatal(err)
	}
}

// kubeletFenced plays a fenced instance: postgres stopped, so the pod is not ready, unlabelled,
// and /status says fenced.
func kubeletFenced(t *testing.T, c client.Client, inst *instances, ns, name, lsn string) {
	t.Helper()
	p, err := getPod(c, ns, name)
	if err != nil {
		t.Fatal(err)
	}
	patch := client.MergeFrom(p.DeepCopy())
	delete(p.Labels, roles.ObservedRoleLabel)
	if err := c.Patch(context.Background(), p, patch, client.FieldOwner("pgwarden-instance")); err != nil {
		t.Fatal(err)
	}
	kubeletNotReady(t, c, ns, name)
	inst.set(name, &operator.InstanceStatus{Role: "replica", Timeline: 1, ReceivedLSN: lsn, ReplayLSN: lsn, Phase: "fenced",
		Fenced: true, FencedReason: "fenced on request"})
}

func instanceStatus(pc *pgv1.PostgresCluster, name string) pgv1.InstanceStatus {
	for _, is := range pc.Status.InstancesStatus {
		if is.Name == name {
			return is
		}
	}
	return pgv1.InstanceStatus{}
}

// TestFence: a fenced replica is neither a failure nor a candidate; a fenced primary is switched
// over to the best ready replica first; with no replica able to take over, the fence of the
// primary is refused and the primary stays; an invalid value changes nothing; lifting a fence
// brings the instance back. The operator's /metrics shows it, and every operator metric the
// monitoring rules and dashboard use is exported.
func TestFence(t *testing.T) {
	api, c := startAPI(t)
	inst := newInstances(t)
	addr := freeAddr(t)
	startOperator(t, api, inst, func(o *operator.Options) { o.RestConfig = operatorIdentity(t, api, c); o.Addr = addr })
	ctx := context.Background()
	const ns, name = "fence", "demo"
	createNamespace(t, c, ns)
	if err := c.Create(ctx, newCluster(ns, name, 3)); err != nil {
		t.Fatal(err)
	}
	waitPod(t, c, ns, "demo-1", roles.RolePrimary)
	kubeletRun(t, c, inst, ns, "demo-1", roles.RolePrimary, "0/7000000")
	holdLease(t, c, ns, name, "demo-1")
	waitPod(t, c, ns, "demo-2", roles.RoleReplica)
	waitPod(t, c, ns, "demo-3", roles.RoleReplica)
	kubeletRun(t, c, inst, ns, "demo-2", roles.RoleReplica, "0/5000000")
	kubeletRun(t, c, inst, ns, "demo-3", roles.RoleReplica, "0/6000000")
	waitPhase(t, c, ns, name, pgv1.PhaseHealthy, func(pc *pgv1.PostgresCluster) (bool, string) {
		return pc.Status.ReadyInstances == 3, fmt.Sprintf("%d ready", pc.Status.ReadyInstances)
	})

	step(t, "a fenced replica is no failure and no failover candidate", func(t *testing.T) {
		setFence(t, c, ns, "demo-3", "true")
		kubeletFenced(t, c, inst, ns, "demo-3", "0/6000000")
		pc := waitPhase(t, c, ns, name, pgv1.PhaseHealthy, func(pc *pgv1.PostgresCluster) (bool, string) {
			is := instanceStatus(pc, "demo-3")
			return pc.Status.ReadyInstances == 2 && is.Fenced && strings.Contains(pc.Status.PhaseReason, "fenced: demo-3"),
				fmt.Sprintf("%d ready, %+v, %s", pc.Status.ReadyInstances, is, pc.Status.PhaseReason)
		})
		if is := instanceStatus(pc, "demo-3"); is.Message != "fenced: postgres stopped on request" {
			t.Errorf("demo-3 status %+v", is)
		}
		if p, _ := getPod(c, ns, "demo-3"); p.Annotations[roles.DesiredRoleAnnotation] != "replica" {
			t.Errorf("demo-3's role changed: %v", p.Annotations)
		}
		// The primary fails: demo-3 has received more WAL than demo-2, but it is fenced.
		kubeletTerminate(t, c, inst, ns, "demo-1")
		waitPod(t, c, ns, "demo-2", roles.RolePrimary)
		waitEvent(t, c, ns, "FailoverStarted", "promoting demo-2")
		if p, _ := getPod(c, ns, "demo-3"); p.Annotations[roles.DesiredRoleAnnotation] != "replica" {
			t.Errorf("the fenced demo-3 was chosen: %v", p.Annotations)
		}
		kubeletRun(t, c, inst, ns, "demo-2", roles.RolePrimary, "0/5000000")
		holdLease(t, c, ns, name, "demo-2")
		kubeletRun(t, c, inst, ns, "demo-1", roles.RoleReplica, "0/5000000")
		waitPhase(t, c, ns, name, pgv1.PhaseHealthy, func(pc *pgv1.PostgresCluster) (bool, string) {
			return pc.Status.CurrentPrimary == "demo-2" && pc.Status.ReadyInstances == 2, pc.Status.PhaseReason
		})
	})

	step(t, "a fenced primary is switched over first", func(t *testing.T) {
		setFence(t, c, ns, "demo-2", "true")
		waitPod(t, c, ns, "demo-1", roles.RolePrimary)
		waitPod(t, c, ns, "demo-2", roles.RoleReplica)
		waitEvent(t, c, ns, "SwitchoverStarted", "switching over from demo-2 to demo-1: demo-2 is asked to fence")
		if p, _ := getPod(c, ns, "demo-3"); p.Annotations[roles.DesiredRoleAnnotation] != "replica" {
			t.Errorf("the fenced demo-3 was chosen: %v", p.Annotations)
		}
		kubeletRun(t, c, inst, ns, "demo-1", roles.RolePrimary, "0/5000000")
		holdLease(t, c, ns, name, "demo-1")
		kubeletFenced(t, c, inst, ns, "demo-2", "0/5000000")
		waitPhase(t, c, ns, name, pgv1.PhaseHealthy, func(pc *pgv1.PostgresCluster) (bool, string) {
			return pc.Status.CurrentPrimary == "demo-1" && instanceStatus(pc, "demo-2").Fenced && strings.Contains(pc.Status.PhaseReason, "fenced: demo-2, demo-3"),
				pc.Status.PhaseReason
		})
	})

	step(t, "fencing the only possible primary is refused", func(t *testing.T) {
		setFence(t, c, ns, "demo-1", "true")
		pc := waitPhase(t, c, ns, name, pgv1.PhaseDegraded, func(pc *pgv1.PostgresCluster) (bool, string) {
			return strings.Contains(pc.Status.PhaseReason, "no replica can take over"), pc.Status.PhaseReason
		})
		waitEvent(t, c, ns, "FenceRefused", "primary demo-1 is asked to fence")
		if pc.Status.CurrentPrimary != "demo-1" || pc.Status.TargetPrimary != "demo-1" {
			t.Errorf("primary moved: %+v", pc.Status)
		}
		if p, _ := getPod(c, ns, "demo-1"); p.Annotations[roles.DesiredRoleAnnotation] != "primary" {
			t.Errorf("demo-1 is no longer desired primary: %v", p.Annotations)
		}
		if is := instanceStatus(pc, "demo-1"); !is.Fenced || !strings.Contains(is.Message, "keeps running") {
			t.Errorf("demo-1 status %+v", is)
		}
		setFence(t, c, ns, "demo-1", nil)
		waitPhase(t, c, ns, name, pgv1.PhaseHealthy, nil)
	})

	step(t, "an invalid value changes nothing", func(t *testing.T) {
		setFence(t, c, ns, "demo-1", "yes")
		waitEvent(t, c, ns, "InvalidFence", `demo-1: ignoring annotation pgwarden.io/fenced: invalid value "yes"`)
		pc := waitPhase(t, c, ns, name, pgv1.PhaseHealthy, nil)
		if pc.Status.CurrentPrimary != "demo-1" || pc.Status.TargetPrimary != "demo-1" {
			t.Errorf("an invalid fence value moved the primary: %+v", pc.Status)
		}
		setFence(t, c, ns, "demo-1", nil)
	})

	step(t, "lifting a fence", func(t *testing.T) {
		setFence(t, c, ns, "demo-3", nil)
		kubeletRun(t, c, inst, ns, "demo-3", roles.RoleReplica, "0/5000000")
		pc := waitPhase(t, c, ns, name, pgv1.PhaseHealthy, func(pc *pgv1.PostgresCluster) (bool, string) {
			return !instanceStatus(pc, "demo-3").Fenced && pc.Status.ReadyInstances == 2, pc.Status.PhaseReason
		})
		if is := instanceStatus(pc, "demo-2"); !is.Fenced {
			t.Errorf("demo-2 should still be fenced: %+v", is)
		}
	})

	// The operator's metrics, scraped like Prometheus would.
	var ms map[string]float64
	eventually(t, "the operator's cluster metrics", func() (bool, string) {
		code, body := httpGet(addr, "/metrics")
		if code != http.StatusOK {
			return false, fmt.Sprintf("%d %s", code, body)
		}
		ms = harness.ParseExposition(t, body)
		l := `{cluster="demo",namespace="fence"}`
		return ms["pgwarden_operator_cluster_instances_fenced"+l] == 1 && ms["pgwarden_operator_cluster_instances_ready"+l] == 2 &&
				ms["pgwarden_operator_cluster_instances"+l] == 3 && ms["pgwarden_operator_cluster_primary_ready"+l] == 1 &&
				ms[`pgwarden_operator_cluster_phase{cluster="demo",namespace="fence",phase="Healthy"}`] == 1 &&
				ms[`pgwarden_operator_cluster_phase{cluster="demo",namespace="fence",phase="Degraded"}`] == 0,
			fmt.Sprintf("%v", ms)
	})
	names := map[string]bool{}
	for k := range ms {
		names[harness.SampleName(k)] = true
	}
	harness.CheckMonitoringMetrics(t, names, func(name string) bool { return strings.HasPrefix(name, "pgwarden_operator_") })

	// Deleting the cluster removes its series.
	if err := c.Delete(ctx, &pgv1.PostgresCluster{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the deleted cluster's series to go", func() (bool, string) {
		_, body := httpGet(addr, "/metrics")
		return !strings.Contains(body, `cluster="demo",namespace="fence"`), "still there"
	})
}
