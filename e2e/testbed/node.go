package testbed

import (
	"os"
	"path/filepath"
	"testing"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Node is the running node-level test bed (started by `make testbed-up`, not by this package).
type Node struct {
	// Dir is the test bed's state directory (TESTBED_DIR, default <checkout>/.testbed).
	Dir string
	// Kubeconfig is the admin kubeconfig, Dir/kubeconfig.
	Kubeconfig string
	// Config is the admin client configuration.
	Config *rest.Config
}

// NodeDir returns the node level's state directory: $TESTBED_DIR, or .testbed in the checkout.
func NodeDir() (string, error) {
	if d := os.Getenv("TESTBED_DIR"); d != "" {
		return filepath.Abs(d)
	}
	root, err := ModuleRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, ".testbed"), nil
}

// ConnectNode returns the running node-level test bed, and fails the test if it is not up.
func ConnectNode(t testing.TB) *Node {
	t.Helper()
	dir, err := NodeDir()
	if err != nil {
		t.Fatalf("testbed: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "up.done")); err != nil {
		t.Fatalf("testbed: the node is not up (no %s); run `make testbed-up`", filepath.Join(dir, "up.done"))
	}
	kc := filepath.Join(dir, "kubeconfig")
	cfg, err := clientcmd.BuildConfigFromFlags("", kc)
	if err != nil {
		t.Fatalf("testbed: cannot load %s: %v", kc, err)
	}
	cfg.QPS, cfg.Burst = 100, 200
	return &Node{Dir: dir, Kubeconfig: kc, Config: cfg}
}

// Clientset returns an admin clientset.
func (n *Node) Clientset(t testing.TB) kubernetes.Interface {
	t.Helper()
	cs, err := kubernetes.NewForConfig(n.Config)
	if err != nil {
		t.Fatalf("testbed: cannot create clientset: %v", err)
	}
	return cs
}
