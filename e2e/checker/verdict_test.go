package checker

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// at is t0 plus s seconds.
func at(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }

// ok is an acknowledged write by server on timeline tl over [sent, acked] (seconds after t0).
func ok(key, server string, tl uint32, sent, acked float64) Write {
	return Write{Key: key, Server: server, Timeline: tl, Sent: at(sent), Acked: at(acked)}
}

// handover: X from 0, Y acquires at 10 (seen at 10.05), and the checker started at 1.
func handover() []LeaseObs {
	return []LeaseObs{
		{Observed: at(1), Exists: true, Holder: "x", Acquired: at(0)},
		{Observed: at(3), Exists: true, Holder: "x", Acquired: at(0)}, // renewals
		{Observed: at(6), Exists: true, Holder: "x", Acquired: at(0)},
		{Observed: at(9.5), Exists: true, Holder: "", Acquired: at(0)}, // released
		{Observed: at(10.05), Exists: true, Holder: "y", Acquired: at(10)},
		{Observed: at(12), Exists: true, Holder: "y", Acquired: at(10)},
	}
}

func TestHoldings(t *testing.T) {
	got := Holdings(handover())
	want := []Holding{{Holder: "x", From: at(0), To: at(9.5)}, {Holder: "y", From: at(10)}}
	if !slices.Equal(got, want) {
		t.Fatalf("holdings %v, want %v", got, want)
	}

	// A missed release: the old holding ends where the next starts. The same holder acquiring
	// again (a later acquireTime) is a new holding. A deleted Lease ends the holding when seen.
	got = Holdings([]LeaseObs{
		{Observed: at(1), Exists: true, Holder: "x", Acquired: at(0)},
		{Observed: at(5), Exists: true, Holder: "y", Acquired: at(4)},
		{Observed: at(8), Exists: true, Holder: "y", Acquired: at(7.5)},
		{Observed: at(9), Exists: false},
		{Observed: at(11), Exists: true, Holder: "z"}, // no acquireTime: from when seen
	})
	want = []Holding{{"x", at(0), at(4)}, {"y", at(4), at(7.5)}, {"y", at(7.5), at(9)}, {"z", at(11), time.Time{}}}
	if !slices.Equal(got, want) {
		t.Fatalf("holdings %v, want %v", got, want)
	}

	// An acquireTime later than the observation (a clock ahead) never delays the holding's start.
	got = Holdings([]LeaseObs{{Observed: at(1), Exists: true, Holder: "x", Acquired: at(2)}})
	if want := []Holding{{Holder: "x", From: at(1)}}; !slices.Equal(got, want) {
		t.Fatalf("holdings %v, want %v", got, want)
	}
}

// A legitimate switchover: the old primary's last commit and the new one's first in
// overlapping intervals (the old one's answer arrived late) is no split brain, and neither is
// the Lease watch seeing the new holder late.
func TestSplitBrainLegitimateHandover(t *testing.T) {
	writes := []Write{
		ok("1", "x", 1, 8, 8.01),
		ok("2", "x", 1, 9.3, 10.3), // committed before the release, answer read late
		ok("3", "y", 2, 10.1, 10.25),
		ok("4", "y", 2, 10.02, 10.04), // before the watch saw y, after y's acquireTime
		ok("5", "y", 2, 11, 11.01),
		{Key: "6", Server: "x", Timeline: 1, Sent: at(11), Acked: at(11.01), Err: "read-only"}, // refused
	}
	if w := SplitBrain(writes, handover(), 0); len(w) != 0 {
		t.Fatalf("split brain reported for a clean handover: %v", w)
	}
}

// A partitioned old primary that keeps taking writes after its successor acquired the Lease
// and wrote: caught by the Lease and by the timelines.
func TestSplitBrainOldPrimaryKeepsWriting(t *testing.T) {
	obs := []LeaseObs{
		{Observed: at(1), Exists: true, Holder: "x", Acquired: at(0)},
		{Observed: at(20.1), Exists: true, Holder: "y", Acquired: at(20)},
	}
	writes := []Write{
		ok("1", "x", 1, 5, 5.01),
		ok("2", "y", 2, 20.5, 20.51),
		ok("3", "x", 1, 21, 21.01), // split brain
		ok("4", "x", 1, 21.3, 21.31),
		ok("5", "x", 1, 25, 25.01), // a second window (more than a second later)
		ok("6", "y", 2, 26, 26.01),
	}
	wins := SplitBrain(writes, obs, 0)
	byRule := map[string][]Window{}
	for _, w := range wins {
		byRule[w.Rule] = append(byRule[w.Rule], w)
		if w.Instance != "x" {
			t.Errorf("window blames %s: %v", w.Instance, w)
		}
	}
	nh := byRule[RuleNotHolder]
	if len(nh) != 2 || nh[0].Writes != 2 || !nh[0].From.Equal(at(21)) || !nh[0].To.Equal(at(21.31)) || nh[1].Writes != 1 {
		t.Fatalf("not-holder windows %v", nh)
	}
	if ot := byRule[RuleOldTimeline]; len(ot) != 2 {
		t.Fatalf("old-timeline windows %v", ot)
	}
	if len(byRule[RuleSharedTimeline]) != 0 {
		t.Fatalf("shared-timeline windows %v", byRule[RuleSharedTimeline])
	}
}

// A write by a non-holder hides neither behind a short interval nor behind "nobody holds it"
// (a broken Lease), and a tolerance only forgives writes within it.
func TestSplitBrainNobodyHolds(t *testing.T) {
	obs := []LeaseObs{
		{Observed: at(1), Exists: true, Holder: "x", Acquired: at(0)},
		{Observed: at(5), Exists: true, Holder: ""}, // broken by the operator
		{Observed: at(6.1), Exists: true, Holder: "y", Acquired: at(6)},
	}
	writes := []Write{ok("1", "x", 1, 5.5, 5.5001)}
	wins := SplitBrain(writes, obs, 0)
	if len(wins) != 1 || wins[0].Rule != RuleNotHolder || wins[0].Detail != "Lease holder throughout was nobody" {
		t.Fatalf("windows %v", wins)
	}
	if wins := SplitBrain(writes, obs, time.Second); len(wins) != 0 {
		t.Fatalf("a write 0.5 s after the end with 1 s tolerance: %v", wins)
	}
	if wins := SplitBrain(writes, obs, 100*time.Millisecond); len(wins) != 1 {
		t.Fatalf("a write 0.5 s after the end with 0.1 s tolerance: %v", wins)
	}
}

// Two instances writing on one timeline is split brain even when the Lease record looks
// fine (e.g. both believed they held it).
func TestSplitBrainSharedTimeline(t *testing.T) {
	obs := []LeaseObs{{Observed: at(1), Exists: true, Holder: "x", Acquired: at(0)},
		{Observed: at(10), Exists: true, Holder: "y", Acquired: at(10)}}
	writes := []Write{
		ok("1", "x", 3, 9, 9.1),
		ok("2", "y", 3, 10.5, 10.6), // y never promoted: still on x's timeline
	}
	wins := SplitBrain(writes, obs, 0)
	if len(wins) != 1 || wins[0].Rule != RuleSharedTimeline || wins[0].Instance != "y" {
		t.Fatalf("windows %v", wins)
	}
}

// Switching back and forth is legitimate: every promotion is a new timeline.
func TestSplitBrainBackAndForth(t *testing.T) {
	obs := []LeaseObs{
		{Observed: at(0), Exists: true, Holder: "x", Acquired: at(0)},
		{Observed: at(10), Exists: true, Holder: "y", Acquired: at(10)},
		{Observed: at(20), Exists: true, Holder: "x", Acquired: at(20)},
	}
	var writes []Write
	for i := range 30 {
		s, tl := "x", uint32(1)
		switch {
		case i >= 20:
			tl = 3
		case i >= 10:
			s, tl = "y", 2
		}
		writes = append(writes, ok(fmt.Sprint(i), s, tl, float64(i)+0.1, float64(i)+0.2))
	}
	if w := SplitBrain(writes, obs, 0); len(w) != 0 {
		t.Fatalf("windows %v", w)
	}
}

func TestJudge(t *testing.T) {
	writes := []Write{
		ok("a", "x", 1, 1, 1.01),
		ok("b", "x", 1, 2, 2.01),
		ok("c", "x", 1, 3, 3.01), // lost: acknowledged by x, not replicated
		{Key: "d", Server: "", Sent: at(3.5), Acked: at(8.5), Err: "timeout", InDoubt: true},
		{Key: "e", Sent: at(4), Acked: at(5), Err: "connect: refused"},
		{Key: "f", Sent: at(4), Acked: at(9), Err: "EOF", InDoubt: true},
		ok("g", "y", 2, 9.9, 10.0),
		ok("h", "y", 2, 11, 11.01),
		{Key: "p1", Direct: true, Client: -1, Server: "x", Timeline: 1, Sent: at(3.2), Acked: at(3.21)}, // probes: never "lost"
	}
	present := map[string]bool{"a": true, "b": true, "d": true, "g": true, "h": true}
	obs := []LeaseObs{{Observed: at(0), Exists: true, Holder: "x", Acquired: at(0)},
		{Observed: at(9.5), Exists: true, Holder: "y", Acquired: at(9.4)}}
	v := Judge(writes, obs, present, at(3.2), "x", 0)
	if v.Attempted != 8 || v.Acked != 5 || v.Failed != 1 || v.InDoubt != 2 || v.InDoubtPresent != 1 {
		t.Fatalf("counts %+v", v)
	}
	if !slices.Equal(v.Lost, []string{"c"}) {
		t.Fatalf("lost %v", v.Lost)
	}
	if v.LongestOutage != at(10).Sub(at(3.01)) || !v.OutageFrom.Equal(at(3.01)) {
		t.Fatalf("longest outage %v from %v", v.LongestOutage, v.OutageFrom)
	}
	if v.WritableElsewhere != at(10).Sub(at(3.2)) || v.NewPrimary != "y" {
		t.Fatalf("writable elsewhere %v on %s", v.WritableElsewhere, v.NewPrimary)
	}
	if v.WritableAgain != at(10).Sub(at(3.2)) {
		t.Fatalf("writable again %v", v.WritableAgain)
	}
	if len(v.SplitBrain) != 0 {
		t.Fatalf("split brain %v", v.SplitBrain)
	}

	// No write elsewhere: -1. An outage running to the end of the run counts.
	v = Judge(writes[:4], obs, present, at(2.5), "x", 0)
	if v.WritableElsewhere != -1 || v.WritableAgain != at(3.01).Sub(at(2.5)) || v.LongestOutage != at(8.5).Sub(at(3.01)) {
		t.Fatalf("%+v", v)
	}
}

func TestInDoubt(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{&pgconn.PgError{Severity: "ERROR", Code: "25006", Message: "cannot execute INSERT in a read-only transaction"}, false},
		{fmt.Errorf("wrapped: %w", &pgconn.PgError{Severity: "ERROR", Code: "23505"}), false},
		{&pgconn.PgError{Severity: "FATAL", Code: "57P01", Message: "terminating connection due to administrator command"}, true},
		{io.ErrUnexpectedEOF, true},
		{errors.New("timeout: context deadline exceeded"), true},
	} {
		if got := inDoubt(c.err); got != c.want {
			t.Errorf("inDoubt(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
