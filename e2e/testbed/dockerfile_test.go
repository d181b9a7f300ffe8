package testbed_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/pgwarden/pgwarden/e2e/testbed/internal/imagespec"
)

// stage is what the Dockerfile says about one build stage.
type stage struct {
	from, user string
	env        map[string]string
	entrypoint []string
	ports      []string
	copies     []string // destinations of COPY
}

func parseDockerfile(t *testing.T, path string) map[string]*stage {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	stages := map[string]*stage{}
	var cur *stage
	// Join continuation lines, drop comments.
	text := strings.ReplaceAll(string(b), "\\\n", " ")
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		instr, rest, _ := strings.Cut(line, " ")
		rest = strings.TrimSpace(rest)
		switch strings.ToUpper(instr) {
		case "FROM":
			f := strings.Fields(rest)
			cur = &stage{from: f[0], env: map[string]string{}}
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				stages[f[2]] = cur
			}
		case "USER":
			cur.user = rest
		case "ENV":
			for _, kv := range strings.Fields(rest) {
				k, v, _ := strings.Cut(kv, "=")
				cur.env[k] = v
			}
		case "EXPOSE":
			cur.ports = strings.Fields(rest)
		case "ENTRYPOINT":
			if err := json.Unmarshal([]byte(rest), &cur.entrypoint); err != nil {
				t.Fatalf("ENTRYPOINT %s is not exec form: %v", rest, err)
			}
		case "COPY":
			f := strings.Fields(rest)
			cur.copies = append(cur.copies, f[len(f)-1])
		}
	}
	return stages
}

// TestDockerfileFollowsImageSpec keeps the Dockerfile for real registries and the test bed's
// images (built from images.conf) the same in paths, user, environment, ports and entrypoint.
func TestDockerfileFollowsImageSpec(t *testing.T) {
	root, err := filepathAbs("../..")
	if err != nil {
		t.Fatal(err)
	}
	spec, err := imagespec.Load(filepath.Join(root, "e2e/testbed/images.conf"))
	if err != nil {
		t.Fatal(err)
	}
	stages := parseDockerfile(t, filepath.Join(root, "Dockerfile"))
	inst, op := stages["instance"], stages["operator"]
	if inst == nil || op == nil {
		t.Fatalf("Dockerfile needs stages named instance and operator, has %v", stages)
	}
	wantEnv := map[string]string{}
	for _, kv := range spec.InstanceEnv() {
		wantEnv[kv[0]] = kv[1]
	}
	checks := []struct {
		what      string
		got, want any
	}{
		{"instance base", inst.from, "postgres:${PG_MAJOR}"},
		{"instance user", inst.user, spec["INSTANCE_USER"]},
		{"instance env", inst.env, wantEnv},
		{"instance ports", inst.ports, spec.Fields("INSTANCE_PORTS")},
		{"instance entrypoint", inst.entrypoint, spec.Fields("INSTANCE_ENTRYPOINT")},
		{"instance copies", inst.copies, []string{spec["PGWARDEN_PATH"]}},
		{"operator user", op.user, spec["OPERATOR_USER"]},
		{"operator ports", op.ports, spec.Fields("OPERATOR_PORTS")},
		{"operator entrypoint", op.entrypoint, spec.Fields("OPERATOR_ENTRYPOINT")},
		{"operator copies", op.copies, []string{spec["PGWARDEN_PATH"]}},
		{"PG_BIN_DIR", spec["PG_BIN_DIR"], "/usr/lib/postgresql/" + spec["PG_MAJOR"] + "/bin"},
	}
	for _, c := range checks {
		if d := cmp.Diff(c.want, c.got); d != "" {
			t.Errorf("%s differs between images.conf and Dockerfile (-conf +Dockerfile):\n%s", c.what, d)
		}
	}
	if !strings.Contains(string(mustRead(t, filepath.Join(root, "Dockerfile"))), "ARG PG_MAJOR="+spec["PG_MAJOR"]) {
		t.Errorf("Dockerfile's PG_MAJOR is not %s", spec["PG_MAJOR"])
	}
}

func filepathAbs(p string) (string, error) { return filepath.Abs(p) }

func mustRead(t *testing.T, p string) []byte {
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
