//go:build node

package node_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	pgv1 "github.com/pgwarden/pgwarden/api/v1"
	"github.com/pgwarden/pgwarden/e2e/checker"
	"github.com/pgwarden/pgwarden/pkg/roles"
)

// The fault suite (issues 5 and 6): each fault is injected into a 3-instance cluster on the
// node under the write checker (e2e/checker), in an asynchronous cluster and in a synchronous
// one (replication.synchronous.number 1). Every run must end Healthy with every replica
// streaming and show no split-brain window; a synchronous run must lose no acknowledged row.
// Rows lost in asynchronous mode are reported (log and results file), not failed on.
//
// Environment:
//
//	PGWARDEN_FAULTS      comma-separated scenarios (default: all; see scenarios())
//	PGWARDEN_FAULT_MODES comma-separated modes: async, sync (default both)
//	PGWARDEN_SOAK        N > 0: instead of each scenario once, N random faults back to back
//	PGWARDEN_SOAK_SEED   the soak's random seed (default: the time; logged)
//	PGWARDEN_SOAK_FOR    a duration or an RFC 3339 time: start no new fault after it (the log
//	                     says how many ran)
//	PGWARDEN_FAULTS_OUT  results directory (default <checkout>/.bench/faults); a run that fails
//	                     or is slow leaves its logs and Events in runs/ below it

// faultRun is one scenario run on one cluster.
type faultRun struct {
	e       *env
	mode    string
	chk     *checker.Checker
	primary string // the primary when the fault was injected
	faultAt time.Time
	moves   bool   // the primary must end up elsewhere
	note    string // what the scenario wants in the results
	// settled, when set, must hold before the run counts as recovered.
	settled func() (bool, string)
}

type scenario struct {
	name   string
	mode   string // "": every mode
	moves  bool
	inject func(r *faultRun)
	// slow: a run whose writes took longer than this to come back (on another instance when the
	// primary moves) leaves its logs and Events in .bench/faults/runs/ (0: only when it fails).
	slow time.Duration
}

func scenarios() []scenario {
	return []scenario{
		{name: "kill-container", moves: true, inject: (*faultRun).killPrimaryContainer, slow: 5 * time.Second},
		{name: "kill-postmaster", inject: (*faultRun).killPostmaster, slow: 5 * time.Second},
		{name: "delete-pod", moves: true, inject: func(r *faultRun) { r.deletePrimary(nil) }, slow: 5 * time.Second},
		{name: "delete-pod-force", moves: true, inject: func(r *faultRun) { r.deletePrimary(ptrInt64(0)) }, slow: 5 * time.Second},
		{name: "partition", moves: true, inject: (*faultRun).partitionPrimary, slow: 22 * time.Second},
		{name: "kill-replica", inject: (*faultRun).killReplica, slow: 5 * time.Second},
		{name: "kill-operator-leader", moves: true, inject: (*faultRun).killPrimaryAndOperatorLeader, slow: 5 * time.Second},
		{name: "unready-primary", moves: true, inject: (*faultRun).unreadyPrimary, slow: 45 * time.Second},
		{name: "switchover-x10", inject: (*faultRun).switchovers},
		{name: "promote-pod", moves: true, inject: (*faultRun).promotePod, slow: 5 * time.Second},
	}
}

func ptrInt64(v int64) *int64 { return &v }

func envList(name string, def []string) []string {
	v := strings.TrimSpace(os.Getenv(name))
	if v == "" {
		return def
	}
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// TestFaults runs the fault suite; see the top of this file.
func TestFaults(t *testing.T) {
	all := scenarios()
	var names []string
	for _, s := range all {
		names = append(names, s.name)
	}
	want := envList("PGWARDEN_FAULTS", names)
	var chosen []scenario
	for _, n := range want {
		if n == "checker-control" {
			continue
		}
		found := false
		for _, s := range all {
			if s.name == n {
				chosen, found = append(chosen, s), true
			}
		}
		if !found {
			t.Fatalf("PGWARDEN_FAULTS: no scenario %q (have %s)", n, strings.Join(names, ", "))
		}
	}
	modes := envList("PGWARDEN_FAULT_MODES", []string{"async", "sync"})
	for _, m := range modes {
		if m != "async" && m != "sync" {
			t.Fatalf("PGWARDEN_FAULT_MODES: no mode %q (async, sync)", m)
		}
	}
	soak := 0
	if v := os.Getenv("PGWARDEN_SOAK"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			t.Fatalf("PGWARDEN_SOAK=%q: want a number of faults", v)
		}
		soak = n
	}

	base := setup(t)
	base.overlay = filepath.Join("e2e", "node", "deploy-ha")
	out := os.Getenv("PGWARDEN_FAULTS_OUT")
	if out == "" {
		out = filepath.Join(base.root, ".bench", "faults")
	}
	res := newResults(t, out)
	base.step("images", base.buildImages)
	base.step("operator (2 replicas, leader election)", base.deployOperator)

	// One cluster per mode, each in its own namespace, bootstrapped side by side.
	clusters := map[string]*env{}
	for _, m := range modes {
		ce := *base
		ce.ns, ce.cluster = base.ns+"-"+m, m
		if m == "sync" {
			ce.syncNumber = 1
		}
		ce.createCluster()
		clusters[m] = &ce
	}
	for _, m := range modes {
		ce := clusters[m]
		t0 := time.Now()
		primary := ce.waitHealthy("", 6*time.Minute)
		ce.waitAllStreaming(primary, 3*time.Minute)
		ce.prepareChecker(time.Minute)
		t.Logf("%s cluster Healthy, all streaming, checker tables ready after %v (primary %s)", m, time.Since(t0).Round(10*time.Millisecond), primary)
	}

	rebuilt := 0
	run := func(m string, s scenario, i int) {
		ok := t.Run(fmt.Sprintf("%s/%s/%d", m, s.name, i), func(st *testing.T) {
			ce := *clusters[m]
			ce.t = st
			ce.runScenario(m, s, i, res)
		})
		if ok {
			return
		}
		// The failure is reported; the next scenarios get a fresh cluster instead of a broken one
		// (the broken one stays until the end, for its logs and events).
		rebuilt++
		ce := *clusters[m]
		ce.ns = fmt.Sprintf("%s-%s-r%d", base.ns, m, rebuilt)
		t0 := time.Now()
		ce.createCluster()
		primary := ce.waitHealthy("", 6*time.Minute)
		ce.waitAllStreaming(primary, 3*time.Minute)
		ce.prepareChecker(time.Minute)
		clusters[m] = &ce
		t.Logf("%s: a fresh cluster in %s after the failure of %s (%v)", m, ce.ns, s.name, time.Since(t0).Round(10*time.Millisecond))
	}
	if soak > 0 {
		seed := uint64(time.Now().UnixNano())
		if v := os.Getenv("PGWARDEN_SOAK_SEED"); v != "" {
			seed, _ = strconv.ParseUint(v, 10, 64)
		}
		t.Logf("soak: %d faults from %d scenarios in modes %v, seed %d (PGWARDEN_SOAK_SEED)", soak, len(chosen), modes, seed)
		rng := rand.New(rand.NewPCG(seed, seed))
		var until time.Time
		if v := os.Getenv("PGWARDEN_SOAK_FOR"); v != "" {
			if d, err := time.ParseDuration(v); err == nil {
				until = time.Now().Add(d)
			} else if until, err = time.Parse(time.RFC3339, v); err != nil {
				t.Fatalf("PGWARDEN_SOAK_FOR=%q: want a duration or an RFC 3339 time", v)
			}
		}
		for i := 1; i <= soak; i++ {
			if !until.IsZero() && time.Now().After(until) {
				t.Logf("soak: PGWARDEN_SOAK_FOR is over: %d of %d faults ran", i-1, soak)
				break
			}
			m := modes[rng.IntN(len(modes))]
			s := chosen[rng.IntN(len(chosen))]
			if s.mode != "" && s.mode != m {
				i--
				continue
			}
			run(m, s, i)
		}
		return
	}
	for _, m := range modes {
		for _, s := range chosen {
			if s.mode == "" || s.mode == m {
				run(m, s, 1)
			}
		}
	}
	if os.Getenv("PGWARDEN_FAULTS") == "" || slices.Contains(want, "checker-control") {
		// Last, as it leaves its cluster broken: the checker must see a split brain made on purpose.
		t.Run(modes[0]+"/checker-control", func(st *testing.T) {
			ce := *clusters[modes[0]]
			ce.t = st
			ce.checkerControl()
		})
	}
}

// checkerControl is the checker's negative control: a replica promoted behind pgwarden's back
// (pg_promote over SQL, no Lease) takes writes while another instance holds the Lease. The
// checker must report it as split brain; if it did not, its zeros above would mean nothing.
func (e *env) checkerControl() {
	primary := e.waitHealthy("", 4*time.Minute)
	e.waitAllStreaming(primary, 3*time.Minute)
	rogue := e.someReplica(primary)
	chk, err := checker.Start(e.checkerConfig(), fmt.Sprintf("control-%d", time.Now().UnixMilli()%100000))
	if err != nil {
		e.t.Fatal(err)
	}
	e.until("the checker's first acknowledged writes", time.Minute, func() (bool, string) {
		return chk.Acked() >= 20, fmt.Sprintf("%d acknowledged", chk.Acked())
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := e.connect(ctx, e.podIP(rogue))
	if err != nil {
		chk.Stop()
		e.t.Fatal(err)
	}
	fault := time.Now()
	_, err = conn.Exec(ctx, "SELECT pg_promote(true, 30)")
	conn.Close(context.Background())
	if err != nil {
		chk.Stop()
		e.t.Fatal(err)
	}
	time.Sleep(3 * time.Second) // probes hit the rogue primary
	rec := chk.Stop()
	v := checker.Judge(rec.Writes, rec.Lease, nil, fault, primary, 0)
	var onRogue int
	for _, w := range v.SplitBrain {
		if w.Instance == rogue {
			onRogue += w.Writes
		}
	}
	var wins []string
	for _, w := range v.SplitBrain {
		wins = append(wins, w.String())
	}
	e.t.Logf("control: %s promoted behind pgwarden's back while %s held the Lease: %d split-brain windows, %d writes on %s:\n  %s",
		rogue, primary, len(v.SplitBrain), onRogue, rogue, strings.Join(wins, "\n  "))
	if onRogue == 0 {
		e.t.Fatalf("the checker saw no split brain on %s, promoted without the Lease", rogue)
	}
}

// runScenario runs one fault under the checker and judges it.
func (e *env) runScenario(mode string, s scenario, i int, res *results) {
	primary := e.waitHealthy("", 4*time.Minute)
	e.waitAllStreaming(primary, 3*time.Minute)
	chk, err := checker.Start(e.checkerConfig(), fmt.Sprintf("%s%d-%d", strings.ReplaceAll(s.name, "-", ""), i, time.Now().UnixMilli()%100000))
	if err != nil {
		e.t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			chk.Stop()
		}
	}()
	// Load before the fault: writes flowing through the Service.
	e.until("the checker's first acknowledged writes", time.Minute, func() (bool, string) {
		n := chk.Acked()
		return n >= 20, fmt.Sprintf("%d acknowledged", n)
	})
	r := &faultRun{e: e, mode: mode, chk: chk, primary: primary, moves: s.moves}
	recorded := false
	defer func() {
		if !recorded {
			res.addFailure(mode, s.name, r)
		}
	}()
	flight := e.startFlightRecorder()
	slow := ""
	defer func() {
		if !e.t.Failed() && slow == "" {
			flight.stop()
			return
		}
		dir := flight.save(filepath.Join(res.dir, "runs", fmt.Sprintf("%s-%s-%s-%d", res.stamp, mode, s.name, i)))
		if slow == "" {
			slow = "failed"
		}
		e.t.Logf("%s/%s %s: logs of the instances and the operator, and the Events, in %s", mode, s.name, slow, dir)
	}()
	r.faultAt = time.Now()
	s.inject(r)

	// Recovered: a write sent after the fault acknowledged, the primary moved (when it must),
	// the scenario's own condition, and the cluster Healthy with every replica streaming.
	var final string
	e.until("recovery from "+s.name, 5*time.Minute, func() (bool, string) {
		if ok, _ := chk.AckedSince(r.faultAt); !ok {
			return false, "no write acknowledged since the fault"
		}
		if r.settled != nil {
			if ok, why := r.settled(); !ok {
				return false, why
			}
		}
		p, why := e.healthyPrimary()
		if p == "" {
			return false, why
		}
		if r.moves && p == r.primary {
			return false, "still primary: " + p
		}
		if ok, why := e.allStreaming(p); !ok {
			return false, why
		}
		final = p
		return true, ""
	})
	healthy := time.Since(r.faultAt)
	// A little more load on the recovered cluster, then the verdict.
	n := chk.Acked()
	e.until("writes after recovery", time.Minute, func() (bool, string) {
		return chk.Acked() >= n+20, fmt.Sprintf("%d acknowledged", chk.Acked())
	})
	rec := chk.Stop()
	stopped = true
	var present map[string]bool
	e.until("reading back from "+final, time.Minute, func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		var err error
		present, err = checker.ReadBack(ctx, e.checkerConfig(), e.podIP(final))
		return err == nil, fmt.Sprint(err)
	})
	v := checker.Judge(rec.Writes, rec.Lease, present, r.faultAt, r.primary, 0)
	e.t.Logf("%s/%s: fault on %s; Healthy with all streaming after %v, primary %s; %s%s", mode, s.name, r.primary,
		healthy.Round(10*time.Millisecond), final, v.Summary(), noteSuffix(r.note))
	res.add(mode, s.name, r, v, healthy, final)
	recorded = true
	back := v.WritableAgain
	if s.moves {
		back = v.WritableElsewhere
	}
	if s.slow > 0 && (back < 0 || back > s.slow) {
		slow = fmt.Sprintf("was slow (writable after %v, more than %v)", back.Round(10*time.Millisecond), s.slow)
	}
	if len(v.SplitBrain) > 0 {
		e.t.Errorf("%d split-brain windows", len(v.SplitBrain))
	}
	if mode == "sync" && len(v.Lost) > 0 {
		e.t.Errorf("synchronous mode lost %d acknowledged rows: %v", len(v.Lost), v.Lost)
	}
	if len(v.Lost) > 0 {
		e.t.Logf("asynchronous mode: %d acknowledged rows lost (reported, not a failure)", len(v.Lost))
	}
}

func noteSuffix(n string) string {
	if n == "" {
		return ""
	}
	return "; " + n
}

func (e *env) checkerConfig() checker.Config {
	svc, err := e.cs.CoreV1().Services(e.ns).Get(context.Background(), e.cluster+"-rw", metav1.GetOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	return checker.Config{Clientset: e.cs, Namespace: e.ns, Cluster: e.cluster, RWHost: svc.Spec.ClusterIP,
		Password: e.password(), Logf: e.t.Logf}
}

func (e *env) prepareChecker(timeout time.Duration) {
	cfg := e.checkerConfig()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := checker.Prepare(ctx, cfg, cfg.RWHost); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) clusterObj() *pgv1.PostgresCluster {
	var pc pgv1.PostgresCluster
	if err := e.c.Get(context.Background(), types.NamespacedName{Namespace: e.ns, Name: e.cluster}, &pc); err != nil {
		e.t.Fatal(err)
	}
	return &pc
}

// healthyPrimary returns the primary if the cluster is Healthy with every instance ready and
// exactly one pod labelled primary that status names; else "" and why not.
func (e *env) healthyPrimary() (string, string) {
	var pc pgv1.PostgresCluster
	if err := e.c.Get(context.Background(), types.NamespacedName{Namespace: e.ns, Name: e.cluster}, &pc); err != nil {
		return "", err.Error()
	}
	l, err := e.cs.CoreV1().Pods(e.ns).List(context.Background(), metav1.ListOptions{LabelSelector: clusterLabel + "=" + e.cluster})
	if err != nil {
		return "", err.Error()
	}
	var primaries, states []string
	nready := 0
	for _, p := range l.Items {
		role := p.Labels[roles.ObservedRoleLabel]
		if role == string(roles.RolePrimary) {
			primaries = append(primaries, p.Name)
		}
		if ready(&p) && p.DeletionTimestamp == nil {
			nready++
		}
		states = append(states, fmt.Sprintf("%s(ready=%v,role=%s)", p.Name, ready(&p), role))
	}
	why := fmt.Sprintf("phase %s (%s), primary %q, pods %s", pc.Status.Phase, pc.Status.PhaseReason, pc.Status.CurrentPrimary, strings.Join(states, " "))
	if pc.Status.Phase == pgv1.PhaseHealthy && nready == instances && len(l.Items) == instances && len(primaries) == 1 &&
		pc.Status.CurrentPrimary == primaries[0] && pc.Status.TargetPrimary == primaries[0] {
		return primaries[0], why
	}
	return "", why
}

// allStreaming says whether primary's pg_stat_replication shows every other instance streaming.
func (e *env) allStreaming(primary string) (bool, string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	p, err := e.cs.CoreV1().Pods(e.ns).Get(ctx, primary, metav1.GetOptions{})
	if err != nil {
		return false, err.Error()
	}
	conn, err := e.connect(ctx, p.Status.PodIP)
	if err != nil {
		return false, err.Error()
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(ctx, "SELECT application_name, state, sync_state FROM pg_stat_replication")
	if err != nil {
		return false, err.Error()
	}
	defer rows.Close()
	streaming := map[string]bool{}
	var all []string
	for rows.Next() {
		var name, state, sync string
		if err := rows.Scan(&name, &state, &sync); err != nil {
			return false, err.Error()
		}
		all = append(all, name+"="+state+"/"+sync)
		if state == "streaming" && name != primary {
			streaming[name] = true
		}
	}
	if err := rows.Err(); err != nil {
		return false, err.Error()
	}
	return len(streaming) == instances-1, "pg_stat_replication on " + primary + ": " + strings.Join(all, ", ")
}

func (e *env) waitAllStreaming(primary string, timeout time.Duration) {
	e.t.Helper()
	e.until("every replica streaming from "+primary, timeout, func() (bool, string) { return e.allStreaming(primary) })
}

func (e *env) pod(name string) *corev1.Pod {
	e.t.Helper()
	p, err := e.cs.CoreV1().Pods(e.ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	return p
}

func restarts(p *corev1.Pod, container string) int32 {
	for _, cs := range p.Status.ContainerStatuses {
		if cs.Name == container {
			return cs.RestartCount
		}
	}
	return 0
}

// currentPrimaryMoved: the operator has completed a failover away from old.
func (r *faultRun) currentPrimaryMoved() (bool, string) {
	pc := r.e.clusterObj()
	return pc.Status.CurrentPrimary != "" && pc.Status.CurrentPrimary != r.primary,
		fmt.Sprintf("currentPrimary %s, phase %s (%s)", pc.Status.CurrentPrimary, pc.Status.Phase, pc.Status.PhaseReason)
}

// --- the faults ---

func (r *faultRun) killPrimaryContainer() {
	p := r.e.pod(r.primary)
	mgr, pm, err := instanceProcs(p)
	if err != nil {
		r.e.t.Fatal(err)
	}
	r.faultAt = time.Now()
	if err := sigkill(mgr, pm); err != nil {
		r.e.t.Fatal(err)
	}
	r.note = fmt.Sprintf("SIGKILL to instance manager (host PID %d) and postmaster (%d)", mgr, pm)
	before := restarts(p, "postgres")
	r.settled = func() (bool, string) {
		n := restarts(r.e.pod(r.primary), "postgres")
		return n > before, fmt.Sprintf("%s container restarts %d", r.primary, n)
	}
}

func (r *faultRun) killPostmaster() {
	_, pm, err := instanceProcs(r.e.pod(r.primary))
	if err != nil || pm == 0 {
		r.e.t.Fatalf("postmaster of %s: %v", r.primary, err)
	}
	r.faultAt = time.Now()
	if err := sigkill(pm); err != nil {
		r.e.t.Fatal(err)
	}
	r.note = fmt.Sprintf("SIGKILL to the postmaster (host PID %d)", pm)
	r.settled = func() (bool, string) {
		// A new postmaster runs on the old primary's pod (in place, or as a replica).
		_, now, err := instanceProcs(r.e.pod(r.primary))
		if err != nil {
			return false, err.Error()
		}
		return now != 0 && now != pm, fmt.Sprintf("postmaster of %s: host PID %d", r.primary, now)
	}
}

func (r *faultRun) deletePrimary(grace *int64) {
	old := r.e.pod(r.primary)
	r.faultAt = time.Now()
	if err := r.e.cs.CoreV1().Pods(r.e.ns).Delete(context.Background(), r.primary, metav1.DeleteOptions{GracePeriodSeconds: grace}); err != nil {
		r.e.t.Fatal(err)
	}
	r.note = "pod deleted (graceful)"
	if grace != nil {
		r.note = fmt.Sprintf("pod deleted with grace period %d", *grace)
	}
	r.settled = func() (bool, string) {
		p, err := r.e.cs.CoreV1().Pods(r.e.ns).Get(context.Background(), r.primary, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		return p.UID != old.UID, "pod " + r.primary + " not recreated yet"
	}
}

// partitionPrimary cuts the primary off the API server (the Service IP, and the node address's
// API port, where the DNAT on the host leads) and off every other pod, keeping the host (the
// checker's direct probes and the kubelet's probes still reach it: split brain would show).
// It heals once the failover completed and a write went elsewhere, plus a few seconds in which
// the old primary stays reachable from the host only.
func (r *faultRun) partitionPrimary() {
	mgr, _, err := instanceProcs(r.e.pod(r.primary))
	if err != nil {
		r.e.t.Fatal(err)
	}
	ns, err := openNetns(mgr)
	if err != nil {
		r.e.t.Fatal(err)
	}
	defer ns.close()
	rules := [][]string{
		{"-d", "10.96.0.0/16", "-j", "DROP"},                               // Service IPs, the API server's 10.96.0.1 among them
		{"-s", "10.96.0.0/16", "-j", "DROP"},                               // (and answers on connections already open)
		{"-d", "10.244.0.1", "-p", "tcp", "--dport", "6443", "-j", "DROP"}, // the node address's API port
		{"-s", "10.244.0.1", "-p", "tcp", "--sport", "6443", "-j", "DROP"},
		{"-s", "10.244.0.1", "-j", "RETURN"},
		{"-d", "10.244.0.1", "-j", "RETURN"},
		{"-s", "10.244.0.0/16", "-j", "DROP"},
		{"-d", "10.244.0.0/16", "-j", "DROP"},
	}
	r.faultAt = time.Now()
	if err := ns.fault(rules); err != nil {
		r.e.t.Fatal(err)
	}
	healed := false
	defer func() {
		if !healed {
			_ = ns.heal()
		}
	}()
	r.e.until("a write on another instance during the partition", 3*time.Minute, func() (bool, string) {
		ok, srv := r.chk.AckedSince(r.faultAt)
		return ok && srv != "" && srv != r.primary, "last acknowledged by " + srv
	})
	moved := time.Since(r.faultAt)
	time.Sleep(5 * time.Second) // the old primary stays probed, partitioned, while the new one writes
	if err := ns.heal(); err != nil {
		r.e.t.Fatal(err)
	}
	healed = true
	r.note = fmt.Sprintf("partitioned; writes elsewhere after %v; healed after %v", moved.Round(10*time.Millisecond), time.Since(r.faultAt).Round(10*time.Millisecond))
}

// killReplica kills a replica's container; in synchronous mode one that is a synchronous
// (quorum) standby.
func (r *faultRun) killReplica() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := r.e.connect(ctx, r.e.podIP(r.primary))
	if err != nil {
		r.e.t.Fatal(err)
	}
	var victim, syncState string
	err = conn.QueryRow(ctx, "SELECT application_name, sync_state FROM pg_stat_replication WHERE state = 'streaming' ORDER BY sync_state IN ('sync', 'quorum') DESC, application_name LIMIT 1").Scan(&victim, &syncState)
	conn.Close(context.Background())
	if err != nil {
		r.e.t.Fatal(err)
	}
	if r.mode == "sync" && syncState != "sync" && syncState != "quorum" {
		r.e.t.Fatalf("synchronous cluster: %s is %s, not a synchronous standby", victim, syncState)
	}
	p := r.e.pod(victim)
	before := restarts(p, "postgres")
	r.faultAt = time.Now()
	if err := killContainer(p, "postgres"); err != nil {
		r.e.t.Fatal(err)
	}
	r.note = fmt.Sprintf("container of replica %s (sync_state %s) killed", victim, syncState)
	r.settled = func() (bool, string) {
		n := restarts(r.e.pod(victim), "postgres")
		return n > before, fmt.Sprintf("%s container restarts %d", victim, n)
	}
}

func (r *faultRun) operatorLeader() string {
	var l coordinationv1.Lease
	if err := r.e.c.Get(context.Background(), types.NamespacedName{Namespace: operatorNamespace, Name: operatorName}, &l); err != nil {
		r.e.t.Fatal(err)
	}
	if l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity == "" {
		r.e.t.Fatal("the operator's leader Lease has no holder")
	}
	pod, _, _ := strings.Cut(*l.Spec.HolderIdentity, "_")
	return pod
}

// killPrimaryAndOperatorLeader kills the primary's container, and the operator leader's as soon
// as it has decided the failover (status.targetPrimary moved): the standby operator must take
// over and finish it. (Killing the leader together with the primary is no test of that: the
// primary's container restarts at once and resumes as primary before any operator acts.)
func (r *faultRun) killPrimaryAndOperatorLeader() {
	leader := r.operatorLeader()
	op, err := r.e.cs.CoreV1().Pods(operatorNamespace).Get(context.Background(), leader, metav1.GetOptions{})
	if err != nil {
		r.e.t.Fatal(err)
	}
	r.killPrimaryContainer()
	deadline := time.Now().Add(time.Minute)
	var target string
	for time.Now().Before(deadline) {
		var pc pgv1.PostgresCluster
		if err := r.e.c.Get(context.Background(), types.NamespacedName{Namespace: r.e.ns, Name: r.e.cluster}, &pc); err == nil &&
			pc.Status.TargetPrimary != r.primary {
			target = pc.Status.TargetPrimary
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if target == "" {
		r.e.t.Fatalf("the operator leader %s did not start a failover away from %s within a minute", leader, r.primary)
	}
	decided := time.Since(r.faultAt)
	if err := killContainer(op, "operator"); err != nil {
		r.e.t.Fatal(err)
	}
	// The leader records its choice in status before it annotates the pods, so the kill lands
	// either after the annotations (the instances hand over by themselves) or between (the
	// standby operator finishes once it holds the leader Lease, ~15 s later). Say which.
	annotated := "it had not annotated " + target + " yet"
	if p, err := r.e.cs.CoreV1().Pods(r.e.ns).Get(context.Background(), target, metav1.GetOptions{}); err == nil &&
		p.Annotations[roles.DesiredRoleAnnotation] == string(roles.RolePrimary) {
		annotated = "it had annotated " + target + " primary"
	}
	r.note = fmt.Sprintf("primary's container killed; operator leader %s killed %v after the fault, once it chose %s (%s)", leader,
		decided.Round(10*time.Millisecond), target, annotated)
	primarySettled := r.settled
	r.settled = func() (bool, string) {
		if ok, why := primarySettled(); !ok {
			return false, why
		}
		if !strings.Contains(r.note, "leader now") {
			r.note += "; leader now " + r.operatorLeader()
		}
		return true, ""
	}
}

// unreadyPrimary makes the primary's readiness probe fail (the kubelet's GET /readyz is dropped
// in the pod's network namespace; liveness and everything else still pass): the operator fails
// over by LSN; the old primary must come back as a replica once the probe passes again.
func (r *faultRun) unreadyPrimary() {
	mgr, _, err := instanceProcs(r.e.pod(r.primary))
	if err != nil {
		r.e.t.Fatal(err)
	}
	ns, err := openNetns(mgr)
	if err != nil {
		r.e.t.Fatal(err)
	}
	defer ns.close()
	r.faultAt = time.Now()
	if err := ns.fault([][]string{{"-p", "tcp", "--dport", "8000", "-m", "string", "--string", "GET /readyz", "--algo", "bm", "-j", "DROP"}}); err != nil {
		r.e.t.Fatal(err)
	}
	healed := false
	defer func() {
		if !healed {
			_ = ns.heal()
		}
	}()
	r.e.until("failover away from the unready primary", 4*time.Minute, r.currentPrimaryMoved)
	moved := time.Since(r.faultAt)
	if err := ns.heal(); err != nil {
		r.e.t.Fatal(err)
	}
	healed = true
	r.note = fmt.Sprintf("readiness probe dropped; failover completed after %v", moved.Round(10*time.Millisecond))
}

// switchovers: ten switchovers by annotation in a row, each to a replica, each waited for
// until Healthy with every replica streaming.
func (r *faultRun) switchovers() {
	cur := r.primary
	var took []string
	for i := 0; i < 10; i++ {
		target := r.e.someReplica(cur)
		t0 := time.Now()
		if i == 0 {
			r.faultAt = t0
		}
		r.e.annotateRole(target, roles.RolePrimary)
		r.e.until(fmt.Sprintf("switchover %d to %s", i+1, target), 3*time.Minute, func() (bool, string) {
			p, why := r.e.healthyPrimary()
			if p != target {
				return false, why
			}
			return r.e.allStreaming(p)
		})
		took = append(took, time.Since(t0).Round(10*time.Millisecond).String())
		cur = target
	}
	r.note = "10 switchovers, each until Healthy and streaming: " + strings.Join(took, " ")
}

func (r *faultRun) promotePod() {
	pc := &pgv1.PostgresCluster{ObjectMeta: metav1.ObjectMeta{Name: r.e.cluster, Namespace: r.e.ns}}
	patch := func(v string) {
		p := `{"spec":{"failover":{"promotePod":null}}}`
		if v != "" {
			p = fmt.Sprintf(`{"spec":{"failover":{"promotePod":%q}}}`, v)
		}
		if err := r.e.c.Patch(context.Background(), pc, client.RawPatch(types.MergePatchType, []byte(p))); err != nil {
			r.e.t.Fatal(err)
		}
	}
	// A request is one-shot: an earlier run's value is handled, and setting it again would be no
	// change. Clear it first, as the README tells users, and wait for the operator to see that.
	again := ""
	if old := r.e.clusterObj().Spec.Failover.PromotePod; old != "" {
		patch("")
		r.e.until("status.handledPromotePod cleared", time.Minute, func() (bool, string) {
			h := r.e.clusterObj().Status.HandledPromotePod
			return h == "", "handledPromotePod " + h
		})
		again = " (cleared " + old + " first)"
	}
	target := r.e.someReplica(r.primary)
	r.faultAt = time.Now()
	patch(target)
	r.note = "spec.failover.promotePod=" + target + again
	r.settled = func() (bool, string) {
		p, why := r.e.healthyPrimary()
		return p == target, why
	}
}
