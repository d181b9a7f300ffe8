package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Deadlines of the waits in the scenarios. Generous: they only turn a hang
// into an error; a figure near one of them is itself the finding.
const (
	healthyLimit  = 4 * time.Minute // healthy again after a scenario (may include pg_rewind or a clone)
	eventLimit    = 3 * time.Minute // writable / streaming after the action
	warmupLimit   = 30 * time.Second
	pollInterval  = 100 * time.Millisecond // resolution of the streaming figures
	warmupAcks    = 20                     // ~1 s of acknowledged writes before the action
	probeCooldown = 2 * time.Second        // writes after the last event, so the outage window is closed
)

// figure identifies one row of the table.
type figure int

const (
	figSwitchWritable figure = iota
	figSwitchStreaming
	figSwitchOutage
	figKillWritable
	figKillStreaming
	figKillOutage
	figRSS
	figCPU
	figLostSwitch
	figLostKill
	numFigures
)

// results are the per-run values of one system; a failed run leaves no value.
type results struct {
	system string
	values [numFigures][]float64
	acked  [numFigures]int // for the lost-writes rows: acknowledged writes, all runs
	failed []string        // what went wrong, one line per failed scenario run
	absent string          // why the system has no results ("" when it has)
	notes  []string        // how this system's figures differ in what they time
}

func (r *results) add(f figure, v float64) { r.values[f] = append(r.values[f], v) }

// bench runs the scenarios against one started cluster.
type bench struct {
	cl     Cluster
	name   string
	idle   time.Duration
	settle time.Duration
	// phase is waited after the probe's warm-up and before each fault, a
	// different value each run (see phaseOffset), so the faults land at
	// spread-out points of the managers' periodic loops instead of at the
	// same point every run.
	phase  time.Duration
	log    func(string, ...any)
	nextID int64
	// writesDir, when not "", receives every probe write of every run
	// (<run>.tsv, times relative to the fault) for whoever wants to see
	// where an outage went.
	writesDir string
}

// waitHealthy waits for a primary and every other member streaming from it.
func waitHealthy(ctx context.Context, cl Cluster, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	var last error
	for {
		last = healthy(ctx, cl)
		if last == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not healthy within %s: %w", limit, last)
		}
		if err := sleep(ctx, 500*time.Millisecond); err != nil {
			return err
		}
	}
}

func healthy(ctx context.Context, cl Cluster) error {
	p, err := cl.Primary(ctx)
	if err != nil {
		return err
	}
	for _, m := range cl.Members() {
		if m == p {
			continue
		}
		ok, err := cl.Streaming(ctx, m)
		if err != nil {
			return fmt.Errorf("is %s streaming: %w", m, err)
		}
		if !ok {
			return fmt.Errorf("%s is not streaming from %s", m, p)
		}
	}
	if sh, ok := cl.(systemHealth); ok {
		return sh.SystemHealthy(ctx)
	}
	return nil
}

// prepare waits until the cluster is healthy and has been for the settle
// time, and returns its primary.
func (b *bench) prepare(ctx context.Context) (string, error) {
	if err := waitHealthy(ctx, b.cl, healthyLimit); err != nil {
		return "", err
	}
	if err := sleep(ctx, b.settle); err != nil {
		return "", err
	}
	if err := healthy(ctx, b.cl); err != nil {
		return "", fmt.Errorf("unhealthy after settling: %w", err)
	}
	return b.cl.Primary(ctx)
}

// startWarmProbe starts a probe and waits for warmupAcks acknowledged writes.
func (b *bench) startWarmProbe(ctx context.Context, run string) (*probe, error) {
	p := startProbe(b.cl.ProbeDSN(), run, b.nextID)
	b.nextID += 10_000_000
	deadline := time.Now().Add(warmupLimit)
	for {
		ws := p.snapshot()
		acks, lastErr := 0, error(nil)
		for _, w := range ws {
			if w.err == nil {
				acks++
			} else {
				lastErr = w.err
			}
		}
		if acks >= warmupAcks {
			return p, nil
		}
		if time.Now().After(deadline) {
			p.stop()
			return nil, fmt.Errorf("write probe: %d acknowledged writes in %s (last error: %v)", acks, warmupLimit, lastErr)
		}
		if err := sleep(ctx, pollInterval); err != nil {
			p.stop()
			return nil, err
		}
	}
}

// finishProbe lets the probe write a little longer, stops it, waits for a
// healthy cluster and reads every write back. It returns the writes, the
// outage since t0 and the acknowledged writes lost.
func (b *bench) finishProbe(ctx context.Context, p *probe, run string, t0 time.Time) (time.Duration, int, int, error) {
	_ = sleep(ctx, probeCooldown)
	end := time.Now()
	ws := p.stop()
	if err := waitHealthy(ctx, b.cl, healthyLimit); err != nil {
		return 0, 0, 0, err
	}
	lost, err := readBack(ctx, b.cl.ProbeDSN(), run, ws)
	if err != nil {
		return 0, 0, 0, err
	}
	b.dumpWrites(run, t0, ws)
	acked := 0
	for _, w := range ws {
		if w.err == nil {
			acked++
		}
	}
	return longestOutage(ws, t0, end), lost, acked, nil
}

func (b *bench) dumpWrites(run string, t0 time.Time, ws []write) {
	if b.writesDir == "" {
		return
	}
	var sb strings.Builder
	sb.WriteString("id\tstart_s\tend_s\tserver\tcommitted\terror\n")
	for _, w := range ws {
		e := ""
		if w.err != nil {
			e = strings.ReplaceAll(w.err.Error(), "\t", " ")
		}
		fmt.Fprintf(&sb, "%d\t%.3f\t%.3f\t%s\t%v\t%s\n", w.id, w.start.Sub(t0).Seconds(), w.end.Sub(t0).Seconds(), w.server, w.committed, e)
	}
	fmt.Fprintf(&sb, "# fault at %s\n", t0.UTC().Format(time.RFC3339Nano))
	if err := os.MkdirAll(b.writesDir, 0o755); err == nil {
		_ = os.WriteFile(filepath.Join(b.writesDir, run+".tsv"), []byte(sb.String()), 0o644)
	}
}

// idle measures each member's manager over the idle window; the figures are
// the largest member's (usually the primary's).
func (b *bench) idleRun(ctx context.Context, r *results) error {
	if _, err := b.prepare(ctx); err != nil {
		return err
	}
	members := b.cl.Members()
	pids := map[string][]int{}
	cpu0 := map[string]float64{}
	for _, m := range members {
		ps, err := b.cl.ManagerPIDs(ctx, m)
		if err != nil {
			return err
		}
		pids[m] = ps
		for _, pid := range ps {
			s, err := cpuSeconds(pid)
			if err != nil {
				return fmt.Errorf("cannot read the CPU time of %s's manager: %w", m, err)
			}
			cpu0[m] += s
		}
	}
	t0 := time.Now()
	if err := sleep(ctx, b.idle); err != nil {
		return err
	}
	window := time.Since(t0).Seconds()
	var maxRSS, maxCPU float64
	for _, m := range members {
		var cpu1, rss float64
		var parts []string
		for _, pid := range pids[m] {
			parts = append(parts, rssParts(pid))
			s, err := cpuSeconds(pid)
			if err != nil {
				return fmt.Errorf("%s's manager went away during the idle window: %w", m, err)
			}
			cpu1 += s
			v, err := rssBytes(pid)
			if err != nil {
				return err
			}
			rss += float64(v) / (1 << 20)
		}
		pct := (cpu1 - cpu0[m]) / window * 100
		b.log("  idle %s: manager RSS %.1f MiB (%s), CPU %.2f%% of a core", m, rss, strings.Join(parts, "; "), pct)
		maxRSS, maxCPU = max(maxRSS, rss), max(maxCPU, pct)
	}
	r.add(figRSS, maxRSS)
	r.add(figCPU, maxCPU)
	return nil
}

func (b *bench) switchoverRun(ctx context.Context, r *results, run string) error {
	primary, err := b.prepare(ctx)
	if err != nil {
		return err
	}
	candidate := ""
	for _, m := range b.cl.Members() {
		if m != primary {
			candidate = m
			break
		}
	}
	p, err := b.startWarmProbe(ctx, run)
	if err != nil {
		return err
	}
	if err := sleep(ctx, b.phase); err != nil {
		p.stop()
		return err
	}
	oldAddr := b.cl.ServerAddr(primary)
	t0 := time.Now()
	callErr := make(chan error, 1)
	go func() { callErr <- b.cl.Switchover(ctx, primary, candidate) }()

	var writable, streaming time.Duration
	deadline := t0.Add(eventLimit)
	for writable == 0 || streaming == 0 {
		select {
		case err := <-callErr:
			if err != nil {
				p.stop()
				return err
			}
			callErr = nil // answered; a nil channel never fires again
		default:
		}
		if writable == 0 {
			if w, ok := firstAckAfter(p.snapshot(), t0, oldAddr); ok {
				writable = w.end.Sub(t0)
				if w.server != b.cl.ServerAddr(candidate) {
					b.log("  note: first write after the switchover landed on %s, not on the candidate %s", w.server, candidate)
				}
			}
		}
		if streaming == 0 {
			if np, err := b.cl.Primary(ctx); err == nil && np != primary {
				if ok, _ := b.cl.Streaming(ctx, primary); ok {
					streaming = time.Since(t0)
				}
			}
		}
		if time.Now().After(deadline) {
			p.stop()
			return fmt.Errorf("switchover %s → %s: writable after %v, old primary streaming after %v (0 = not within %s)",
				primary, candidate, writable, streaming, eventLimit)
		}
		if err := sleep(ctx, pollInterval); err != nil {
			p.stop()
			return err
		}
	}
	outage, lost, acked, err := b.finishProbe(ctx, p, run, t0)
	if err != nil {
		return err
	}
	b.log("  switchover %s → %s: writable %.2fs, old primary streaming %.2fs, longest outage %.2fs, lost %d of %d",
		primary, candidate, writable.Seconds(), streaming.Seconds(), outage.Seconds(), lost, acked)
	r.add(figSwitchWritable, writable.Seconds())
	r.add(figSwitchStreaming, streaming.Seconds())
	r.add(figSwitchOutage, outage.Seconds())
	r.add(figLostSwitch, float64(lost))
	r.acked[figLostSwitch] += acked
	return nil
}

func (b *bench) killRun(ctx context.Context, r *results, run string) error {
	primary, err := b.prepare(ctx)
	if err != nil {
		return err
	}
	p, err := b.startWarmProbe(ctx, run)
	if err != nil {
		return err
	}
	if err := sleep(ctx, b.phase); err != nil {
		p.stop()
		return err
	}
	oldAddr := b.cl.ServerAddr(primary)
	t0 := time.Now()
	if err := b.cl.Kill(ctx, primary); err != nil {
		p.stop()
		return err
	}
	var writable time.Duration
	deadline := t0.Add(eventLimit)
	for writable == 0 {
		if w, ok := firstAckAfter(p.snapshot(), t0, oldAddr); ok {
			writable = w.end.Sub(t0)
			break
		}
		if time.Now().After(deadline) {
			p.stop()
			return fmt.Errorf("primary %s killed: no write acknowledged elsewhere within %s", primary, eventLimit)
		}
		if err := sleep(ctx, pollInterval); err != nil {
			p.stop()
			return err
		}
	}
	t1 := time.Now()
	if err := b.cl.Restart(ctx, primary); err != nil {
		p.stop()
		return err
	}
	if restartsByItself(b.cl) {
		// The platform restarted the member on its own, maybe before the
		// new primary was writable: time it from the kill.
		t1 = t0
	}
	var streaming time.Duration
	deadline = t1.Add(eventLimit)
	for streaming == 0 {
		if ok, _ := b.cl.Streaming(ctx, primary); ok {
			streaming = time.Since(t1)
			break
		}
		if time.Now().After(deadline) {
			p.stop()
			return fmt.Errorf("killed member %s restarted: not streaming within %s", primary, eventLimit)
		}
		if err := sleep(ctx, pollInterval); err != nil {
			p.stop()
			return err
		}
	}
	outage, lost, acked, err := b.finishProbe(ctx, p, run, t0)
	if err != nil {
		return err
	}
	b.log("  kill %s: writable elsewhere %.2fs, restarted → streaming %.2fs, longest outage %.2fs, lost %d of %d",
		primary, writable.Seconds(), streaming.Seconds(), outage.Seconds(), lost, acked)
	r.add(figKillWritable, writable.Seconds())
	r.add(figKillStreaming, streaming.Seconds())
	r.add(figKillOutage, outage.Seconds())
	r.add(figLostKill, float64(lost))
	r.acked[figLostKill] += acked
	return nil
}

// heal restarts any member whose manager is not running (a kill scenario cut
// short) and waits for a healthy cluster.
func (b *bench) heal(ctx context.Context) error {
	for _, m := range b.cl.Members() {
		if _, err := b.cl.ManagerPIDs(ctx, m); err != nil {
			b.log("  healing: restarting %s (%v)", m, err)
			if err := b.cl.Restart(ctx, m); err != nil {
				return fmt.Errorf("cannot heal %s: %w", m, err)
			}
		}
	}
	return waitHealthy(ctx, b.cl, healthyLimit)
}

// runSystem starts sys, runs every scenario runs times and stops it.
// phaseOffset is the extra wait before the fault of run i (1-based) of n:
// the midpoints of n equal slices of spread, so n runs sample the whole of a
// periodic loop of length spread evenly (for 3 runs and 10 s: 1.7 s, 5 s,
// 8.3 s).
func phaseOffset(i, n int, spread time.Duration) time.Duration {
	return spread * time.Duration(2*i-1) / time.Duration(2*n)
}

func runSystem(ctx context.Context, sys System, key string, runs int, idle, settle, spread time.Duration, only map[string]bool, writesDir string, log func(string, ...any)) *results {
	r := &results{system: sys.Name()}
	log("%s: starting a 3-member cluster", sys.Name())
	t0 := time.Now()
	cl, err := sys.Start(ctx)
	if errors.Is(err, ErrNotPlugged) {
		r.absent = "not plugged in yet"
		log("%s: %v", sys.Name(), err)
		return r
	}
	if err != nil {
		r.absent = err.Error()
		log("%s: cannot start: %v", sys.Name(), err)
		return r
	}
	log("%s: healthy after %.1fs", sys.Name(), time.Since(t0).Seconds())
	if restartsByItself(cl) {
		r.notes = append(r.notes, rows[figKillStreaming].label+" is timed from the kill, not from a restart: "+
			"the platform restarts a killed member by itself (the kubelet: at once, or after its crash-loop back-off for a pod killed before) and no honest hook keeps it down")
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		if err := cl.Stop(sctx); err != nil {
			log("%s: stop: %v", sys.Name(), err)
		}
	}()
	if err := createProbeTable(ctx, cl.ProbeDSN()); err != nil {
		r.absent = err.Error()
		return r
	}
	b := &bench{cl: cl, name: sys.Name(), idle: idle, settle: settle, log: log, nextID: 1, writesDir: writesDir}
	type step struct {
		name string
		f    func(context.Context, *results, string) error
	}
	steps := []step{
		{"idle", func(ctx context.Context, r *results, _ string) error { return b.idleRun(ctx, r) }},
		{"switchover", b.switchoverRun},
		{"kill", b.killRun},
	}
	for i := 1; i <= runs; i++ {
		b.phase = phaseOffset(i, runs, spread)
		for _, s := range steps {
			if !only[s.name] {
				continue
			}
			if ctx.Err() != nil {
				r.failed = append(r.failed, "interrupted")
				return r
			}
			run := fmt.Sprintf("%s-%s-%d-%d", key, s.name, i, time.Now().UnixNano())
			log("%s: run %d/%d: %s (phase offset %v)", sys.Name(), i, runs, s.name, b.phase.Round(time.Millisecond))
			if err := s.f(ctx, r, run); err != nil {
				msg := fmt.Sprintf("run %d %s: %v", i, s.name, err)
				log("%s: FAILED %s", sys.Name(), msg)
				r.failed = append(r.failed, msg)
				if err := b.heal(ctx); err != nil {
					r.failed = append(r.failed, "gave up: "+err.Error())
					return r
				}
			}
		}
	}
	return r
}
