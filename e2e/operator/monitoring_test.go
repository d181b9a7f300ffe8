package operator

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"text/template"

	"sigs.k8s.io/yaml"

	"github.com/pgwarden/pgwarden/e2e/internal/harness"
	"github.com/pgwarden/pgwarden/e2e/testbed"
)

// TestMonitoringKustomize: deploy/monitoring builds with kustomize into the PodMonitors, the
// PrometheusRule and the dashboard ConfigMap.
func TestMonitoringKustomize(t *testing.T) {
	kubectl := testbed.Binary(t, "kubectl")
	out, err := exec.Command(kubectl, "kustomize", filepath.Join(moduleRoot(t), "deploy", "monitoring")).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl kustomize deploy/monitoring: %v\n%s", err, out)
	}
	for _, want := range []string{"kind: PrometheusRule", "name: pgwarden-instances", "name: pgwarden-operator",
		"name: pgwarden-dashboard", "grafana_dashboard: \"1\"", "pgwarden.json: |", "namespace: pgwarden-system"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("kustomize output lacks %q", want)
		}
	}
	harness.MonitoringExpressions(t)
}

type chartFiles struct{ dir string }

func (f chartFiles) Get(p string) string {
	b, err := os.ReadFile(filepath.Join(f.dir, p))
	if err != nil {
		return ""
	}
	return string(b)
}

// TestHelmMonitoringTemplate renders the chart's monitoring template with Go's text/template and
// stand-ins for the few Helm functions it uses (include, indent, nindent; no helm binary here):
// off by default, and when enabled the PodMonitors, the PrometheusRule and the dashboard
// ConfigMap, each a valid object, the dashboard valid JSON.
func TestHelmMonitoringTemplate(t *testing.T) {
	chart := filepath.Join(moduleRoot(t), "deploy", "helm", "pgwarden-operator")
	indent := func(n int, s string) string {
		pad := strings.Repeat(" ", n)
		return pad + strings.ReplaceAll(s, "\n", "\n"+pad)
	}
	var tpl *template.Template
	tpl = template.New("chart").Funcs(template.FuncMap{
		"indent":  indent,
		"nindent": func(n int, s string) string { return "\n" + indent(n, s) },
		"include": func(name string, data any) (string, error) {
			var b bytes.Buffer
			err := tpl.ExecuteTemplate(&b, name, data)
			return b.String(), err
		},
	})
	if _, err := tpl.ParseFiles(filepath.Join(chart, "templates", "_helpers.tpl"), filepath.Join(chart, "templates", "monitoring.yaml")); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(chart, "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var values map[string]any
	if err := yaml.Unmarshal(raw, &values); err != nil {
		t.Fatal(err)
	}
	render := func() string {
		var b bytes.Buffer
		data := map[string]any{"Values": values, "Release": map[string]any{"Namespace": "pgw"}, "Files": chartFiles{chart}}
		if err := tpl.ExecuteTemplate(&b, "monitoring.yaml", data); err != nil {
			t.Fatal(err)
		}
		return b.String()
	}
	if out := strings.TrimSpace(render()); out != "" {
		t.Errorf("monitoring renders with the default values (want off):\n%s", out)
	}
	values["monitoring"].(map[string]any)["enabled"] = true
	var kinds []string
	for _, doc := range strings.Split(render(), "\n---\n") {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		var obj struct {
			Kind     string            `json:"kind"`
			Metadata map[string]any    `json:"metadata"`
			Data     map[string]string `json:"data"`
		}
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			t.Fatalf("%v in:\n%s", err, doc)
		}
		kinds = append(kinds, obj.Kind+"/"+obj.Metadata["name"].(string))
		if obj.Kind == "ConfigMap" && !json.Valid([]byte(obj.Data["pgwarden.json"])) {
			t.Error("the dashboard in the ConfigMap is not valid JSON")
		}
	}
	want := "PodMonitor/pgwarden-instances PodMonitor/pgwarden-operator PrometheusRule/pgwarden ConfigMap/pgwarden-dashboard"
	if got := strings.Join(kinds, " "); got != want {
		t.Errorf("rendered %s, want %s", got, want)
	}
}
