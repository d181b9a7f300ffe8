package main

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
)

// row describes how a figure is shown.
type row struct {
	label string
	unit  string
	total bool // sum over runs (lost writes), not the median
}

var rows = [numFigures]row{
	figSwitchWritable:  {"Planned switchover → new primary writable", "s", false},
	figSwitchStreaming: {"Planned switchover → old primary streaming again", "s", false},
	figSwitchOutage:    {"Planned switchover: longest write outage", "s", false},
	figKillWritable:    {"Primary killed → writable elsewhere", "s", false},
	figKillStreaming:   {"Killed member restarted → streaming again", "s", false},
	figKillOutage:      {"Primary killed: longest write outage", "s", false},
	figRSS:             {"Manager RSS at idle (largest member)", "MiB", false},
	figCPU:             {"Manager CPU at idle (largest member)", "% of a core", false},
	figLostSwitch:      {"Acknowledged writes lost, switchover (all runs)", "writes", true},
	figLostKill:        {"Acknowledged writes lost, primary killed (all runs)", "writes", true},
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// value is the figure reported for f: median, or total for the lost rows;
// NaN when there is none.
func (r *results) value(f figure) float64 {
	if r == nil || r.absent != "" || len(r.values[f]) == 0 {
		return math.NaN()
	}
	if rows[f].total {
		var s float64
		for _, x := range r.values[f] {
			s += x
		}
		return s
	}
	return median(r.values[f])
}

func formatValue(v float64, unit string) string {
	switch {
	case math.IsNaN(v):
		return "n/a"
	case unit == "writes":
		return fmt.Sprintf("%.0f", v)
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

func (r *results) cell(f figure) string {
	v := r.value(f)
	s := formatValue(v, rows[f].unit)
	if math.IsNaN(v) {
		return s
	}
	if rows[f].total {
		return fmt.Sprintf("%s of %d", s, r.acked[f])
	}
	if n := len(r.values[f]); n > 1 {
		s += fmt.Sprintf(" (%s–%s)", formatValue(slices.Min(r.values[f]), rows[f].unit), formatValue(slices.Max(r.values[f]), rows[f].unit))
	}
	return s
}

// ratio is pgwarden / Patroni, or "n/a".
func ratio(pw, pa *results, f figure) string {
	a, b := pw.value(f), pa.value(f)
	switch {
	case math.IsNaN(a) || math.IsNaN(b):
		return "n/a"
	case rows[f].total:
		return "—" // a ratio of counts that are usually 0 says nothing
	case b == 0:
		return "—"
	default:
		return fmt.Sprintf("%.2f×", a/b)
	}
}

type header struct {
	when       time.Time
	runs       int
	idle       time.Duration
	spread     time.Duration
	command    string
	host       string
	patroniVer string
}

// markdown renders the table with Patroni and pgwarden columns (either may be nil).
func markdown(h header, patroni, pgwarden *results) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# HA benchmark: pgwarden vs Patroni\n\n")
	fmt.Fprintf(&b, "`%s` — %s, %s. Medians of %d runs (min–max in parentheses); lost writes summed over all runs.\n\n",
		h.command, h.when.UTC().Format("2006-01-02 15:04 UTC"), h.host, h.runs)
	fmt.Fprintf(&b, "| figure | Patroni | pgwarden | ratio pgwarden/Patroni |\n| --- | --: | --: | --: |\n")
	for f := figure(0); f < numFigures; f++ {
		label := rows[f].label
		if rows[f].unit != "writes" {
			label += " (" + rows[f].unit + ")"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", label, patroni.cell(f), pgwarden.cell(f), ratio(pgwarden, patroni, f))
	}
	b.WriteString("\n")
	for _, r := range []*results{patroni, pgwarden} {
		if r == nil {
			continue
		}
		if r.absent != "" {
			fmt.Fprintf(&b, "- %s: n/a — %s.\n", r.system, firstLine(r.absent))
		}
		for _, n := range r.notes {
			fmt.Fprintf(&b, "- %s: %s.\n", r.system, n)
		}
		for _, f := range r.failed {
			fmt.Fprintf(&b, "- %s: failed %s\n", r.system, firstLine(f))
		}
	}
	fmt.Fprintf(&b, "- Patroni %s (Debian), ttl %d s, loop_wait %d s, retry_timeout %d s (the defaults); 3 etcd members; PostgreSQL 15; all on loopback.\n",
		h.patroniVer, patroniTTL, patroniLoopWait, patroniRetryTimeout)
	fmt.Fprintf(&b, "- Write probe: a fresh connection and one INSERT every %v; idle window %v; faults spread over %v of loop phase across runs. See e2e/bench/ha/README.md.\n",
		probeInterval, h.idle, h.spread)
	return b.String()
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}
