package operator

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/utils/ptr"

	pgv1 "github.com/pgwarden/pgwarden/api/v1"
	"github.com/pgwarden/pgwarden/e2e/testbed"
	"github.com/pgwarden/pgwarden/pkg/postgres"
)

// TestValidation: the API server itself rejects every invalid field, with a message naming it,
// and fills the defaults.
func TestValidation(t *testing.T) {
	api, c := startAPI(t)
	ctx := context.Background()
	const ns = "validation"
	createNamespace(t, c, ns)

	valid := newCluster(ns, "ok", 3)
	if err := c.Create(ctx, valid); err != nil {
		t.Fatalf("a valid cluster is rejected: %v", err)
	}
	got := getCluster(t, c, ns, "ok")
	if got.Spec.StartDelay != 30 || got.Spec.StopDelay != 30 || got.Spec.SwitchoverDelay != 40000000 || got.Spec.Failover.Delay != 0 {
		t.Errorf("defaults: %+v", got.Spec)
	}

	// The short name and the printer columns.
	out, err := exec.Command(testbed.Binary(t, "kubectl"), "--kubeconfig", api.Kubeconfig, "get", "pgc", "-n", ns).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl get pgc: %v\n%s", err, out)
	}
	if header := strings.Fields(strings.SplitN(string(out), "\n", 2)[0]); strings.Join(header, " ") != "NAME INSTANCES READY PRIMARY PHASE AGE" {
		t.Errorf("kubectl get pgc columns: %q", header)
	}

	tests := []struct {
		name   string
		change func(*pgv1.PostgresCluster)
		field  string // the message must name it
	}{
		{"instances 0", func(p *pgv1.PostgresCluster) { p.Spec.Instances = 0 }, "spec.instances"},
		{"instances negative", func(p *pgv1.PostgresCluster) { p.Spec.Instances = -1 }, "spec.instances"},
		{"startDelay negative", func(p *pgv1.PostgresCluster) { p.Spec.StartDelay = -1 }, "spec.startDelay"},
		{"stopDelay negative", func(p *pgv1.PostgresCluster) { p.Spec.StopDelay = -1 }, "spec.stopDelay"},
		{"switchoverDelay negative", func(p *pgv1.PostgresCluster) { p.Spec.SwitchoverDelay = -5 }, "spec.switchoverDelay"},
		{"failover.delay negative", func(p *pgv1.PostgresCluster) { p.Spec.Failover.Delay = -1 }, "spec.failover.delay"},
		{"promotePod of another cluster", func(p *pgv1.PostgresCluster) { p.Spec.Failover.PromotePod = "other-1" }, "spec.failover.promotePod"},
		{"promotePod beyond instances", func(p *pgv1.PostgresCluster) { p.Spec.Failover.PromotePod = p.Name + "-4" }, "spec.failover.promotePod"},
		{"promotePod 0", func(p *pgv1.PostgresCluster) { p.Spec.Failover.PromotePod = p.Name + "-0" }, "spec.failover.promotePod"},
		{"promotePod not a number", func(p *pgv1.PostgresCluster) { p.Spec.Failover.PromotePod = p.Name + "-x" }, "spec.failover.promotePod"},
		{"synchronous number negative", func(p *pgv1.PostgresCluster) { p.Spec.Replication.Synchronous.Number = -1 }, "spec.replication.synchronous.number"},
		{"synchronous number = instances", func(p *pgv1.PostgresCluster) { p.Spec.Replication.Synchronous.Number = 3 }, "spec.replication.synchronous.number"},
		{"managed parameter", func(p *pgv1.PostgresCluster) { p.Spec.PostgreSQL.Parameters = map[string]string{"port": "5433"} }, "spec.postgresql.parameters"},
		{"storage size 0", func(p *pgv1.PostgresCluster) { p.Spec.Storage.Size = resource.Quantity{} }, "spec.storage.size"},
		{"storage size negative", func(p *pgv1.PostgresCluster) { p.Spec.Storage.Size = resource.MustParse("-1Gi") }, "spec.storage.size"},
		{"name too long", func(p *pgv1.PostgresCluster) { p.Name = strings.Repeat("a", 51) }, "metadata.name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newCluster(ns, "bad", 3)
			tt.change(p)
			err := c.Create(ctx, p)
			if err == nil {
				_ = c.Delete(ctx, p)
				t.Fatalf("accepted")
			}
			if !strings.Contains(err.Error(), tt.field) {
				t.Fatalf("the error does not name %s: %v", tt.field, err)
			}
		})
	}

	updates := []struct {
		name   string
		change func(*pgv1.PostgresCluster)
		field  string
	}{
		{"storage class changed", func(p *pgv1.PostgresCluster) { p.Spec.Storage.StorageClassName = ptr.To("fast") }, "spec.storage.storageClassName"},
		{"storage shrinks", func(p *pgv1.PostgresCluster) { p.Spec.Storage.Size = resource.MustParse("512Mi") }, "spec.storage.size"},
		{"instances 0 on update", func(p *pgv1.PostgresCluster) { p.Spec.Instances = 0 }, "spec.instances"},
	}
	for _, tt := range updates {
		t.Run(tt.name, func(t *testing.T) {
			p := getCluster(t, c, ns, "ok")
			tt.change(p)
			err := c.Update(ctx, p)
			if err == nil {
				t.Fatalf("accepted")
			}
			if !strings.Contains(err.Error(), tt.field) {
				t.Fatalf("the error does not name %s: %v", tt.field, err)
			}
		})
	}
	// The API server refuses exactly the parameters the instance manager would refuse at start
	// (pkg/postgres), so a bad parameter is an error on apply, not a crash-looping pod.
	t.Run("parameters agree with the instance manager", func(t *testing.T) {
		type param struct{ name, value string }
		var cases []param
		for _, name := range postgres.OwnedParameters() {
			cases = append(cases, param{name, "x"})
		}
		cases = append(cases, param{"PORT", "5433"}, param{"Listen_Addresses", "*"},
			param{"wal_level", "minimal"}, param{"wal_level", "replica"}, param{"wal_level", "LOGICAL"},
			param{"full_page_writes", "off"}, param{"full_page_writes", "OFF"}, param{"full_page_writes", "no"},
			param{"full_page_writes", "0"}, param{"full_page_writes", "on"}, param{"full_page_writes", "true"},
			param{"max_wal_senders", "0"}, param{"max_wal_senders", "-1"}, param{"max_wal_senders", "ten"},
			param{"max_wal_senders", "10"}, param{"max_replication_slots", "0"}, param{"max_replication_slots", "20"},
			param{"shared_buffers", "256MB"}, param{"work_mem", "8MB"})
		for i, pc := range cases {
			instanceErr := postgres.ValidateParameters(map[string]string{pc.name: pc.value})
			p := newCluster(ns, fmt.Sprintf("param-%d", i), 3)
			p.Spec.PostgreSQL.Parameters = map[string]string{pc.name: pc.value}
			apiErr := c.Create(ctx, p)
			if apiErr == nil {
				_ = c.Delete(ctx, p)
			}
			switch {
			case instanceErr != nil && apiErr == nil:
				t.Errorf("%s = %q: the API server accepts it, the instance manager refuses it: %v", pc.name, pc.value, instanceErr)
			case instanceErr == nil && apiErr != nil:
				t.Errorf("%s = %q: the API server refuses it, the instance manager accepts it: %v", pc.name, pc.value, apiErr)
			case apiErr != nil && !strings.Contains(apiErr.Error(), "spec.postgresql.parameters"):
				t.Errorf("%s = %q: the error does not name spec.postgresql.parameters: %v", pc.name, pc.value, apiErr)
			}
		}
	})
	t.Run("storage grows", func(t *testing.T) {
		p := getCluster(t, c, ns, "ok")
		p.Spec.Storage.Size = resource.MustParse("2Gi")
		if err := c.Update(ctx, p); err != nil {
			t.Fatalf("growing the volumes is rejected: %v", err)
		}
	})
}
