package readme

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"sigs.k8s.io/yaml"

	pgv1 "github.com/pgwarden/pgwarden/api/v1"
	"github.com/pgwarden/pgwarden/e2e/testbed"
)

const root = "../.."

func readFile(t *testing.T, rel string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, rel))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// goFields returns the JSON paths of every field of v (prefix "spec" or "status"), descending
// into the types of api/v1 only: fields of Kubernetes' own types (resources, affinity,
// tolerations, conditions, a quantity) are documented as one entry each.
func goFields(prefix string, typ reflect.Type, out map[string]bool) {
	for i := 0; i < typ.NumField(); i++ {
		f := typ.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "" || name == "-" {
			continue
		}
		path := prefix + "." + name
		ft := f.Type
		for ft.Kind() == reflect.Pointer || ft.Kind() == reflect.Slice {
			if ft.Kind() == reflect.Slice {
				path += "[]"
			}
			ft = ft.Elem()
		}
		if ft.Kind() == reflect.Struct && ft.PkgPath() == reflect.TypeOf(pgv1.PostgresCluster{}).PkgPath() {
			out[path] = true // the object itself is documented too
			goFields(path, ft, out)
			continue
		}
		out[path] = true
	}
}

// crdFields walks the CRD schema the same way: down to the paths goLeaves says end there.
func crdFields(prefix string, s apiextensionsv1.JSONSchemaProps, stopAt map[string]bool, out map[string]apiextensionsv1.JSONSchemaProps) {
	for name, p := range s.Properties {
		path := prefix + "." + name
		for p.Type == "array" && p.Items != nil && p.Items.Schema != nil {
			path += "[]"
			p = *p.Items.Schema
		}
		out[path] = p
		if !stopAt[path] && len(p.Properties) > 0 {
			crdFields(path, p, stopAt, out)
		}
	}
}

func loadCRD(t *testing.T) apiextensionsv1.JSONSchemaProps {
	t.Helper()
	var crd apiextensionsv1.CustomResourceDefinition
	if err := yaml.Unmarshal([]byte(readFile(t, "deploy/crd/pgwarden.io_postgresclusters.yaml")), &crd); err != nil {
		t.Fatal(err)
	}
	if len(crd.Spec.Versions) != 1 || crd.Spec.Versions[0].Schema == nil {
		t.Fatalf("want one version with a schema in the CRD, got %d", len(crd.Spec.Versions))
	}
	return *crd.Spec.Versions[0].Schema.OpenAPIV3Schema
}

// TestReferenceCoversEveryField: README.md's PostgresCluster reference has a row for every field
// of api/v1 and of the CRD, with the CRD's default, bounds, enum values, and a word on each
// validation rule.
func TestReferenceCoversEveryField(t *testing.T) {
	md := readFile(t, "README.md")
	rows, err := Rows(md)
	if err != nil {
		t.Fatal(err)
	}

	goPaths := map[string]bool{}
	goFields("spec", reflect.TypeOf(pgv1.PostgresClusterSpec{}), goPaths)
	goFields("status", reflect.TypeOf(pgv1.PostgresClusterStatus{}), goPaths)
	// Where the Go walk stops, the CRD walk stops too (Kubernetes' own types are one entry).
	stopAt := map[string]bool{}
	for p := range goPaths {
		stopAt[p] = true
	}
	for p := range goPaths {
		for q := range goPaths {
			if strings.HasPrefix(q, p+".") {
				delete(stopAt, p)
			}
		}
	}
	schema := loadCRD(t)
	crdPaths := map[string]apiextensionsv1.JSONSchemaProps{}
	crdFields("spec", schema.Properties["spec"], stopAt, crdPaths)
	crdFields("status", schema.Properties["status"], stopAt, crdPaths)

	var all []string
	for p := range goPaths {
		if _, ok := crdPaths[p]; !ok {
			t.Errorf("%s is a field of api/v1 but not of the CRD in deploy/crd (run make manifests)", p)
		}
		all = append(all, p)
	}
	for p := range crdPaths {
		if !goPaths[p] {
			t.Errorf("%s is in the CRD but not a field of api/v1 (run make manifests)", p)
		}
	}
	sort.Strings(all)
	// The walk itself must have found the API: spec and status, nested types included.
	if len(all) < 30 || !goPaths["spec.replication.synchronous.number"] || !goPaths["status.instancesStatus[].replayLSN"] {
		t.Fatalf("found only %d fields in api/v1: %v", len(all), all)
	}

	for _, p := range all {
		row, ok := rows[p]
		if !ok {
			t.Errorf("README.md: no reference row for `%s` (a table row whose first cell is `%s`)", p, p)
			continue
		}
		s := crdPaths[p]
		text := strings.Join(row, " | ")
		if strings.HasPrefix(p, "spec.") {
			if len(row) != 5 {
				t.Errorf("README.md: the row of `%s` has %d cells, want 5 (field, type, default, validation, meaning)", p, len(row))
				continue
			}
			def, validation := row[2], row[3]
			if s.Default != nil {
				if want := strings.Trim(string(s.Default.Raw), `"`); !containsWord(def, want) {
					t.Errorf("README.md: `%s` defaults to %s in the CRD; its default cell says %q", p, want, def)
				}
			}
			for what, v := range map[string]*float64{"minimum": s.Minimum, "maximum": s.Maximum} {
				if v != nil && !containsWord(validation, strconv.FormatFloat(*v, 'f', -1, 64)) {
					t.Errorf("README.md: `%s` has %s %v in the CRD; its validation cell says %q", p, what, *v, validation)
				}
			}
			if s.MaxProperties != nil && !containsWord(validation, strconv.FormatInt(*s.MaxProperties, 10)) {
				t.Errorf("README.md: `%s` allows at most %d entries in the CRD; its validation cell says %q", p, *s.MaxProperties, validation)
			}
			if len(s.XValidations) > 0 && (validation == "" || validation == "—") {
				t.Errorf("README.md: `%s` has %d validation rule(s) in the CRD; its validation cell says none", p, len(s.XValidations))
			}
		}
		for _, e := range s.Enum {
			if v := strings.Trim(string(e.Raw), `"`); !strings.Contains(text, v) {
				t.Errorf("README.md: `%s` may be %s (CRD enum); its row does not say so", p, v)
			}
		}
	}

	// The object-level rules: the name, and promotePod naming one of the cluster's pods.
	if row, ok := rows["metadata.name"]; !ok {
		t.Error("README.md: no reference row for `metadata.name` (the CRD limits it to a DNS-1035 label of at most 50 characters)")
	} else if !containsWord(strings.Join(row, " "), "50") {
		t.Errorf("README.md: the row of `metadata.name` does not give the 50-character limit: %q", row)
	}
	// Every phase is explained in the phases table.
	for _, ph := range []pgv1.Phase{pgv1.PhaseCreating, pgv1.PhaseHealthy, pgv1.PhaseFailoverRequired,
		pgv1.PhaseFailingOver, pgv1.PhaseSwitchingOver, pgv1.PhaseDegraded} {
		if _, ok := rows[string(ph)]; !ok {
			t.Errorf("README.md: no row for phase `%s`", ph)
		}
	}
	for _, c := range []string{pgv1.ConditionReady, pgv1.ConditionSecretsReady, pgv1.ConditionAutomaticFailover} {
		if _, ok := rows[c]; !ok {
			t.Errorf("README.md: no row for condition `%s`", c)
		}
	}
}

func containsWord(s, w string) bool {
	return regexp.MustCompile(`(^|[^0-9A-Za-z.])` + regexp.QuoteMeta(w) + `($|[^0-9A-Za-z])`).MatchString(s)
}

// TestQuickStartHasTheSteps: the quick start shows what the first hour needs, in order, and ends
// by taking the demo down again.
func TestQuickStartHasTheSteps(t *testing.T) {
	blocks, err := QuickStart(readFile(t, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	var all strings.Builder
	for _, b := range blocks {
		all.WriteString(b.Text)
	}
	text := all.String()
	pos := 0
	for _, want := range []string{"make demo\n", "kubectl get pgc", "demo-rw", "psql", "kubectl pgwarden promote demo", "make demo-down"} {
		i := strings.Index(text[pos:], want)
		if i < 0 {
			t.Fatalf("README.md quick start: %q missing (or out of order) in its ```sh blocks:\n%s", want, text)
		}
		pos += i + len(want)
	}
	if strings.TrimSpace(text[pos:]) != "" && !strings.HasPrefix(strings.TrimSpace(text[pos:]), "#") {
		t.Errorf("README.md quick start: commands after make demo-down: %q", text[pos:])
	}
	// The superuser password only ever goes into psql's environment.
	for _, bad := range []string{"echo $PGPASSWORD", "--password", "password="} {
		if strings.Contains(text, bad) {
			t.Errorf("README.md quick start shows the password (%q)", bad)
		}
	}
}

// TestMakeTargetsExist: every `make TARGET` the README mentions is a target of the Makefile.
func TestMakeTargetsExist(t *testing.T) {
	targets := map[string]bool{}
	files := []string{"Makefile"}
	for _, m := range regexp.MustCompile(`(?m)^include (\S+)`).FindAllStringSubmatch(readFile(t, "Makefile"), -1) {
		files = append(files, m[1])
	}
	def := regexp.MustCompile(`(?m)^([a-zA-Z0-9_-]+):`)
	for _, f := range files {
		for _, m := range def.FindAllStringSubmatch(readFile(t, f), -1) {
			targets[m[1]] = true
		}
	}
	seen := map[string]bool{}
	for _, m := range regexp.MustCompile(`\bmake((?:\s+-s)?(?:\s+[a-z][a-z0-9-]*)+)`).FindAllStringSubmatch(readFile(t, "README.md"), -1) {
		for _, w := range strings.Fields(m[1]) {
			if w == "-s" || seen[w] {
				continue
			}
			seen[w] = true
			if !targets[w] {
				t.Errorf("README.md mentions `make %s`, which is not a target (%s)", w, strings.Join(files, ", "))
			}
		}
	}
	if len(seen) == 0 {
		t.Fatal("found no make command in README.md")
	}
}

func TestRowsAndBlocks(t *testing.T) {
	md := "x\n| field | a |\n| --- | --- |\n| `spec.a` | `x \\| y` | 3 |\n| plain | 1 |\n" +
		QuickStartBegin + "\n```sh\nmake demo\n```\n```text\nout\n```\n" + QuickStartEnd + "\n```sh\nnot run\n```\n"
	rows, err := Rows(md)
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(rows); got != "map[spec.a:[`spec.a` `x | y` 3]]" {
		t.Errorf("rows: %s", got)
	}
	qs, err := QuickStart(md)
	if err != nil {
		t.Fatal(err)
	}
	if len(qs) != 1 || qs[0].Text != "make demo\n" || qs[0].Line != 7 {
		t.Errorf("quick start: %+v", qs)
	}
	if _, err := QuickStart("no markers"); err == nil {
		t.Error("no error without markers")
	}
	if _, err := Blocks("```sh\nunclosed\n"); err == nil {
		t.Error("no error for an unclosed block")
	}
}

// TestInstallOverlayRenders: the kustomize overlay of "Installing on a real cluster" renders with
// the test bed's kubectl (deploy/default from this checkout) and sets both images.
func TestInstallOverlayRenders(t *testing.T) {
	blocks, err := Blocks(readFile(t, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	var overlay string
	for _, b := range blocks {
		if b.Info == "yaml" && strings.HasPrefix(b.Text, "# kustomization.yaml\n") {
			overlay = b.Text
		}
	}
	if overlay == "" {
		t.Fatal("README.md: no ```yaml block starting with '# kustomization.yaml'")
	}
	const base = "../pgwarden/deploy/default"
	if !strings.Contains(overlay, "- "+base) {
		t.Fatalf("README.md: the overlay does not use %s:\n%s", base, overlay)
	}
	deploy, err := filepath.Abs(filepath.Join(root, "deploy", "default"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	rel, err := filepath.Rel(dir, deploy) // kustomize wants a relative path
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(strings.Replace(overlay, base, rel, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(testbed.Binary(t, "kubectl"), "kustomize", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl kustomize: %v\n%s", err, out)
	}
	for _, want := range []string{
		"image: registry.example.com/pgwarden-operator:0.1.0",
		"- name: PGWARDEN_INSTANCE_IMAGE\n          value: registry.example.com/pgwarden:0.1.0",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the rendered overlay lacks %q", want)
		}
	}
}

func TestShellQuote(t *testing.T) {
	for _, s := range []string{`eval "$(make -s demo-env)"`, `a'b $(x) \n ''`, "export X=$(kubectl get svc -o jsonpath='{.a}')", ""} {
		out, err := exec.Command("bash", "-c", "printf %s "+ShellQuote(s)).Output()
		if err != nil || string(out) != s {
			t.Errorf("ShellQuote(%q): bash printed %q (%v)", s, out, err)
		}
	}
}

// TestAnchorsResolve: every in-page link [..](#anchor) names a heading (GitHub's slugs).
func TestAnchorsResolve(t *testing.T) {
	md := readFile(t, "README.md")
	slugs := map[string]bool{}
	inCode := false
	for _, line := range strings.Split(md, "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			inCode = !inCode
		}
		if inCode || !strings.HasPrefix(line, "#") {
			continue
		}
		title := strings.TrimSpace(strings.TrimLeft(line, "#"))
		var b strings.Builder
		for _, r := range strings.ToLower(title) {
			switch {
			case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-', r == '_':
				b.WriteRune(r)
			case r == ' ':
				b.WriteByte('-')
			}
		}
		slugs[b.String()] = true
	}
	links := regexp.MustCompile(`\]\(#([^)]+)\)`).FindAllStringSubmatch(md, -1)
	if len(links) == 0 {
		t.Fatal("no in-page links found")
	}
	for _, m := range links {
		if !slugs[m[1]] {
			t.Errorf("README.md links to #%s, which is no heading", m[1])
		}
	}
}
