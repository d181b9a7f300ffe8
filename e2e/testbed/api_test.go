package testbed_test

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/pgwarden/pgwarden/e2e/testbed"
)

func TestAPI(t *testing.T) {
	start := time.Now()
	api := testbed.StartAPI(t)
	t.Logf("etcd and kube-apiserver ready in %s at %s", time.Since(start).Round(time.Millisecond), api.URL)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cs := api.Clientset(t)

	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "pgwarden-test"}}
	if _, err := cs.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	holder, secs := "pod-0", int32(15)
	lease := &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: "demo-primary", Namespace: ns.Name},
		Spec:       coordinationv1.LeaseSpec{HolderIdentity: &holder, LeaseDurationSeconds: &secs},
	}
	if _, err := cs.CoordinationV1().Leases(ns.Name).Create(ctx, lease, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create lease: %v", err)
	}
	got, err := cs.CoordinationV1().Leases(ns.Name).Get(ctx, "demo-primary", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get lease: %v", err)
	}
	if got.Spec.HolderIdentity == nil || *got.Spec.HolderIdentity != holder {
		t.Errorf("lease holder = %v, want %q", got.Spec.HolderIdentity, holder)
	}
	if _, err := cs.CoreV1().Namespaces().Get(ctx, ns.Name, metav1.GetOptions{}); err != nil {
		t.Errorf("get namespace: %v", err)
	}
	// A Pod can be created without a controller-manager (no ServiceAccount admission).
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: ns.Name},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "example"}}}}
	if _, err := cs.CoreV1().Pods(ns.Name).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Errorf("create pod: %v", err)
	}

	// The kubeconfig works for kubectl.
	out, err := exec.Command(testbed.Binary(t, "kubectl"), "--kubeconfig", api.Kubeconfig,
		"get", "lease", "-n", ns.Name, "demo-primary", "-o", "jsonpath={.spec.holderIdentity}").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != holder {
		t.Errorf("kubectl get lease: %v: %s", err, out)
	}
}

func TestServiceAccountConfig(t *testing.T) {
	api := testbed.StartAPI(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg := api.ServiceAccountConfig(t, "app", "instance")
	sa, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// No permissions yet.
	if _, err := sa.CoordinationV1().Leases("app").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("list leases without RBAC: err = %v, want Forbidden", err)
	}
	admin := api.Clientset(t)
	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "leases", Namespace: "app"},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"get", "list"}}}}
	if _, err := admin.RbacV1().Roles("app").Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	rb := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "leases", Namespace: "app"},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "leases"},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: "instance", Namespace: "app"}}}
	if _, err := admin.RbacV1().RoleBindings("app").Create(ctx, rb, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// RBAC is cached in the API server; wait for the binding to apply.
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := sa.CoordinationV1().Leases("app").List(ctx, metav1.ListOptions{})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("list leases with RBAC: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := sa.CoreV1().Secrets("app").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("list secrets: err = %v, want Forbidden", err)
	}
	kc := api.WriteKubeconfig(t, cfg, "instance")
	out, err := exec.Command(testbed.Binary(t, "kubectl"), "--kubeconfig", kc, "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "system:serviceaccount:app:instance" {
		t.Errorf("kubectl auth whoami: %v: %s", err, out)
	}
}

func TestStopStartServer(t *testing.T) {
	api := testbed.StartAPI(t)
	cs := api.Clientset(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := cs.CoreV1().ConfigMaps("default").Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "kept"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	stopStart := time.Now()
	api.StopServer(t)
	t.Logf("kube-apiserver stopped in %s", time.Since(stopStart).Round(time.Millisecond))
	short, cancelShort := context.WithTimeout(ctx, 2*time.Second)
	defer cancelShort()
	if _, err := cs.CoreV1().ConfigMaps("default").Get(short, "kept", metav1.GetOptions{}); err == nil {
		t.Fatal("API server answered while stopped")
	}
	restart := time.Now()
	api.StartServer(t)
	t.Logf("kube-apiserver ready again in %s", time.Since(restart).Round(time.Millisecond))
	if _, err := cs.CoreV1().ConfigMaps("default").Get(ctx, "kept", metav1.GetOptions{}); err != nil {
		t.Fatalf("after restart: %v", err)
	}
}
