package main

import (
	"bytes"
	"errors"
	"image/png"
	"math"
	"strings"
	"testing"
	"time"
)

func TestParseVmRSS(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    int64
		wantErr bool
	}{
		{"Name:\tpatroni\nVmRSS:\t   59312 kB\nThreads:\t5\n", 59312 * 1024, false},
		{"Name:\tkthreadd\nThreads:\t1\n", 0, true},
		{"VmRSS:\t12 MB\n", 0, true},
	} {
		got, err := parseVmRSS(tc.in)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("parseVmRSS(%q) = %d, %v; want %d, err %v", tc.in, got, err, tc.want, tc.wantErr)
		}
	}
}

func TestParseStatCPU(t *testing.T) {
	// Field 2 holds a space and a ')' to check counting from the last ')'.
	stat := "4242 (py thon) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 5 0 123 0 0"
	got, err := parseStatCPU(stat)
	if err != nil || got != 3.25 {
		t.Fatalf("parseStatCPU = %v, %v; want 3.25", got, err)
	}
	if _, err := parseStatCPU("garbage"); err == nil {
		t.Fatal("parseStatCPU(garbage): no error")
	}
}

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want float64
	}{
		{[]float64{3, 1, 2}, 2},
		{[]float64{4, 1, 2, 3}, 2.5},
		{[]float64{7}, 7},
	} {
		if got := median(tc.in); got != tc.want {
			t.Errorf("median(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
	if !math.IsNaN(median(nil)) {
		t.Error("median(nil) is not NaN")
	}
}

func TestProbeAnalysis(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	fail := errors.New("refused")
	ws := []write{
		{id: 1, end: at(0), server: "a"},
		{id: 2, end: at(50), server: "a"},
		{id: 3, end: at(100), err: fail},
		{id: 4, end: at(900), err: fail},
		{id: 5, end: at(1000), server: "b"},
		{id: 6, end: at(1050), server: "b"},
	}
	w, ok := firstAckAfter(ws, at(10), "a")
	if !ok || w.id != 5 {
		t.Errorf("firstAckAfter = %d, %v; want write 5", w.id, ok)
	}
	if _, ok := firstAckAfter(ws, at(1100), "a"); ok {
		t.Error("firstAckAfter found a write after the last one")
	}
	if got := longestOutage(ws, at(10), at(1100)); got != 950*time.Millisecond {
		t.Errorf("longestOutage = %v, want 950ms", got)
	}
	// No write at all in the window: the whole window is an outage.
	if got := longestOutage(ws, at(2000), at(3000)); got != time.Second {
		t.Errorf("longestOutage (empty window) = %v, want 1s", got)
	}
}

func TestReportWithoutPgwarden(t *testing.T) {
	pa := &results{system: "Patroni"}
	for _, v := range []float64{1.5, 1.7, 1.6} {
		pa.add(figSwitchWritable, v)
	}
	pa.add(figLostKill, 0)
	pa.acked[figLostKill] = 400
	pw := &results{system: "pgwarden", absent: "not plugged in yet"}

	md := markdown(header{when: time.Unix(0, 0), runs: 3, command: "x"}, pa, pw)
	for _, want := range []string{
		"| Planned switchover → new primary writable (s) | 1.60 (1.50–1.70) | n/a | n/a |",
		"| Acknowledged writes lost, primary killed (all runs) | 0 of 400 | n/a | n/a |",
		"- pgwarden: n/a — not plugged in yet.",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("table lacks %q:\n%s", want, md)
		}
	}
	pw = &results{system: "pgwarden"}
	pw.add(figSwitchWritable, 0.4)
	if got := ratio(pw, pa, figSwitchWritable); got != "0.25×" {
		t.Errorf("ratio = %q, want 0.25×", got)
	}

	b, err := chartPNG("test", []*results{pa, nil}, []string{"Patroni", "pgwarden"})
	if err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil || img.Bounds().Dx() != chartWidth {
		t.Fatalf("chart: %v, bounds %v", err, img.Bounds())
	}
}

func TestGlyphs(t *testing.T) {
	for r, g := range glyphs {
		for _, line := range g {
			if len(line) != glyphW || strings.Trim(line, ".#") != "" {
				t.Errorf("glyph %q: bad line %q", r, line)
			}
		}
	}
	for _, r := range rows {
		for _, c := range strings.ToUpper(r.label + " (" + r.unit + ")") {
			if _, ok := glyphs[c]; !ok {
				t.Errorf("no glyph for %q in %q", c, r.label)
			}
		}
	}
}

func TestPhaseOffset(t *testing.T) {
	var got []time.Duration
	for i := 1; i <= 3; i++ {
		got = append(got, phaseOffset(i, 3, 9*time.Second))
	}
	want := []time.Duration{1500 * time.Millisecond, 4500 * time.Millisecond, 7500 * time.Millisecond}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("phaseOffset = %v, want %v", got, want)
		}
	}
}

func TestNSPid(t *testing.T) {
	for _, tc := range []struct {
		status string
		want   int
	}{
		{"Name:\tpgwarden\nNSpid:\t14216\t1\nThreads:\t9\n", 1}, // PID 1 of a container
		{"Name:\tpostgres\nNSpid:\t14290\t27\n", 27},            // its postmaster
		{"Name:\tbash\nNSpid:\t4242\n", 4242},                   // the host's own namespace
		{"Name:\told kernel\n", 0},                              // no NSpid line
	} {
		if got := nsPID(tc.status); got != tc.want {
			t.Errorf("nsPID(%q) = %d, want %d", tc.status, got, tc.want)
		}
	}
}

func TestReportNotes(t *testing.T) {
	pw := &results{system: "pgwarden", notes: []string{"figure X is timed from the kill"}}
	pw.add(figKillStreaming, 3)
	md := markdown(header{when: time.Unix(0, 0), runs: 1, command: "x"}, &results{system: "Patroni"}, pw)
	if !strings.Contains(md, "- pgwarden: figure X is timed from the kill.\n") {
		t.Errorf("table lacks the note:\n%s", md)
	}
}
