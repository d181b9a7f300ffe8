package operator

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	pgv1 "github.com/pgwarden/pgwarden/api/v1"
	"github.com/pgwarden/pgwarden/pkg/roles"
)

func testCluster() *pgv1.PostgresCluster {
	return &pgv1.PostgresCluster{
		ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: "ns"},
		Spec: pgv1.PostgresClusterSpec{
			Instances: 3, StartDelay: 95, StopDelay: 40, SwitchoverDelay: 60,
			Storage: pgv1.StorageSpec{Size: resource.MustParse("1Gi")},
		},
	}
}

func TestNewPod(t *testing.T) {
	c := testCluster()
	p := newPod(c, "db-2", roles.RoleReplica, "img")
	ct := p.Spec.Containers[0]
	if got := p.Annotations[roles.DesiredRoleAnnotation]; got != "replica" {
		t.Errorf("role annotation = %q", got)
	}
	if *p.Spec.TerminationGracePeriodSeconds != 40 {
		t.Errorf("grace = %d, want stopDelay 40", *p.Spec.TerminationGracePeriodSeconds)
	}
	wantArgs := []string{"--stop-delay=40s", "--start-delay=95s", "--switchover-delay=60s",
		"--superuser-password-file=/etc/pgwarden/superuser/password",
		"--replication-password-file=/etc/pgwarden/replication/password",
		"--parameters-file=/etc/pgwarden/config/postgresql.conf",
		"--synchronous-standby-names-file=/etc/pgwarden/config/synchronous_standby_names"}
	if d := cmp.Diff(wantArgs, ct.Args); d != "" {
		t.Errorf("args (-want +got):\n%s", d)
	}
	if ct.StartupProbe.HTTPGet.Path != "/startupz" || ct.StartupProbe.FailureThreshold*ct.StartupProbe.PeriodSeconds < 95 {
		t.Errorf("startup probe %+v does not give startDelay 95 s", ct.StartupProbe)
	}
	if ct.LivenessProbe.HTTPGet.Path != "/healthz" || ct.ReadinessProbe.HTTPGet.Path != "/readyz" ||
		ct.ReadinessProbe.PeriodSeconds != 10 || ct.ReadinessProbe.FailureThreshold != 3 {
		t.Errorf("probes: liveness %+v readiness %+v", ct.LivenessProbe, ct.ReadinessProbe)
	}
	env := map[string]string{}
	for _, e := range ct.Env {
		v := e.Value
		if e.ValueFrom != nil {
			v = "field:" + e.ValueFrom.FieldRef.FieldPath
		}
		env[e.Name] = v
	}
	wantEnv := map[string]string{"POD_NAME": "field:metadata.name", "POD_NAMESPACE": "field:metadata.namespace",
		"POD_IP": "field:status.podIP", "CLUSTER_NAME": "db", "PGDATA": "/var/lib/postgresql/data/pgdata"}
	if d := cmp.Diff(wantEnv, env); d != "" {
		t.Errorf("env (-want +got):\n%s", d)
	}
	aa := p.Spec.Affinity.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution
	if len(aa) != 1 || aa[0].PodAffinityTerm.TopologyKey != "kubernetes.io/hostname" {
		t.Errorf("default anti-affinity = %+v", aa)
	}

	c.Spec.Scheduler.Affinity = &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{}}
	c.Spec.Scheduler.Tolerations = []corev1.Toleration{{Key: "dedicated", Operator: corev1.TolerationOpExists}}
	p = newPod(c, "db-1", roles.RolePrimary, "img")
	if p.Spec.Affinity.PodAntiAffinity != nil || p.Spec.Affinity.NodeAffinity == nil {
		t.Errorf("user affinity not used: %+v", p.Spec.Affinity)
	}
	if len(p.Spec.Tolerations) != 1 || p.Spec.Tolerations[0].Key != "dedicated" {
		t.Errorf("tolerations = %+v", p.Spec.Tolerations)
	}
}

func TestStartupFailureThreshold(t *testing.T) {
	for in, want := range map[int32]int32{0: 1, 1: 1, 10: 1, 11: 2, 30: 3, 95: 10} {
		if got := startupFailureThreshold(in); got != want {
			t.Errorf("startupFailureThreshold(%d) = %d, want %d", in, got, want)
		}
	}
}

func TestRenderParameters(t *testing.T) {
	c := testCluster()
	c.Spec.PostgreSQL.Parameters = map[string]string{"work_mem": "4MB", "application_name": `it's a\b`}
	c.Spec.Replication.Synchronous.Number = 1
	want := "# Rendered by the pgwarden operator from spec.postgresql.parameters; do not edit.\n" +
		"application_name = 'it''s a\\\\b'\n" +
		"work_mem = '4MB'\n"
	if d := cmp.Diff(want, renderParameters(c)); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
	if got, want := newConfigMap(c).Data[SyncNamesKey], "ANY 1 (\"db-1\", \"db-2\", \"db-3\")\n"; got != want {
		t.Errorf("ConfigMap %s = %q, want %q", SyncNamesKey, got, want)
	}
	c.Spec.Replication.Synchronous.Number = 0
	if got := synchronousStandbyNames(c); got != "" {
		t.Errorf("asynchronous: %q", got)
	}
}

func TestPodIndex(t *testing.T) {
	for name, want := range map[string]int{"db-1": 1, "db-12": 12, "db-0": 0, "db-01": 0, "db-x": 0, "other-1": 0, "db-1-1": 0} {
		if got := podIndex("db", name); got != want {
			t.Errorf("podIndex(db, %s) = %d, want %d", name, got, want)
		}
	}
}

func TestFieldTime(t *testing.T) {
	t1 := metav1.NewTime(time.Date(2025, 1, 1, 0, 0, 1, 0, time.UTC))
	t2 := metav1.NewTime(time.Date(2025, 1, 1, 0, 0, 2, 0, time.UTC))
	raw := func(v any) *metav1.FieldsV1 { b, _ := json.Marshal(v); return &metav1.FieldsV1{Raw: b} }
	entries := []metav1.ManagedFieldsEntry{
		{Manager: "op", Time: &t2, FieldsV1: raw(map[string]any{"f:metadata": map[string]any{"f:labels": map[string]any{}}})},
		{Manager: "kubectl", Time: &t1, FieldsV1: raw(map[string]any{"f:metadata": map[string]any{"f:annotations": map[string]any{"f:pgwarden.io/role": map[string]any{}}}})},
	}
	if got := fieldTime(entries, "f:metadata", "f:annotations", "f:pgwarden.io/role"); !got.Equal(t1.Time) {
		t.Errorf("fieldTime = %v, want %v", got, t1)
	}
	if got := fieldTime(entries, "f:spec"); !got.IsZero() {
		t.Errorf("fieldTime of an unowned field = %v", got)
	}
}

func TestPodSpecHash(t *testing.T) {
	c := testCluster()
	h := podSpecHash(c, "img")
	if h != podSpecHash(c, "img") || len(h) != 16 {
		t.Fatalf("unstable or malformed hash %q", h)
	}
	if podSpecHash(c, "img2") == h {
		t.Error("the image does not change the hash")
	}
	c.Spec.Failover.Delay, c.Spec.Instances = 5, 7 // not in the pod spec
	if podSpecHash(c, "img") != h {
		t.Error("fields outside the pod spec change the hash")
	}
	c.Spec.StopDelay = 99
	if podSpecHash(c, "img") == h {
		t.Error("stopDelay does not change the hash")
	}
}

// The replicas' PDB uses an integer minAvailable: the disruption controller then counts the pods
// its selector matches, instead of asking the PostgresCluster for a scale subresource (which it
// does not have, and whose count would include the primary).
func TestNewPDBs(t *testing.T) {
	for instances, want := range map[int32]int{1: 0, 2: 0, 3: 1, 5: 3} {
		c := testCluster()
		c.Spec.Instances = instances
		pdbs := newPDBs(c)
		primary, replicas := pdbs[0].Spec, pdbs[1].Spec
		if primary.MinAvailable == nil || primary.MinAvailable.IntValue() != 1 || primary.MaxUnavailable != nil {
			t.Errorf("%d instances: primary PDB %+v", instances, primary)
		}
		if replicas.MaxUnavailable != nil || replicas.MinAvailable == nil || replicas.MinAvailable.IntValue() != want {
			t.Errorf("%d instances: replicas PDB %+v, want minAvailable %d", instances, replicas, want)
		}
	}
}
