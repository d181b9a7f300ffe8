package plugin

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

func TestLagBytes(t *testing.T) {
	if got := LagBytes(1<<32+16, 1<<32-16); got != 32 {
		t.Errorf("across the 4 GiB boundary: %d, want 32", got)
	}
	if got := LagBytes(100, 200); got != 0 {
		t.Errorf("replica ahead (reads not simultaneous): %d, want 0", got)
	}
	if got := LagBytes(1<<64-1, 0); got != 1<<63-1 {
		t.Errorf("huge lag is not clamped: %d", got)
	}
}

func ptr[T any](v T) *T { return &v }

func TestComputeLag(t *testing.T) {
	in := []InstanceReport{
		{Pod: "c-1", Reachable: true, StatusRole: "primary", CurrentLSN: "0/5000000"},
		{Pod: "c-2", Reachable: true, StatusRole: "replica", ReceivedLSN: "0/5000000", ReplayLSN: "0/4FFFF00"},
		{Pod: "c-3", Reachable: false, StatusRole: "", Error: "timeout"},
		{Pod: "c-4", Reachable: true, StatusRole: "replica", ReplayLSN: "0/6000000"}, // read after the primary
		{Pod: "c-5", Reachable: true, StatusRole: "replica", ReplayLSN: "garbage"},
	}
	ComputeLag(in, "c-1")
	want := []*int64{ptr[int64](0), ptr[int64](0x100), nil, ptr[int64](0), nil}
	for i := range in {
		if (in[i].LagBytes == nil) != (want[i] == nil) || (want[i] != nil && *in[i].LagBytes != *want[i]) {
			t.Errorf("%s: lag %v, want %v", in[i].Pod, deref(in[i].LagBytes), deref(want[i]))
		}
	}

	// Two instances say primary (a stale one during a switchover): the Lease holder wins.
	two := []InstanceReport{
		{Pod: "c-1", Reachable: true, StatusRole: "primary", CurrentLSN: "0/100"},
		{Pod: "c-2", Reachable: true, StatusRole: "primary", CurrentLSN: "0/900"},
		{Pod: "c-3", Reachable: true, StatusRole: "replica", ReplayLSN: "0/800"},
	}
	ComputeLag(two, "c-2")
	if two[2].LagBytes == nil || *two[2].LagBytes != 0x100 {
		t.Errorf("lag against the Lease holder: %v, want 256", deref(two[2].LagBytes))
	}

	// No primary answers: no lag at all.
	none := []InstanceReport{{Pod: "c-2", Reachable: true, StatusRole: "replica", ReplayLSN: "0/800"}}
	ComputeLag(none, "c-1")
	if none[0].LagBytes != nil {
		t.Errorf("lag without a primary: %d", *none[0].LagBytes)
	}
}

func deref(p *int64) any {
	if p == nil {
		return nil
	}
	return *p
}

func sampleReport(now time.Time) *Report {
	renew := now.Add(-1500 * time.Millisecond)
	age := 1.5
	return &Report{
		Cluster: "demo", Namespace: "db", Phase: "Healthy", CurrentPrimary: "demo-1", TargetPrimary: "demo-1",
		Lease: &LeaseReport{Name: "demo-primary", Holder: "demo-1", HolderIP: "10.0.0.1", RenewTime: &renew, AgeSeconds: &age, LeaseDurationSeconds: 10},
		Instances: []InstanceReport{
			{Pod: "demo-1", Role: "primary", DesiredRole: "primary", Ready: true, Reachable: true, StatusRole: "primary", Phase: "primary",
				Timeline: 2, CurrentLSN: "0/3000060", LagBytes: ptr[int64](0)},
			{Pod: "demo-2", Role: "replica", DesiredRole: "replica", Ready: true, Reachable: true, StatusRole: "replica", Phase: "replica",
				Timeline: 2, ReceivedLSN: "0/3000060", ReplayLSN: "0/2FFFC00", Upstream: "10.0.0.1", LagBytes: ptr[int64](0x460), LagSeconds: ptr(0.25)},
			{Pod: "demo-3", Role: "", DesiredRole: "replica", Ready: false, Error: "context deadline exceeded"},
		},
		Events: []EventReport{
			{Time: now.Add(-90 * time.Second), Type: "Normal", Reason: "SwitchoverCompleted", Object: "postgrescluster/demo", Message: "demo-1 is primary\n(was demo-2)"},
		},
		Warnings: []string{"something odd"},
	}
}

func TestRenderTable(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	var b bytes.Buffer
	if err := RenderReport(&b, sampleReport(now), OutputTable, now); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	t.Logf("\n%s", out)
	lines := strings.Split(out, "\n")
	find := func(prefix string) []string {
		for _, l := range lines {
			if strings.HasPrefix(l, prefix) {
				return strings.Fields(l)
			}
		}
		t.Fatalf("no line starting with %q in\n%s", prefix, out)
		return nil
	}
	for _, want := range []string{
		"Cluster demo (namespace db): Healthy\n",
		"Lease demo-primary: holder demo-1 (10.0.0.1), renewed 1.5s ago\n",
		"Warning: something odd\n",
		"demo-3: /status unknown: context deadline exceeded\n",
		"Events (last 1):\n",
		"demo-1 is primary (was demo-2)", // one line per event
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q", want)
		}
	}
	if got := strings.Join(find("POD"), " "); got != "POD ROLE DESIRED READY STATUS TL LSN REPLAY LSN LAG LAG (S)" {
		t.Errorf("header %q", got)
	}
	checkRow := func(got []string, want ...string) {
		t.Helper()
		if strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("row %q, want %q", got, want)
		}
	}
	checkRow(find("demo-1 "), "demo-1", "primary", "primary", "true", "primary", "2", "0/3000060", "-", "0", "B", "-")
	checkRow(find("demo-2 "), "demo-2", "replica", "replica", "true", "replica", "2", "0/3000060", "0/2FFFC00", "1.1", "KiB", "0.2s")
	checkRow(find("demo-3 "), "demo-3", "-", "replica", "false", "unknown", "?", "?", "?", "-", "-")
	checkRow(find("1m30s"), "1m30s", "Normal", "SwitchoverCompleted", "postgrescluster/demo", "demo-1", "is", "primary", "(was", "demo-2)")
}

func TestRenderStructured(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	want := sampleReport(now)
	for _, format := range []string{OutputJSON, OutputYAML} {
		var b bytes.Buffer
		if err := RenderReport(&b, want, format, now); err != nil {
			t.Fatal(err)
		}
		raw := b.Bytes()
		if format == OutputYAML {
			if strings.HasPrefix(b.String(), "{") {
				t.Fatalf("yaml output looks like JSON:\n%s", raw)
			}
			var err error
			if raw, err = yaml.YAMLToJSON(raw); err != nil {
				t.Fatalf("invalid YAML: %v\n%s", err, b.String())
			}
		}
		var got Report
		if err := json.Unmarshal(raw, &got); err != nil {
			t.Fatalf("%s: %v", format, err)
		}
		if got.Instances[1].LagBytes == nil || *got.Instances[1].LagBytes != 0x460 || *got.Instances[1].LagSeconds != 0.25 ||
			got.Instances[2].Reachable || got.Instances[2].LagBytes != nil || got.Lease.Holder != "demo-1" || *got.Lease.AgeSeconds != 1.5 ||
			got.Phase != "Healthy" || len(got.Events) != 1 || got.Events[0].Reason != "SwitchoverCompleted" {
			t.Errorf("%s round trip lost data: %+v", format, got)
		}
		// Stable field names users script against.
		var m map[string]any
		_ = json.Unmarshal(raw, &m)
		inst := m["instances"].([]any)[1].(map[string]any)
		for _, k := range []string{"pod", "role", "desiredRole", "ready", "timeline", "receivedLSN", "replayLSN", "lagBytes", "lagSeconds", "reachable"} {
			if _, ok := inst[k]; !ok {
				t.Errorf("%s: instance field %q missing", format, k)
			}
		}
	}
}

func TestFormatBytes(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 3 << 20: "3.0 MiB", 5 << 30: "5.0 GiB"} {
		if got := FormatBytes(n); got != want {
			t.Errorf("FormatBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestCheckOutput(t *testing.T) {
	for _, ok := range []string{"", "table", "json", "yaml"} {
		if checkOutput(ok) != nil {
			t.Errorf("%q refused", ok)
		}
	}
	if checkOutput("wide") == nil {
		t.Error("wide accepted")
	}
}

func TestRenderFence(t *testing.T) {
	now := time.Now()
	r := sampleReport(now)
	r.Instances[0].FenceRequested = true // a primary that waits for its switchover
	r.Instances[1] = InstanceReport{Pod: "demo-2", DesiredRole: "replica", Reachable: true, StatusRole: "replica", Phase: "fenced",
		FenceRequested: true, Fenced: true}
	var b bytes.Buffer
	if err := RenderReport(&b, r, OutputTable, now); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(b.String(), "\n")
	var one, two string
	for _, l := range lines {
		if strings.HasPrefix(l, "demo-1 ") {
			one = l
		}
		if strings.HasPrefix(l, "demo-2 ") {
			two = l
		}
	}
	if !strings.Contains(one, "primary (fence requested)") || !strings.Contains(two, " fenced ") || strings.Contains(two, "requested") {
		t.Errorf("rows:\n%s\n%s", one, two)
	}
	b.Reset()
	if err := RenderReport(&b, r, OutputJSON, now); err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(b.Bytes(), &back); err != nil || !back.Instances[1].Fenced || !back.Instances[0].FenceRequested {
		t.Errorf("json: %v %+v", err, back.Instances)
	}
}
