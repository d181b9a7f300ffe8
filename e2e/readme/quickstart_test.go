//go:build readme

package readme

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestQuickStart runs README.md's quick start: its ```sh blocks, in order, in one bash with
// `set -euo pipefail`, from the checkout's root, as a user would paste them. It fails at the first
// command that fails and names the block. Afterwards the node test bed must be down (the quick
// start ends with make demo-down). Run it with `make readme-check` (e2e/readme/check.sh), which
// queues for the node test bed and checks that the host is left as it was.
func TestQuickStart(t *testing.T) {
	abs, err := filepath.Abs(root)
	if err != nil {
		t.Fatal(err)
	}
	tb := os.Getenv("TESTBED_DIR")
	if tb == "" {
		tb = filepath.Join(abs, ".testbed")
	}
	blocks, err := QuickStart(readFile(t, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	var script strings.Builder
	script.WriteString("set -euo pipefail\n")
	for i, b := range blocks {
		first, _, _ := strings.Cut(strings.TrimSpace(b.Text), "\n")
		// The marker names the block; the commands themselves are not traced (set -x would print
		// the password once $(...) is expanded).
		fmt.Fprintf(&script, "printf '\\n### quick start block %d/%d (README.md line %d): %%s\\n' %s\n%s",
			i+1, len(blocks), b.Line, ShellQuote(first), b.Text)
	}
	script.WriteString("printf '\\n### quick start: every block passed\\n'\n")

	failed := true
	t.Cleanup(func() {
		if failed {
			// Leave nothing behind: the cluster, the operator and the node go.
			cmd := exec.Command(filepath.Join(abs, "e2e", "demo", "demo.sh"), "down")
			cmd.Dir = abs
			out, err := cmd.CombinedOutput()
			t.Logf("cleanup, demo.sh down: %v\n%s", err, out)
		}
	})

	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-c", script.String())
	cmd.Dir = abs
	// A user's shell: the quick start sets KUBECONFIG and PATH itself, and its make is not a
	// sub-make of `make test`'s.
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch name {
		case "KUBECONFIG", "PGPASSWORD", "PGHOST", "PGUSER", "PGDATABASE", "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES":
			continue
		}
		env = append(env, kv)
	}
	cmd.Env = env
	var out bytes.Buffer
	cmd.Stdout = io.MultiWriter(os.Stdout, &out)
	cmd.Stderr = cmd.Stdout
	t0 := time.Now()
	err = cmd.Run()
	t.Logf("quick start ran for %v", time.Since(t0).Round(time.Second))
	if err != nil {
		last := out.String()
		if i := strings.LastIndex(last, "### quick start block"); i >= 0 {
			last = last[i:]
		}
		t.Fatalf("the quick start failed (%v) in:\n%s", err, last)
	}
	if _, err := os.Stat(filepath.Join(tb, "up.done")); err == nil {
		t.Fatalf("the node test bed is still up after the quick start's make demo-down (%s)", tb)
	}
	failed = false
}
