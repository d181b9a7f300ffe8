//go:build node

package node_test

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgwarden/pgwarden/e2e/checker"
)

// results writes one line per scenario run to <dir>/<stamp>.tsv as it goes, and at the end a
// Markdown summary to <dir>/<stamp>.md and <dir>/latest.md.
type results struct {
	t     *testing.T
	dir   string
	stamp string
	mu    sync.Mutex
	rows  []resultRow
}

type resultRow struct {
	mode, scenario              string
	elsewhere, again, outage    time.Duration // -1: did not happen
	healthy                     time.Duration
	acked, lost, inDoubt, split int
	from, to, note              string
	failed                      bool
}

const tsvHeader = "time\tmode\tscenario\tfaulted\tnew_primary\twritable_elsewhere_s\twritable_again_s\tlongest_outage_s\thealthy_s\tacked\tlost\tin_doubt\tsplit_brain\tnote\n"

func newResults(t *testing.T, dir string) *results {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	r := &results{t: t, dir: dir, stamp: time.Now().UTC().Format("20060102-150405")}
	if err := os.WriteFile(r.path("tsv"), []byte(tsvHeader), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.writeMarkdown)
	t.Logf("fault results: %s", r.path("tsv"))
	return r
}

func (r *results) path(ext string) string { return filepath.Join(r.dir, r.stamp+"."+ext) }

func secs(d time.Duration) string {
	if d < 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", d.Seconds())
}

func (r *results) add(mode, scenario string, fr *faultRun, v checker.Verdict, healthy time.Duration, final string) {
	row := resultRow{mode: mode, scenario: scenario, elsewhere: v.WritableElsewhere, again: v.WritableAgain,
		outage: v.LongestOutage, healthy: healthy, acked: v.Acked, lost: len(v.Lost), inDoubt: v.InDoubt,
		split: len(v.SplitBrain), from: fr.primary, to: final, note: fr.note}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.rows = append(r.rows, row)
	line := strings.Join([]string{time.Now().UTC().Format(time.RFC3339), mode, scenario, row.from, row.to,
		secs(row.elsewhere), secs(row.again), secs(row.outage), secs(row.healthy), fmt.Sprint(row.acked),
		fmt.Sprint(row.lost), fmt.Sprint(row.inDoubt), fmt.Sprint(row.split), strings.ReplaceAll(row.note, "\t", " ")}, "\t") + "\n"
	f, err := os.OpenFile(r.path("tsv"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		r.t.Errorf("results: %v", err)
		return
	}
	defer f.Close()
	if _, err := f.WriteString(line); err != nil {
		r.t.Errorf("results: %v", err)
	}
}

// addFailure records a run that did not get as far as a verdict (it failed; the test log says
// why): it counts in the summary as a failed run.
func (r *results) addFailure(mode, scenario string, fr *faultRun) {
	r.mu.Lock()
	defer r.mu.Unlock()
	row := resultRow{mode: mode, scenario: scenario, from: fr.primary, failed: true,
		note: "FAILED before a verdict (see the test log); " + fr.note}
	r.rows = append(r.rows, row)
	line := strings.Join([]string{time.Now().UTC().Format(time.RFC3339), mode, scenario, fr.primary, "", "-", "-", "-", "-",
		"-", "-", "-", "-", strings.ReplaceAll(row.note, "\t", " ")}, "\t") + "\n"
	if f, err := os.OpenFile(r.path("tsv"), os.O_APPEND|os.O_WRONLY, 0); err == nil {
		_, _ = f.WriteString(line)
		f.Close()
	}
}

// stat is "median (max)" of the durations that happened, "-" when none did.
func stat(ds []time.Duration) string {
	var have []time.Duration
	for _, d := range ds {
		if d >= 0 {
			have = append(have, d)
		}
	}
	if len(have) == 0 {
		return "-"
	}
	slices.Sort(have)
	med := have[len(have)/2]
	if len(have) == 1 {
		return secs(med)
	}
	return secs(med) + " (" + secs(have[len(have)-1]) + ")"
}

func (r *results) writeMarkdown() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.rows) == 0 {
		return
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# pgwarden fault suite, %s\n\n", r.stamp)
	b.WriteString("Seconds from the fault; median (max) over the runs. Outage: longest time without an acknowledged write through `-rw`. Lost: acknowledged rows missing on the final primary.\n\n")
	b.WriteString("| scenario | mode | runs | writable elsewhere s | writable again s | longest outage s | Healthy + streaming s | acknowledged | lost | split-brain windows |\n")
	b.WriteString("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	type key struct{ scenario, mode string }
	var order []key
	groups := map[key][]resultRow{}
	for _, row := range r.rows {
		k := key{row.scenario, row.mode}
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], row)
	}
	for _, k := range order {
		var el, ag, ou, he []time.Duration
		acked, lost, split, failed := 0, 0, 0, 0
		for _, row := range groups[k] {
			if row.failed {
				failed++
				continue
			}
			el, ag, ou, he = append(el, row.elsewhere), append(ag, row.again), append(ou, row.outage), append(he, row.healthy)
			acked, lost, split = acked+row.acked, lost+row.lost, split+row.split
		}
		runs := fmt.Sprint(len(groups[k]))
		if failed > 0 {
			runs += fmt.Sprintf(" (%d FAILED)", failed)
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %d | %d | %d |\n", k.scenario, k.mode, runs,
			stat(el), stat(ag), stat(ou), stat(he), acked, lost, split)
	}
	b.WriteString("\nRuns:\n\n| # | mode | scenario | faulted → primary | elsewhere s | outage s | Healthy s | acked | lost | in doubt | split | note |\n| ---: | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n")
	for i, row := range r.rows {
		fmt.Fprintf(&b, "| %d | %s | %s | %s → %s | %s | %s | %s | %d | %d | %d | %d | %s |\n", i+1, row.mode, row.scenario,
			row.from, row.to, secs(row.elsewhere), secs(row.outage), secs(row.healthy), row.acked, row.lost, row.inDoubt, row.split,
			strings.ReplaceAll(row.note, "|", "/"))
	}
	md := []byte(b.String())
	for _, p := range []string{r.path("md"), filepath.Join(r.dir, "latest.md")} {
		if err := os.WriteFile(p, md, 0o644); err != nil {
			r.t.Errorf("results: %v", err)
		}
	}
	r.t.Logf("fault results: %s\n%s", r.path("md"), md)
}
