package operator

import (
	"context"
	"fmt"
	"testing"

	pgv1 "github.com/pgwarden/pgwarden/api/v1"
	"github.com/pgwarden/pgwarden/pkg/roles"
)

// TestRollingUpdate: a new image reaches every instance one at a time, replicas first, the
// primary last after a switchover, and the cluster ends Healthy on the new image.
func TestRollingUpdate(t *testing.T) {
	api, c := startAPI(t)
	inst := newInstances(t)
	startOperator(t, api, inst, nil)
	ctx := context.Background()
	const ns, name = "update", "db"
	createNamespace(t, c, ns)
	if err := c.Create(ctx, newCluster(ns, name, 3)); err != nil {
		t.Fatal(err)
	}
	waitPod(t, c, ns, "db-1", roles.RolePrimary)
	kubeletRun(t, c, inst, ns, "db-1", roles.RolePrimary, "0/3000000")
	holdLease(t, c, ns, name, "db-1")
	waitPod(t, c, ns, "db-2", roles.RoleReplica)
	waitPod(t, c, ns, "db-3", roles.RoleReplica)
	kubeletRun(t, c, inst, ns, "db-2", roles.RoleReplica, "0/3000000")
	kubeletRun(t, c, inst, ns, "db-3", roles.RoleReplica, "0/3000000")
	waitPhase(t, c, ns, name, pgv1.PhaseHealthy, nil)

	const newImage = "pgwarden.local/pgwarden:v2"
	setSpec(t, c, ns, name, func(pc *pgv1.PostgresCluster) { pc.Spec.Image = newImage })
	onNewImage := func(pod string) {
		t.Helper()
		eventually(t, pod+" on the new image", func() (bool, string) {
			p, err := getPod(c, ns, pod)
			if err != nil {
				return false, err.Error()
			}
			return p.Spec.Containers[0].Image == newImage, p.Spec.Containers[0].Image
		})
	}
	// Replicas first, one at a time: db-3 stays until db-2 is back and ready.
	onNewImage("db-2")
	if p, _ := getPod(c, ns, "db-3"); p.Spec.Containers[0].Image == newImage {
		t.Fatal("db-3 updated while db-2 was not ready")
	}
	kubeletRun(t, c, inst, ns, "db-2", roles.RoleReplica, "0/3000000")
	onNewImage("db-3")
	kubeletRun(t, c, inst, ns, "db-3", roles.RoleReplica, "0/3000001")
	// Then a switchover to the best updated replica, and the old primary is recreated.
	waitPod(t, c, ns, "db-3", roles.RolePrimary)
	waitPod(t, c, ns, "db-1", roles.RoleReplica)
	kubeletRun(t, c, inst, ns, "db-1", roles.RoleReplica, "0/3000001")
	kubeletRun(t, c, inst, ns, "db-3", roles.RolePrimary, "0/3000001")
	holdLease(t, c, ns, name, "db-3")
	onNewImage("db-1")
	kubeletRun(t, c, inst, ns, "db-1", roles.RoleReplica, "0/3000001")
	waitPhase(t, c, ns, name, pgv1.PhaseHealthy, func(pc *pgv1.PostgresCluster) (bool, string) {
		return pc.Status.CurrentPrimary == "db-3" && pc.Status.ReadyInstances == 3,
			fmt.Sprintf("primary %s ready %d", pc.Status.CurrentPrimary, pc.Status.ReadyInstances)
	})
	for _, pod := range []string{"db-1", "db-2", "db-3"} {
		p, err := getPod(c, ns, pod)
		if err != nil || p.Spec.Containers[0].Image != newImage {
			t.Errorf("%s: %v %v", pod, err, p.Spec.Containers)
		}
	}
}
