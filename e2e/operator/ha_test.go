package operator

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	"k8s.io/apimachinery/pkg/types"

	pgv1 "github.com/pgwarden/pgwarden/api/v1"
	"github.com/pgwarden/pgwarden/pkg/operator"
	"github.com/pgwarden/pgwarden/pkg/roles"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func httpGet(addr, path string) (int, string) {
	resp, err := http.Get("http://" + addr + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestLeaderElection: two operators share a Lease; one acts. When the leader shuts down it
// releases the Lease, the standby takes over well before the Lease would expire, and finishes
// the work (here: a failover). Both serve /healthz, /readyz and /metrics.
func TestLeaderElection(t *testing.T) {
	api, c := startAPI(t)
	inst := newInstances(t)
	ctx := context.Background()
	createNamespace(t, c, "pgwarden-system")
	addrA, addrB := freeAddr(t), freeAddr(t)
	le := func(addr string) func(*operator.Options) {
		return func(o *operator.Options) {
			o.LeaderElect, o.LeaseNamespace, o.Addr = true, "pgwarden-system", addr
		}
	}
	stopA := startOperator(t, api, inst, le(addrA))
	leader := func() string {
		var l coordinationv1.Lease
		if err := c.Get(ctx, types.NamespacedName{Namespace: "pgwarden-system", Name: "pgwarden-operator"}, &l); err != nil || l.Spec.HolderIdentity == nil {
			return ""
		}
		return *l.Spec.HolderIdentity
	}
	eventually(t, "A leads", func() (bool, string) { return leader() != "", "no leader" })
	first := leader()
	startOperator(t, api, inst, le(addrB))

	for _, addr := range []string{addrA, addrB} {
		eventually(t, "probes of "+addr, func() (bool, string) {
			h, _ := httpGet(addr, "/healthz")
			r, body := httpGet(addr, "/readyz")
			return h == 200 && r == 200, fmt.Sprintf("healthz %d readyz %d %s", h, r, body)
		})
	}

	const ns, name = "ha", "db"
	createNamespace(t, c, ns)
	if err := c.Create(ctx, newCluster(ns, name, 2)); err != nil {
		t.Fatal(err)
	}
	waitPod(t, c, ns, "db-1", roles.RolePrimary)
	kubeletRun(t, c, inst, ns, "db-1", roles.RolePrimary, "0/3000000")
	holdLease(t, c, ns, name, "db-1")
	waitPod(t, c, ns, "db-2", roles.RoleReplica)
	kubeletRun(t, c, inst, ns, "db-2", roles.RoleReplica, "0/3000000")
	waitPhase(t, c, ns, name, pgv1.PhaseHealthy, nil)
	if _, body := httpGet(addrA, "/metrics"); !strings.Contains(body, "pgwarden_operator_reconciles_total") {
		t.Errorf("/metrics of the leader lacks pgwarden_operator_reconciles_total")
	}

	// The leader goes away; the primary fails right after.
	stopped := time.Now()
	stopA()
	kubeletTerminate(t, c, inst, ns, "db-1")
	eventually(t, "B leads", func() (bool, string) {
		l := leader()
		return l != "" && l != first, "leader " + l
	})
	if took := time.Since(stopped); took > 12*time.Second {
		t.Errorf("the standby took over after %s: the Lease was not released on shutdown", took)
	}
	waitPod(t, c, ns, "db-2", roles.RolePrimary)
	kubeletRun(t, c, inst, ns, "db-2", roles.RolePrimary, "0/3000000")
	holdLease(t, c, ns, name, "db-2")
	waitPhase(t, c, ns, name, pgv1.PhaseDegraded, nil) // db-1 is dead, not yet back
	waitPod(t, c, ns, "db-1", roles.RoleReplica)
	kubeletRun(t, c, inst, ns, "db-1", roles.RoleReplica, "0/3000000")
	waitPhase(t, c, ns, name, pgv1.PhaseHealthy, func(pc *pgv1.PostgresCluster) (bool, string) {
		return pc.Status.CurrentPrimary == "db-2", pc.Status.CurrentPrimary
	})
}
