// Package checker is the write checker of pgwarden's fault suite: several clients write unique
// keys through the cluster's -rw Service (a fresh connection per write, like an application
// after a failover), every instance is probed with direct writes by pod IP, and the primary
// Lease is watched. At the end the acknowledged keys are read back from the final primary, and
// Judge says what the run cost: acknowledged rows lost, split-brain windows, the longest write
// outage, and how long until the cluster was writable elsewhere.
//
// This file is the pure part (records and the verdict); checker.go talks to PostgreSQL and the
// API server.
package checker

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"
)

// Write is one attempted write: through the -rw Service (Direct false) or straight to one
// instance's pod IP (Direct true, a probe).
type Write struct {
	Key    string
	Client int  // the writer's number; -1 for a probe
	Direct bool // a probe to Target's pod IP
	Target string
	// Sent is taken just before the INSERT went out on an open connection, Acked when the
	// server's answer arrived: an acknowledged commit happened somewhere in [Sent, Acked].
	Sent, Acked time.Time
	// Err is empty for an acknowledged commit. InDoubt: the INSERT was sent and no answer came
	// (the connection broke): the row may or may not exist.
	Err     string
	InDoubt bool
	// Server is the instance (pod name) that acknowledged it, Timeline its WAL insert timeline
	// at that moment.
	Server   string
	ServerIP string
	Timeline uint32
}

// OK says whether the server acknowledged the commit.
func (w Write) OK() bool { return w.Err == "" }

// LeaseObs is one observed state of the primary Lease, in the order observed.
type LeaseObs struct {
	Observed time.Time // when the checker saw this state
	Exists   bool
	Holder   string    // "" when nobody holds it
	Acquired time.Time // spec.acquireTime as the holder wrote it (zero when absent)
}

// Holding is a stretch of time during which the Lease may have been held by Holder.
type Holding struct {
	Holder   string
	From, To time.Time // To zero: still held when the record ends
}

// Holdings turns observations into holdings. A holding starts at the acquireTime its holder
// wrote into the Lease (taken before the write that made it holder, so never late) and ends
// where the next holder's starts, or, when the Lease was released, cleared or deleted, when the
// checker saw that (never early). So every moment at which an instance truly held the Lease lies
// inside one of its holdings: a write that meets none of them was taken by a non-holder.
//
// The times come from one clock: the node test bed runs every pod and the checker on this host.
// On several machines the holdings would need widening by the clock skew (Tolerance in Judge).
func Holdings(obs []LeaseObs) []Holding {
	var out []Holding
	cur := -1 // index in out of the open holding
	for _, o := range obs {
		holder := ""
		if o.Exists {
			holder = o.Holder
		}
		if cur >= 0 {
			h := &out[cur]
			if holder == h.Holder && (o.Acquired.IsZero() || !o.Acquired.After(h.From)) {
				continue // a renewal
			}
			// Ended: where the next holding starts, or when the release was seen.
			end := o.Observed
			if holder != "" && !o.Acquired.IsZero() && o.Acquired.Before(end) {
				end = o.Acquired
			}
			if end.Before(h.From) {
				end = h.From
			}
			h.To = end
			cur = -1
		}
		if holder == "" {
			continue
		}
		from := o.Acquired
		if from.IsZero() || from.After(o.Observed) {
			from = o.Observed
		}
		out = append(out, Holding{Holder: holder, From: from})
		cur = len(out) - 1
	}
	return out
}

// Window is one split-brain window: instance Instance accepted writes it must not have accepted.
type Window struct {
	Instance string
	From, To time.Time // from the first offending write's Sent to the last one's Acked
	Writes   int
	Rule     string // which rule caught it (see Judge)
	Detail   string
}

func (w Window) String() string {
	return fmt.Sprintf("%s %s..%s (%d writes, %s: %s)", w.Instance, w.From.Format("15:04:05.000"),
		w.To.Format("15:04:05.000"), w.Writes, w.Rule, w.Detail)
}

// Split-brain rules.
const (
	// RuleNotHolder: the instance acknowledged a write whose whole [Sent, Acked] lies outside
	// every holding of its own: the Lease was held by someone else, or by nobody, throughout.
	RuleNotHolder = "not-lease-holder"
	// RuleSharedTimeline: two instances acknowledged writes on the same timeline. Every
	// promotion starts a new timeline, so one timeline has one writer; two means diverged
	// histories, whenever they happened.
	RuleSharedTimeline = "shared-timeline"
	// RuleOldTimeline: an instance acknowledged a write on an older timeline after (Sent later
	// than the Acked of) a write another instance acknowledged on a newer one: the old primary
	// still took writes after its successor did.
	RuleOldTimeline = "old-timeline-after-new"
)

// SplitBrain finds the split-brain windows among acknowledged writes (through the Service and
// direct probes alike).
//
// Two instances accepting writes in overlapping [Sent, Acked] intervals is not by itself proof:
// in a fast switchover the old primary's last commit and the new one's first can sit in
// overlapping intervals while really happening one after the other. Such a pair is legitimate
// exactly when a handover can be placed between the commits, and the Lease says where
// handovers are; so overlaps are judged by RuleNotHolder (each write must meet a holding of its
// own instance, and holdings of different instances never overlap). The timeline rules catch
// the rest without trusting the Lease at all (e.g. an instance that wrote while its Lease code
// wrongly believed it held the Lease).
//
// tolerance widens every holding at both ends (clock skew between machines; 0 on one host).
func SplitBrain(writes []Write, obs []LeaseObs, tolerance time.Duration) []Window {
	var ok []Write
	for _, w := range writes {
		if w.OK() && w.Server != "" {
			ok = append(ok, w)
		}
	}
	sort.SliceStable(ok, func(i, j int) bool { return ok[i].Sent.Before(ok[j].Sent) })
	holdings := Holdings(obs)
	var windows []Window

	// RuleNotHolder.
	var bad []Write
	for _, w := range ok {
		if !mayHold(holdings, w.Server, w.Sent, w.Acked, tolerance) {
			bad = append(bad, w)
		}
	}
	windows = append(windows, group(bad, RuleNotHolder, func(w Write) string {
		return fmt.Sprintf("Lease holder throughout was %s", holderAt(holdings, w.Sent))
	})...)

	// RuleSharedTimeline: the first writer of a timeline owns it; every write of another
	// instance on it is split brain.
	owner := map[uint32]string{}
	var shared []Write
	for _, w := range ok {
		if w.Timeline == 0 {
			continue
		}
		if o, seen := owner[w.Timeline]; !seen {
			owner[w.Timeline] = w.Server
		} else if o != w.Server {
			shared = append(shared, w)
		}
	}
	windows = append(windows, group(shared, RuleSharedTimeline, func(w Write) string {
		return fmt.Sprintf("timeline %d was %s's", w.Timeline, owner[w.Timeline])
	})...)

	// RuleOldTimeline: the earliest acknowledgement per (timeline, instance) is all it takes.
	type tlServer struct {
		tl     uint32
		server string
	}
	earliest := map[tlServer]time.Time{}
	for _, w := range ok {
		k := tlServer{w.Timeline, w.Server}
		if e, seen := earliest[k]; w.Timeline != 0 && (!seen || w.Acked.Before(e)) {
			earliest[k] = w.Acked
		}
	}
	var old []Write
	var why []string
	for _, w := range ok {
		if w.Timeline == 0 {
			continue
		}
		for k, at := range earliest {
			if k.server != w.Server && k.tl > w.Timeline && at.Before(w.Sent) {
				old = append(old, w)
				why = append(why, fmt.Sprintf("timeline %d after %s acknowledged on timeline %d at %s",
					w.Timeline, k.server, k.tl, at.Format("15:04:05.000")))
				break
			}
		}
	}
	i := 0
	windows = append(windows, group(old, RuleOldTimeline, func(Write) string { i++; return why[i-1] })...)
	return windows
}

// mayHold says whether instance may have held the Lease at some moment of [from, to].
func mayHold(hs []Holding, instance string, from, to time.Time, tol time.Duration) bool {
	for _, h := range hs {
		if h.Holder != instance {
			continue
		}
		if h.From.Add(-tol).After(to) {
			continue
		}
		if !h.To.IsZero() && h.To.Add(tol).Before(from) {
			continue
		}
		return true
	}
	return false
}

func holderAt(hs []Holding, t time.Time) string {
	for _, h := range hs {
		if !h.From.After(t) && (h.To.IsZero() || h.To.After(t)) {
			return h.Holder
		}
	}
	return "nobody"
}

// group merges offending writes (sorted by Sent) of one instance that follow each other within
// a second into windows; detail describes the first write of each.
func group(bad []Write, rule string, detail func(Write) string) []Window {
	var out []Window
	open := map[string]int{}
	for _, w := range bad {
		d := detail(w)
		if i, ok := open[w.Server]; ok && w.Sent.Sub(out[i].To) < time.Second {
			out[i].Writes++
			if w.Acked.After(out[i].To) {
				out[i].To = w.Acked
			}
			continue
		}
		out = append(out, Window{Instance: w.Server, From: w.Sent, To: w.Acked, Writes: 1, Rule: rule, Detail: d})
		open[w.Server] = len(out) - 1
	}
	return out
}

// Verdict is what one run under the checker cost.
type Verdict struct {
	Attempted, Acked, Failed int
	// InDoubt writes got no answer after they were sent; InDoubtPresent of them exist at the end.
	InDoubt, InDoubtPresent int
	// Lost are acknowledged keys (through the Service) missing on the final primary.
	Lost []string
	// SplitBrain windows (SplitBrain).
	SplitBrain []Window
	// LongestOutage is the longest stretch without an acknowledged write through the Service,
	// from OutageFrom.
	LongestOutage time.Duration
	OutageFrom    time.Time
	// WritableElsewhere is the time from the fault until the Service first acknowledged a write
	// (sent after the fault) on another instance than the faulted primary; -1 when that did
	// not happen (e.g. the fault did not move the primary).
	WritableElsewhere time.Duration
	NewPrimary        string
	// WritableAgain is the time from the fault until the Service first acknowledged a write
	// sent after it, on any instance; -1 when none was.
	WritableAgain time.Duration
}

// Judge computes the verdict. present is the set of keys found on the final primary; fault is
// when the fault was injected and faulted the instance that was primary then.
func Judge(writes []Write, obs []LeaseObs, present map[string]bool, fault time.Time, faulted string, tolerance time.Duration) Verdict {
	v := Verdict{WritableElsewhere: -1, WritableAgain: -1}
	var acks []time.Time
	first, last := time.Time{}, time.Time{}
	for _, w := range writes {
		if w.Direct {
			continue
		}
		v.Attempted++
		if first.IsZero() || w.Sent.Before(first) {
			first = w.Sent
		}
		if w.Acked.After(last) {
			last = w.Acked
		}
		switch {
		case w.OK():
			v.Acked++
			acks = append(acks, w.Acked)
			if !present[w.Key] {
				v.Lost = append(v.Lost, w.Key)
			}
			if d := w.Acked.Sub(fault); !fault.IsZero() && !w.Sent.Before(fault) && (v.WritableAgain < 0 || d < v.WritableAgain) {
				v.WritableAgain = d
			}
			if !fault.IsZero() && w.Server != faulted && !w.Sent.Before(fault) {
				if d := w.Acked.Sub(fault); v.WritableElsewhere < 0 || d < v.WritableElsewhere {
					v.WritableElsewhere, v.NewPrimary = d, w.Server
				}
			}
		case w.InDoubt:
			v.InDoubt++
			if present[w.Key] {
				v.InDoubtPresent++
			}
		default:
			v.Failed++
		}
	}
	slices.Sort(v.Lost)
	slices.SortFunc(acks, func(a, b time.Time) int { return a.Compare(b) })
	prev := first
	for _, a := range acks {
		if d := a.Sub(prev); d > v.LongestOutage {
			v.LongestOutage, v.OutageFrom = d, prev
		}
		prev = a
	}
	if d := last.Sub(prev); d > v.LongestOutage && !prev.IsZero() {
		v.LongestOutage, v.OutageFrom = d, prev
	}
	v.SplitBrain = SplitBrain(writes, obs, tolerance)
	return v
}

// Summary is a one-line account of the verdict for logs.
func (v Verdict) Summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d writes through -rw: %d acknowledged, %d failed, %d in doubt (%d present); %d acknowledged lost",
		v.Attempted, v.Acked, v.Failed, v.InDoubt, v.InDoubtPresent, len(v.Lost))
	if len(v.Lost) > 0 {
		keys := v.Lost
		if len(keys) > 10 {
			keys = keys[:10]
		}
		fmt.Fprintf(&b, " (%s", strings.Join(keys, ","))
		if len(v.Lost) > 10 {
			b.WriteString(",...")
		}
		b.WriteString(")")
	}
	fmt.Fprintf(&b, "; longest outage %s", v.LongestOutage.Round(time.Millisecond))
	if v.WritableElsewhere >= 0 {
		fmt.Fprintf(&b, "; writable on %s after %s", v.NewPrimary, v.WritableElsewhere.Round(time.Millisecond))
	}
	fmt.Fprintf(&b, "; %d split-brain windows", len(v.SplitBrain))
	for _, w := range v.SplitBrain {
		b.WriteString("\n  split brain: " + w.String())
	}
	return b.String()
}
