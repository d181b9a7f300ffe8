package harness

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/pgwarden/pgwarden/e2e/testbed"
)

// ParseExposition parses Prometheus text exposition: sample (name with its labels, as written)
// to value. Comments and blank lines are skipped.
func ParseExposition(t testing.TB, body string) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	for _, line := range strings.Split(body, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			t.Fatalf("bad exposition line %q", line)
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("bad exposition line %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out
}

// SampleName is the metric name of a sample key of ParseExposition.
func SampleName(sample string) string {
	if i := strings.IndexByte(sample, '{'); i >= 0 {
		return sample[:i]
	}
	return sample
}

// Monitoring files: the kustomize component and the Helm chart's copies, which must be equal.
var monitoringFiles = map[string]string{
	"deploy/monitoring/prometheusrule.yaml": "deploy/helm/pgwarden-operator/files/monitoring/prometheusrule.yaml",
	"deploy/monitoring/dashboard.json":      "deploy/helm/pgwarden-operator/files/monitoring/dashboard.json",
	"deploy/monitoring/podmonitor.yaml":     "deploy/helm/pgwarden-operator/files/monitoring/podmonitor.yaml",
}

// allowedForeign are metric names the rules may use that pgwarden does not export.
var allowedForeign = map[string]bool{"up": true}

// MonitoringExpressions returns every PromQL expression of deploy/monitoring: the rules'
// expr and the dashboard's targets' expr, keyed by where they are. It fails the test when a
// file does not parse or the Helm chart's copy differs.
func MonitoringExpressions(t testing.TB) map[string]string {
	t.Helper()
	root, err := testbed.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	read := func(p string) []byte {
		b, err := os.ReadFile(filepath.Join(root, p))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for orig, cp := range monitoringFiles {
		if !bytes.Equal(read(orig), read(cp)) {
			t.Errorf("%s differs from %s: copy it (cp %s %s)", cp, orig, orig, cp)
		}
	}
	exprs := map[string]string{}
	var rule struct {
		APIVersion string         `json:"apiVersion"`
		Metadata   map[string]any `json:"metadata"`
		Kind       string         `json:"kind"`
		Spec       struct {
			Groups []struct {
				Name  string `json:"name"`
				Rules []struct {
					Alert       string            `json:"alert"`
					Record      string            `json:"record"`
					Expr        string            `json:"expr"`
					For         string            `json:"for"`
					Labels      map[string]string `json:"labels"`
					Annotations map[string]string `json:"annotations"`
				} `json:"rules"`
			} `json:"groups"`
		} `json:"spec"`
	}
	if err := yaml.UnmarshalStrict(read("deploy/monitoring/prometheusrule.yaml"), &rule); err != nil {
		t.Fatalf("deploy/monitoring/prometheusrule.yaml: %v", err)
	}
	if rule.APIVersion != "monitoring.coreos.com/v1" || rule.Kind != "PrometheusRule" || len(rule.Spec.Groups) == 0 {
		t.Fatalf("deploy/monitoring/prometheusrule.yaml: kind %q, %d groups", rule.Kind, len(rule.Spec.Groups))
	}
	for _, g := range rule.Spec.Groups {
		for _, r := range g.Rules {
			name := r.Alert + r.Record
			if name == "" || strings.TrimSpace(r.Expr) == "" {
				t.Errorf("rule group %s: a rule without a name or expr", g.Name)
			}
			if r.Alert != "" && r.Labels["severity"] == "" {
				t.Errorf("alert %s has no severity label", r.Alert)
			}
			exprs["rule "+name] = r.Expr
		}
	}
	var dash map[string]any
	if err := json.Unmarshal(read("deploy/monitoring/dashboard.json"), &dash); err != nil {
		t.Fatalf("deploy/monitoring/dashboard.json: %v", err)
	}
	var walk func(path string, v any)
	walk = func(path string, v any) {
		switch v := v.(type) {
		case map[string]any:
			if e, ok := v["expr"].(string); ok {
				exprs["dashboard "+path] = e
			}
			for k, x := range v {
				walk(path+"."+k, x)
			}
		case []any:
			for i, x := range v {
				walk(fmt.Sprintf("%s[%d]", path, i), x)
			}
		}
	}
	walk("", dash)
	if len(exprs) < 10 {
		t.Fatalf("only %d expressions found in deploy/monitoring", len(exprs))
	}
	return exprs
}

// PromQL tokens: strings, label matcher blocks, range/offset brackets, identifiers.
var (
	promString     = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|` + "`[^`]*`")
	promBraces     = regexp.MustCompile(`\{[^{}]*\}`)
	promBrackets   = regexp.MustCompile(`\[[^\[\]]*\]`)
	promGrouping   = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)`)
	promIdentifier = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*(\s*\()?`)
	promNumber     = regexp.MustCompile(`\b\d+(\.\d+)?([eE][+-]?\d+)?[smhdwy]?\b`)
	promKeywords   = map[string]bool{"by": true, "without": true, "on": true, "ignoring": true, "group_left": true,
		"group_right": true, "bool": true, "and": true, "or": true, "unless": true, "offset": true, "inf": true, "nan": true}
	grafanaVars = regexp.MustCompile(`\$\{?[a-zA-Z_]+\}?|\$__[a-z_]+`)
)

// MetricNames returns the metric names an expression uses (functions, keywords, labels and
// Grafana variables left out).
func MetricNames(expr string) []string {
	e := grafanaVars.ReplaceAllString(expr, "1m")
	e = promString.ReplaceAllString(e, `""`)
	for {
		n := promBraces.ReplaceAllString(e, " ")
		if n == e {
			break
		}
		e = n
	}
	e = promBrackets.ReplaceAllString(e, " ")
	e = promGrouping.ReplaceAllString(e, " ")
	e = promNumber.ReplaceAllString(e, " ")
	var names []string
	for _, m := range promIdentifier.FindAllString(e, -1) {
		if strings.HasSuffix(m, "(") {
			continue // a function (or an aggregation)
		}
		if promKeywords[strings.ToLower(m)] {
			continue
		}
		names = append(names, m)
	}
	return names
}

// CheckMonitoringMetrics fails the test when an expression of deploy/monitoring uses a metric
// that is neither in exported (names seen on a real /metrics) nor one of the few foreign names
// allowed; mine selects the names this caller is responsible for (the instance's or the
// operator's).
func CheckMonitoringMetrics(t testing.TB, exported map[string]bool, mine func(name string) bool) {
	t.Helper()
	exprs := MonitoringExpressions(t)
	where := make([]string, 0, len(exprs))
	for w := range exprs {
		where = append(where, w)
	}
	sort.Strings(where)
	checked := 0
	for _, w := range where {
		for _, name := range MetricNames(exprs[w]) {
			switch {
			case allowedForeign[name]:
			case !strings.HasPrefix(name, "pgwarden_"):
				t.Errorf("%s uses %q, which pgwarden does not export: %s", w, name, exprs[w])
			case !mine(name):
			case !exported[name]:
				t.Errorf("%s uses %q, which the running code does not export: %s", w, name, exprs[w])
			default:
				checked++
			}
		}
	}
	if checked == 0 {
		t.Error("no metric of this component is used by deploy/monitoring")
	}
	t.Logf("%d uses of exported metrics checked in %d expressions", checked, len(exprs))
}
