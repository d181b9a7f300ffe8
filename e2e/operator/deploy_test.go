package operator

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/pgwarden/pgwarden/e2e/testbed"
)

func moduleRoot(t *testing.T) string {
	t.Helper()
	root, err := testbed.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// operatorIdentity returns a client configuration for the operator's ServiceAccount, bound to
// exactly the ClusterRole of deploy/rbac/role.yaml: the tests run the operator with the
// permissions it is deployed with.
func operatorIdentity(t *testing.T, api *testbed.API, c client.Client) *rest.Config {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(moduleRoot(t), "deploy", "rbac", "role.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var role rbacv1.ClusterRole
	if err := yaml.UnmarshalStrict(b, &role); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := c.Create(ctx, &role); err != nil {
		t.Fatal(err)
	}
	cfg := api.ServiceAccountConfig(t, "pgwarden-system", "pgwarden-operator")
	rb := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "pgwarden-operator"},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
		Subjects: []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: "pgwarden-operator", Namespace: "pgwarden-system"}}}
	if err := c.Create(ctx, rb); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// TestManifestsUpToDate: the CRD and the ClusterRole are what controller-gen makes of the Go
// code today, and the Helm chart carries the same files.
func TestManifestsUpToDate(t *testing.T) {
	root := moduleRoot(t)
	read := func(p string) []byte {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(root, p))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for copyPath, orig := range map[string]string{
		"deploy/helm/pgwarden-operator/crds/pgwarden.io_postgresclusters.yaml": "deploy/crd/pgwarden.io_postgresclusters.yaml",
		"deploy/helm/pgwarden-operator/files/role.yaml":                        "deploy/rbac/role.yaml",
	} {
		if !bytes.Equal(read(copyPath), read(orig)) {
			t.Errorf("%s differs from %s: run make manifests", copyPath, orig)
		}
	}
	gen, err := exec.LookPath("controller-gen")
	if err != nil {
		home, _ := os.UserHomeDir()
		gen = filepath.Join(home, "go", "bin", "controller-gen")
		if _, err := os.Stat(gen); err != nil {
			t.Skip("controller-gen not installed (go install sigs.k8s.io/controller-tools/cmd/controller-gen@v0.21.0)")
		}
	}
	out := t.TempDir()
	cmd := exec.Command(gen, "crd:crdVersions=v1,maxDescLen=400", "paths=./api/...", "output:crd:artifacts:config="+out,
		"rbac:roleName=pgwarden-operator", "paths=./pkg/operator/...", "output:rbac:artifacts:config="+out)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("controller-gen: %v\n%s", err, b)
	}
	for gotName, want := range map[string]string{
		"pgwarden.io_postgresclusters.yaml": "deploy/crd/pgwarden.io_postgresclusters.yaml",
		"role.yaml":                         "deploy/rbac/role.yaml",
	} {
		got, err := os.ReadFile(filepath.Join(out, gotName))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, read(want)) {
			t.Errorf("%s is stale: run make manifests", want)
		}
	}
}

// TestKustomizeApplies: deploy/default builds and every object is accepted by a real API
// server (server-side, so the schema of each kind is checked); the Helm values say the same as
// the kustomize Deployment.
func TestKustomizeApplies(t *testing.T) {
	root := moduleRoot(t)
	api := testbed.StartAPI(t)
	kubectl := testbed.Binary(t, "kubectl")
	cmd := exec.Command(kubectl, "--kubeconfig", api.Kubeconfig, "apply", "--server-side", "-k", filepath.Join(root, "deploy", "default"))
	b, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl apply -k deploy/default: %v\n%s", err, b)
	}
	for _, want := range []string{"customresourcedefinition.apiextensions.k8s.io/postgresclusters.pgwarden.io",
		"clusterrole.rbac.authorization.k8s.io/pgwarden-operator", "deployment.apps/pgwarden-operator",
		"poddisruptionbudget.policy/pgwarden-operator", "serviceaccount/pgwarden-operator"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("not applied: %s\n%s", want, b)
		}
	}
	dep, err := os.ReadFile(filepath.Join(root, "deploy", "manager", "deployment.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	values, err := os.ReadFile(filepath.Join(root, "deploy", "helm", "pgwarden-operator", "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		Image          string `json:"image"`
		InstanceImage  string `json:"instanceImage"`
		Replicas       int    `json:"replicas"`
		LeaderElection struct {
			LeaseName                                                         string
			LeaseDurationSeconds, RenewIntervalSeconds, ReleaseTimeoutSeconds int
		} `json:"leaderElection"`
	}
	if err := yaml.Unmarshal(values, &v); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"image: " + v.Image, "value: " + v.InstanceImage, "replicas: " + itoa(v.Replicas),
		"--lease-name=" + v.LeaderElection.LeaseName,
		"--lease-duration-seconds=" + itoa(v.LeaderElection.LeaseDurationSeconds),
		"--renew-interval-seconds=" + itoa(v.LeaderElection.RenewIntervalSeconds),
		"--release-timeout-seconds=" + itoa(v.LeaderElection.ReleaseTimeoutSeconds)} {
		if !strings.Contains(string(dep), want) {
			t.Errorf("deploy/manager/deployment.yaml lacks %q from the Helm values", want)
		}
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
