package testbed

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// Binary returns the path of a cached test bed binary ("etcd", "kube-apiserver", "kubectl",
// ...), building it with build.sh first if it is missing. A cold build takes minutes (about four
// for the api level on two cores); `make testbed-build-api` does it ahead of the tests.
func Binary(t testing.TB, component string) string {
	t.Helper()
	p, err := binary(component, func(msg string) { t.Log(msg) })
	if err != nil {
		t.Fatalf("testbed: %v", err)
	}
	return p
}

func binary(component string, logf func(string)) (string, error) {
	script, err := buildScript()
	if err != nil {
		return "", err
	}
	out, err := exec.Command("bash", script, "--print-dir", component).Output()
	if err != nil {
		return "", fmt.Errorf("cannot find the cache dir of %s: %w", component, err)
	}
	p := filepath.Join(strings.TrimSpace(string(out)), component)
	if isExecutable(p) {
		return p, nil
	}
	logf(fmt.Sprintf("%s is not cached; building it with %s (takes minutes)", component, script))
	var log bytes.Buffer
	cmd := exec.Command("bash", script, component)
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("cannot build %s: %w\n%s", component, err, tail(log.String(), 40))
	}
	if !isExecutable(p) {
		return "", fmt.Errorf("%s built but %s is missing", component, p)
	}
	return p, nil
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// buildScript finds e2e/testbed/build.sh: next to this source file, or in the module that
// contains the working directory (tests run in their package's directory).
func buildScript() (string, error) {
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		p := filepath.Join(filepath.Dir(file), "build.sh")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	root, err := ModuleRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, "e2e", "testbed", "build.sh"), nil
}

// ModuleRoot returns the checkout's root: the nearest directory above the working directory
// whose go.mod declares github.com/pgwarden/pgwarden.
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil {
			for _, line := range strings.Split(string(b), "\n") {
				if strings.TrimSpace(line) == "module github.com/pgwarden/pgwarden" {
					return dir, nil
				}
			}
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("cannot find the pgwarden checkout above the working directory")
		}
		dir = parent
	}
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
