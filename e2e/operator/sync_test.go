package operator

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	pgv1 "github.com/pgwarden/pgwarden/api/v1"
	"github.com/pgwarden/pgwarden/pkg/roles"
)

// TestSynchronousFailover: with synchronous.number 1 of 2 replicas, the operator renders
// synchronous_standby_names, waits failover.delay, and does not fail over while only one replica
// answers (the silent one may hold the only copy of an acknowledged commit); once both answer
// it promotes the one with the highest received LSN.
func TestSynchronousFailover(t *testing.T) {
	api, c := startAPI(t)
	inst := newInstances(t)
	startOperator(t, api, inst, nil)
	ctx := context.Background()
	const ns, name = "sync", "db"
	createNamespace(t, c, ns)
	pc := newCluster(ns, name, 3)
	pc.Spec.Replication.Synchronous.Number = 1
	pc.Spec.Failover.Delay = 2
	if err := c.Create(ctx, pc); err != nil {
		t.Fatal(err)
	}
	waitPod(t, c, ns, "db-1", roles.RolePrimary)
	var cm corev1.ConfigMap
	if err := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: "db-config"}, &cm); err != nil {
		t.Fatal(err)
	}
	if want := `ANY 1 ("db-1", "db-2", "db-3")`; strings.TrimSpace(cm.Data["synchronous_standby_names"]) != want {
		t.Errorf("ConfigMap synchronous_standby_names = %q, want %q", cm.Data["synchronous_standby_names"], want)
	}
	if strings.Contains(cm.Data["postgresql.conf"], "synchronous_standby_names") {
		t.Errorf("the user's parameters file carries synchronous_standby_names, which instances refuse:\n%s", cm.Data["postgresql.conf"])
	}
	kubeletRun(t, c, inst, ns, "db-1", roles.RolePrimary, "0/9000000")
	holdLease(t, c, ns, name, "db-1")
	waitPod(t, c, ns, "db-2", roles.RoleReplica)
	waitPod(t, c, ns, "db-3", roles.RoleReplica)
	kubeletRun(t, c, inst, ns, "db-2", roles.RoleReplica, "0/8000000")
	kubeletRun(t, c, inst, ns, "db-3", roles.RoleReplica, "0/9000000")
	waitPhase(t, c, ns, name, pgv1.PhaseHealthy, nil)

	inst.set("db-3", nil) // db-3 stops answering
	kubeletNotReady(t, c, ns, "db-1")
	waitPhase(t, c, ns, name, pgv1.PhaseFailoverRequired, func(pc *pgv1.PostgresCluster) (bool, string) {
		return strings.Contains(pc.Status.PhaseReason, "spec.failover.delay"), pc.Status.PhaseReason
	})
	waitEvent(t, c, ns, "NoFailoverCandidate", "needs answers from 2 replicas")
	if p, _ := getPod(c, ns, "db-2"); p.Annotations[roles.DesiredRoleAnnotation] != "replica" {
		t.Fatalf("db-2 promoted without a quorum of answers")
	}
	if p, _ := getPod(c, ns, "db-1"); p.Annotations[roles.DesiredRoleAnnotation] != "primary" {
		t.Fatalf("db-1 demoted although nobody can take over")
	}
	inst.set("db-3", replicaStatus("0/9000000"))
	waitPod(t, c, ns, "db-3", roles.RolePrimary)
	waitPod(t, c, ns, "db-1", roles.RoleReplica)
}
