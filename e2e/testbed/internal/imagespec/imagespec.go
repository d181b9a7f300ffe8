// Package imagespec reads e2e/testbed/images.conf, the one list of what goes into pgwarden's
// container images (paths, user, environment, entrypoints, ports). It only parses; building
// images is cmd/tbimage's job.
package imagespec

import (
	"bufio"
	"fmt"
	"os"
	"strings"
)

// Spec is images.conf as keys and values.
type Spec map[string]string

// Load parses the file at path.
func Load(path string) (Spec, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("cannot read image spec: %w", err)
	}
	defer f.Close()
	s := Spec{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("%s:%d: want KEY=VALUE, got %q", path, n, line)
		}
		s[k] = v
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("cannot read image spec: %w", err)
	}
	for _, k := range required {
		if s[k] == "" {
			return nil, fmt.Errorf("%s: %s is missing", path, k)
		}
	}
	return s, nil
}

var required = []string{"PGWARDEN_PATH", "PG_MAJOR", "PG_BIN_DIR", "PGDATA", "INSTANCE_USER",
	"INSTANCE_USER_NAME", "INSTANCE_HOME", "INSTANCE_ENTRYPOINT", "INSTANCE_PORTS", "OPERATOR_USER",
	"OPERATOR_ENTRYPOINT", "INSTANCE_IMAGE", "OPERATOR_IMAGE", "PAUSE_IMAGE", "APP_IMAGE"}

// Fields splits a space-separated value (entrypoints, ports).
func (s Spec) Fields(key string) []string { return strings.Fields(s[key]) }

// InstanceEnv is the environment both instance images set, in order.
func (s Spec) InstanceEnv() [][2]string {
	return [][2]string{{"PGDATA", s["PGDATA"]}, {"PG_BIN_DIR", s["PG_BIN_DIR"]}}
}
