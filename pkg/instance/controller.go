package instance

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"

	"github.com/pgwarden/pgwarden/lifecycle"
	"github.com/pgwarden/pgwarden/pkg/postgres"
	"github.com/pgwarden/pgwarden/pkg/roles"
	"github.com/pgwarden/pgwarden/probes"
)

// phase is where the role controller stands. Only the controller's loop
// goroutine changes it, except for the Lease's fencing callback, which may
// set phaseFenced at any time; every step re-checks it after each blocking
// operation.
type phase int32

const (
	// phaseStarting: the Pod has not been seen yet; postgres is not running.
	phaseStarting phase = iota
	// phaseRejoining: postgres is stopped (bootstrap, after a demotion); the
	// controller waits for what it needs (a Lease holder to clone from or
	// follow) and then starts postgres as a replica (or, when it may, as
	// the primary).
	phaseRejoining
	// phaseReplica: postgres runs as a standby, streaming from the Lease
	// holder (upstream), or from nobody when there is no holder.
	phaseReplica
	// phasePromoting: desired primary; acquiring the Lease, waiting for the
	// old primary's final LSN and for replay, promoting.
	phasePromoting
	// phasePrimary: postgres runs as the primary and this instance holds
	// (and renews) the Lease.
	phasePrimary
	// phaseDemoting: desired replica; unlabelled, shutting down, releasing.
	phaseDemoting
	// phaseFenced: the Lease was lost while it was held: postgres got an
	// immediate shutdown at once. The controller rejoins from here like
	// from phaseRejoining.
	phaseFenced
	// phaseHeld: fenced on request (Pod annotation pgwarden.io/fenced=true).
	// Postgres was stopped with a fast shutdown (as a replica: a primary is
	// switched over first) and stays stopped until the annotation is lifted;
	// then the controller rejoins as a replica. /status shows it as phase
	// "fenced" with fenced true; liveness passes, readiness fails.
	phaseHeld
)

func (p phase) String() string {
	return [...]string{"starting", "rejoining", "replica", "promoting", "primary", "demoting", "fenced", "fenced"}[p]
}

// Timing of the role controller.
const (
	// fastPoll is how often the Lease is read (or tried) while a transition
	// waits on another instance: the successor of a demoting primary, and
	// the demoted primary looking for its successor. A GET every 50 ms for
	// a few seconds is nothing for the API server, and it is most of what
	// keeps a switchover under a second.
	fastPoll = 50 * time.Millisecond
	// fastPollFor bounds fast polling after a transition began; then the
	// Lease is read every retry period.
	fastPollFor = 20 * time.Second
	// apiTimeout bounds one API call of the controller (labels, reads).
	apiTimeout = 5 * time.Second
	// promoteWait is how long pg_promote may take; it takes milliseconds
	// unless the machine is in trouble.
	promoteWait = 60 * time.Second
	// catchUpPoll is how often the promotion target looks at its receive
	// LSN while it waits for the old primary's final LSN.
	catchUpPoll = 20 * time.Millisecond
	// releaseTimeout bounds releasing the Lease after a demotion or at exit.
	releaseTimeout = 5 * time.Second
)

type controllerConfig struct {
	o          Options
	bin        postgres.Bin
	user       *postgres.User
	store      *confStore
	sup        *lifecycle.Supervisor
	prober     *probes.Prober
	kube       *kubeSetup
	connConfig func(context.Context) (*pgx.ConnConfig, error)
	log        *slog.Logger
}

// controller carries out the desired role of the instance's Pod. It is one
// loop goroutine (run) that owns every decision; it talks to postgres only
// through the supervisor's commands and SQL, and to Kubernetes through the
// roles package.
type controller struct {
	controllerConfig
	passfile string
	me       string

	lease  atomic.Pointer[roles.PrimaryLease] // set once the Pod's IP is known
	wake   chan struct{}                      // the fencing callback wakes the loop
	fenced atomic.Pointer[roles.LostError]    // the last loss, for the log

	mu       sync.Mutex
	ph       phase
	since    time.Time // when ph was entered
	upstream string
	// fenceNote says why the instance is fenced on request (phaseHeld) or
	// why a requested fence waits (a primary); "" when no fence is asked.
	fenceNote string

	// Owned by the loop goroutine.
	label      roles.Role
	labelKnown bool
	// standbysRecorded is the number of streaming standbys last written down
	// (recordStandbys), -1 before it was read; owned by the run goroutine.
	standbysRecorded int
	needReplRole     bool // the replication role is still to be ensured on this primary
	holdCancel       context.CancelFunc
	holdDone         chan struct{}
}

func newController(cfg controllerConfig) *controller {
	return &controller{
		controllerConfig: cfg,
		me:               cfg.o.PodName,
		// Outside PGDATA: pg_basebackup and pg_rewind copy PGDATA to others.
		passfile: filepath.Join(cfg.o.SocketDir, "pgwarden", "replication.pgpass"),
		wake:     make(chan struct{}, 1),

		standbysRecorded: -1,
		since:            time.Now(),
	}
}

func (c *controller) phase() phase {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ph
}

// setPhase moves to next unless the controller was fenced meanwhile (only
// the rejoin leaves phaseFenced, with leaveFenced).
func (c *controller) setPhase(next phase) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ph == phaseFenced {
		return false
	}
	c.moveLocked(next)
	return true
}

func (c *controller) leaveFenced(next phase) {
	c.mu.Lock()
	was := c.ph
	c.moveLocked(next)
	c.mu.Unlock()
	if lost := c.fenced.Swap(nil); was == phaseFenced && lost != nil && lost.Reason == roles.LostRenewDeadline {
		// The Lease's own Fenced Event was written while the API server was
		// unreachable and is most likely lost: record the fence now.
		c.event(corev1.EventTypeWarning, roles.ReasonFenced,
			"Was fenced while the API server was unreachable (%v); now %s", lost, next)
	}
}

func (c *controller) moveLocked(next phase) {
	if c.ph != next {
		c.log.Info("role controller phase", "from", c.ph.String(), "to", next.String())
		c.ph, c.since = next, time.Now()
	}
}

func (c *controller) setUpstream(addr string) {
	c.mu.Lock()
	c.upstream = addr
	c.mu.Unlock()
}

func (c *controller) desired() roles.Desired {
	d, _ := c.kube.watcher.Current()
	return d
}

// heldReason is why postgres is stopped on request, or "": it is the
// liveness exemption (the kubelet must not restart a fenced instance) and
// the readiness answer while fenced.
func (c *controller) heldReason() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ph != phaseHeld {
		return ""
	}
	return c.fenceNote
}

// stoppedReason is why postgres is stopped on purpose, or "": the liveness
// and startup exemption. Besides a fence on request, a primary fenced after
// losing its Lease and an instance rejoining the cluster (waiting for a
// primary, rewinding, cloning) keep postgres stopped until they can follow a
// primary; the kubelet restarting the container cannot help them, and killing
// a pg_rewind or a clone half-way ruins the data directory it was writing
// (found by the fault suite: a partitioned primary, healed, was killed by its
// liveness probe while rewinding and crash-looped). The caller checks that
// postgres is not running.
func (c *controller) stoppedReason() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch c.ph {
	case phaseHeld:
		return c.fenceNote
	case phaseFenced:
		return "fenced: the primary lease was lost; postgres stays stopped until the instance can rejoin"
	case phaseRejoining:
		return "rejoining: postgres stays stopped until there is a primary to follow (and the data are rewound or cloned)"
	}
	return ""
}

func (c *controller) setFenceNote(note string) {
	c.mu.Lock()
	c.fenceNote = note
	c.mu.Unlock()
}

// readiness is the prober's gate: a primary is ready only while it holds the
// Lease; a replica (or a replica being promoted) is ready when it answers
// queries (hot standby: consistent), streaming or not; nothing else is.
func (c *controller) readiness() error {
	switch ph := c.phase(); ph {
	case phasePrimary:
		if l := c.lease.Load(); l == nil || !l.IsHeld() {
			return errors.New("primary without the primary lease")
		}
		return nil
	case phaseReplica, phasePromoting:
		return nil
	case phaseHeld:
		return errors.New(c.heldReason())
	default:
		return fmt.Errorf("instance is %s", ph)
	}
}

func (c *controller) fillStatus(st *Status) {
	st.Mode = "kubernetes"
	c.mu.Lock()
	st.Phase, st.Upstream = c.ph.String(), c.upstream
	st.Fenced, st.FencedReason = c.ph == phaseHeld, c.fenceNote
	lostFence := c.ph == phaseFenced
	c.mu.Unlock()
	if lost := c.fenced.Load(); lostFence && lost != nil && st.FencedReason == "" {
		st.FencedReason = "primary lease lost: " + lost.Error()
	}
	if d, ok := c.kube.watcher.Current(); ok {
		st.DesiredRole = string(d.Role)
	}
	if l := c.lease.Load(); l != nil {
		if ls, ok := l.Cached(); ok {
			st.LeaseHolder = ls.Holder
		}
	}
}

func (c *controller) event(eventType, reason, format string, args ...any) {
	go c.kube.recorder.Eventf(context.Background(), eventType, reason, format, args...)
}

// run is the loop. It takes decisions until ctx ends (shutdown began); hold
// is the context of the Lease's renewals, which must outlive ctx.
func (c *controller) run(ctx, hold context.Context) {
	if err := postgres.WritePassfile(c.passfile, "", 0, postgres.ReplicationRole, c.kube.replPassword, c.user); err != nil {
		c.log.Error("cannot write the replication passfile; retrying", "error", err.Error())
	}
	if !c.awaitPod(ctx) {
		return
	}
	c.setPhase(phaseRejoining)
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			c.onShutdown()
			return
		case <-timer.C:
		case <-c.kube.watcher.Updates():
		case <-c.wake:
		}
		next := c.step(ctx, hold)
		c.syncLabel(ctx)
		timer.Stop()
		select { // drain: Reset needs a stopped, drained timer
		case <-timer.C:
		default:
		}
		timer.Reset(next)
	}
}

// awaitPod waits until the own Pod has been seen with an IP (or --pod-ip is
// given), then creates the Lease client with that IP.
func (c *controller) awaitPod(ctx context.Context) bool {
	for {
		d, seen := c.kube.watcher.Current()
		ip := d.PodIP
		if ip == "" {
			ip = c.o.PodIP
		}
		if seen && ip != "" {
			l, err := roles.NewPrimaryLease(roles.LeaseConfig{
				Client: c.kube.client, Namespace: c.o.Namespace, Cluster: c.o.Cluster, Identity: c.me, PodIP: ip,
				LeaseDuration: c.o.LeaseDuration, RenewDeadline: c.o.LeaseRenewDeadline, RetryPeriod: c.o.LeaseRetryPeriod,
				Recorder: c.kube.recorder, Logger: c.log,
			})
			if err != nil {
				c.log.Error("cannot set up the primary lease", "error", err.Error())
				return false
			}
			c.lease.Store(l)
			c.log.Info("own pod seen", "podIP", ip, "desiredRole", d.Role.String())
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-c.kube.watcher.Updates():
		}
	}
}

// step does what the current phase and the desired role call for, and says
// when to look again.
func (c *controller) step(ctx context.Context, hold context.Context) time.Duration {
	retry := c.o.LeaseRetryPeriod
	fast := func() time.Duration {
		c.mu.Lock()
		since := c.since
		c.mu.Unlock()
		if time.Since(since) < fastPollFor {
			return fastPoll
		}
		return retry
	}
	d := c.desired()
	want := d.Role
	if !d.Fenced {
		c.setFenceNote("")
	}
	switch c.phase() {
	case phaseRejoining, phaseFenced:
		// A fence asked of the desired primary (it waits for a switchover) does not keep
		// it from starting as the primary again after a restart: it rejoins normally, and
		// stops only as a replica.
		if d.Fenced && want != roles.RolePrimary {
			if c.sup.PID() != 0 {
				return fast() // a fence after losing the Lease is still stopping postgres
			}
			c.holdEnded()
			c.enterHeld(ctx, "")
			return retry
		}
		done, err := c.rejoin(ctx, hold)
		if err != nil {
			if ctx.Err() == nil {
				c.log.Warn("cannot start as a replica yet; retrying", "error", err.Error(), "retryIn", retry.String())
			}
			return retry
		}
		if !done {
			return fast()
		}
		return 0 // look again at once: perhaps promote
	case phaseHeld:
		if d.Fenced {
			return retry
		}
		c.log.Info("fence lifted: starting postgres again as a replica", "annotation", roles.FencedAnnotation)
		c.event(corev1.EventTypeNormal, roles.ReasonUnfenced, "Fence lifted (%s): starting postgres again as a replica", roles.FencedAnnotation)
		c.setPhase(phaseRejoining)
		return 0
	case phaseReplica:
		if d.Fenced {
			// A fence wins over a promotion: the operator never promotes a
			// fenced instance, and a user who asks both gets the fence.
			if err := c.fenceReplica(ctx); err != nil && ctx.Err() == nil {
				c.log.Error("cannot fence: stopping postgres failed; retrying", "error", err.Error())
			}
			return 0
		}
		if want == roles.RolePrimary {
			if err := c.promote(ctx, hold); err != nil && ctx.Err() == nil {
				c.log.Error("promotion failed; retrying", "error", err.Error())
				c.setPhase(phaseReplica)
			}
			return 0
		}
		if l := c.lease.Load(); l.IsHeld() {
			// Holding the Lease as a replica (a promotion that failed, then the
			// desired role changed): hand it on, with the final LSN it came with.
			c.stopHold()
			rctx, cancel := context.WithTimeout(ctx, releaseTimeout)
			err := l.Release(rctx, l.Handoff())
			cancel()
			if err != nil && ctx.Err() == nil {
				c.log.Warn("cannot release the primary lease held as a replica", "error", err.Error())
			}
		}
		if err := c.follow(ctx); err != nil && ctx.Err() == nil {
			c.log.Warn("cannot follow the primary", "error", err.Error())
		}
		return retry
	case phasePrimary:
		c.ensureReplRole(ctx)
		c.recordStandbys()
		if want == roles.RoleReplica {
			if err := c.demote(ctx); err != nil && ctx.Err() == nil {
				c.log.Error("demotion went wrong", "error", err.Error())
			}
			return 0
		}
		if d.Fenced {
			c.primaryFenceWaits()
		}
		return retry
	}
	return retry
}

// primaryFenceWaits records, once per request, that a primary asked to
// fence keeps running until it is no longer the primary: stopping it would
// take the cluster's only writer down. The operator switches over first
// (or refuses, when no replica can take over).
func (c *controller) primaryFenceWaits() {
	const note = "fence requested (pgwarden.io/fenced=true) while primary: postgres keeps running until a switchover makes this instance a replica"
	c.mu.Lock()
	first := c.fenceNote != note
	c.fenceNote = note
	c.mu.Unlock()
	if first {
		c.log.Warn("fence requested while primary: waiting to be switched over before stopping", "annotation", roles.FencedAnnotation)
		c.event(corev1.EventTypeWarning, roles.ReasonFenceWaiting, "Fence requested while primary: postgres keeps running until the operator switches over to a replica")
	}
}

// fenceReplica stops a running replica on request: unlabel (Services stop
// sending it clients), fast shutdown within --stop-delay, hand on the Lease
// if it holds it, then phaseHeld.
func (c *controller) fenceReplica(ctx context.Context) error {
	began := time.Now()
	c.setLabel(ctx, roles.RoleNone)
	step, err := c.sup.Stop(ctx, lifecycle.StepFast, c.o.StopDelay)
	if err != nil {
		return err
	}
	if l := c.lease.Load(); l != nil && l.IsHeld() {
		c.stopHold()
		rctx, cancel := context.WithTimeout(ctx, releaseTimeout)
		if err := l.Release(rctx, l.Handoff()); err != nil && ctx.Err() == nil {
			c.log.Warn("cannot release the primary lease held by a fenced replica", "error", err.Error())
		}
		cancel()
	}
	c.setUpstream("")
	c.enterHeld(ctx, fmt.Sprintf("%s shutdown in %s", step, time.Since(began).Round(time.Millisecond)))
	return nil
}

// enterHeld moves to phaseHeld with postgres stopped; how says how it was
// stopped ("" when it was not running).
func (c *controller) enterHeld(ctx context.Context, how string) {
	note := "fenced on request (pod annotation pgwarden.io/fenced=true): postgres is stopped and stays stopped until the annotation is removed or set to false"
	c.setFenceNote(note)
	c.leaveFenced(phaseHeld)
	c.syncLabel(ctx)
	go c.prober.CheckNow(context.WithoutCancel(ctx))
	if how == "" {
		how = "it was not running"
	}
	c.log.Warn("fenced on request: postgres stopped", "annotation", roles.FencedAnnotation, "how", how)
	c.event(corev1.EventTypeWarning, roles.ReasonFencedStopped, "Fenced on request (%s=true): postgres stopped (%s) and stays stopped", roles.FencedAnnotation, how)
}

// syncLabel makes the observed-role label match the phase: primary,
// replica, or none while in between.
func (c *controller) syncLabel(ctx context.Context) {
	var want roles.Role
	switch c.phase() {
	case phasePrimary:
		want = roles.RolePrimary
	case phaseReplica, phasePromoting:
		if c.sup.PID() != 0 {
			want = roles.RoleReplica
		}
	}
	if c.labelKnown && want == c.label {
		return
	}
	c.setLabel(ctx, want)
}

func (c *controller) setLabel(ctx context.Context, r roles.Role) {
	lctx, cancel := context.WithTimeout(ctx, apiTimeout)
	defer cancel()
	if err := c.kube.watcher.SetObservedRole(lctx, r); err != nil {
		c.labelKnown = false
		c.log.Warn("cannot set the observed role label; retrying", "error", err.Error())
		return
	}
	c.label, c.labelKnown = r, true
}

// onShutdown: the pod is shutting down. A primary unlabels itself first so
// Services stop sending it clients; the Lease is released after postgres
// stopped (afterStop).
func (c *controller) onShutdown() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c.setLabel(ctx, roles.RoleNone)
}

// afterStop runs once the supervisor returned (postgres is gone): a holder
// releases the Lease, with its final LSN when it shut down cleanly, so a
// successor need not wait for the Lease to expire.
// hurryWhenReplaced ends the smart phase of a primary's shutdown early once
// the operator has chosen another primary (this Pod's desired role is no
// longer primary: a deleted primary pod is failed over at once). Smart
// shutdown refuses new connections, so waiting for the old sessions to end by
// themselves only prolongs the write outage; fast shutdown still hands every
// committed transaction to the replicas and the final LSN to the successor.
// It waits for ctx (the shutdown request) and returns when done closes.
func (c *controller) hurryWhenReplaced(ctx context.Context, sup *lifecycle.Supervisor, done <-chan struct{}) {
	select {
	case <-ctx.Done():
	case <-done:
		return
	}
	// Demoting too: the operator's annotation can land a moment before the
	// SIGTERM of the pod's deletion (the soak saw it: the demotion was cut
	// short by the shutdown, and the smart phase ran its full 15 s).
	if ph := c.phase(); ph != phasePrimary && ph != phaseDemoting {
		return
	}
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		if d := c.desired(); d.Role != roles.RolePrimary {
			c.log.Info("another instance was chosen as primary: ending the smart shutdown early",
				"desiredRole", string(d.Role))
			sup.Hurry()
			return
		}
		select {
		case <-done:
			return
		case <-t.C:
		}
	}
}

func (c *controller) afterStop() {
	l := c.lease.Load()
	if l == nil || !l.IsHeld() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), releaseTimeout)
	defer cancel()
	final := c.finalLSN(ctx)
	if err := l.Release(ctx, final); err != nil {
		c.log.Warn("cannot release the primary lease at exit; it expires by itself", "error", err.Error())
	}
}

// finalLSN reads where a cleanly stopped primary's WAL ends; nil if it did
// not stop cleanly as a primary.
func (c *controller) finalLSN(ctx context.Context) *roles.FinalLSN {
	cd, err := postgres.ReadControlData(ctx, c.bin, c.o.DataDir, c.user)
	if err != nil {
		c.log.Warn("cannot read the control data for the final LSN", "error", err.Error())
		return nil
	}
	if cd.State != postgres.StateShutDown {
		c.log.Warn("postgres did not shut down cleanly: no final LSN for the successor", "state", string(cd.State))
		return nil
	}
	return &roles.FinalLSN{Pod: c.me, LSN: cd.FinalLSN.String(), Timeline: cd.TimeLineID}
}

// --- the Lease ---

// startHold renews the Lease in the background; losing it fences postgres.
func (c *controller) startHold(hold context.Context) {
	if c.holdCancel != nil {
		return
	}
	l := c.lease.Load()
	ctx, cancel := context.WithCancel(hold)
	done := make(chan struct{})
	c.holdCancel, c.holdDone = cancel, done
	go func() {
		defer close(done)
		err := l.Hold(ctx, c.onLost)
		if err != nil && !errors.Is(err, roles.ErrReleased) {
			c.log.Info("stopped holding the primary lease", "reason", err.Error())
		}
	}()
}

// stopHold stops renewing (without fencing) and waits until Hold returned.
func (c *controller) stopHold() {
	if c.holdCancel == nil {
		return
	}
	c.holdCancel()
	<-c.holdDone
	c.holdCancel, c.holdDone = nil, nil
}

// holdEnded cleans up after a Hold that returned by itself (lost, released).
func (c *controller) holdEnded() {
	if c.holdDone == nil {
		return
	}
	select {
	case <-c.holdDone:
		c.holdCancel()
		c.holdCancel, c.holdDone = nil, nil
	default:
	}
}

// onLost is the fencing callback, called from Hold's goroutine the moment
// the Lease is lost: the phase is marked first, then postgres gets SIGQUIT,
// so a start that the loop makes concurrently is fenced too (see
// startPrimary).
func (c *controller) onLost(lost *roles.LostError) {
	c.mu.Lock()
	c.moveLocked(phaseFenced)
	c.mu.Unlock()
	c.sup.Fence()
	c.fenced.Store(lost)
	c.log.Error("fenced: primary lease lost, postgres stopped with an immediate shutdown",
		"reason", string(lost.Reason), "holder", lost.Holder,
		"sinceLastRenewMs", lost.FencedAt.Sub(lost.LastRenew).Milliseconds(),
		"fenceMarginMs", time.Until(lost.ExpiresForOthers).Milliseconds())
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// holderAddr returns the address to stream from: the holder's IP from the
// Lease, else its Pod's status.podIP.
func (c *controller) holderAddr(ctx context.Context, st roles.LeaseState) (string, error) {
	if st.HolderIP != "" {
		return st.HolderIP, nil
	}
	ctx, cancel := context.WithTimeout(ctx, apiTimeout)
	defer cancel()
	list, err := c.kube.client.ListPods(ctx, c.o.Namespace, metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("metadata.name", st.Holder).String(),
	})
	if err != nil {
		return "", fmt.Errorf("cannot read the address of primary %s: %w", st.Holder, err)
	}
	if len(list.Items) == 0 || list.Items[0].Status.PodIP == "" {
		return "", fmt.Errorf("primary %s has no pod IP yet", st.Holder)
	}
	return list.Items[0].Status.PodIP, nil
}

func (c *controller) readLease(ctx context.Context) (roles.LeaseState, error) {
	ctx, cancel := context.WithTimeout(ctx, apiTimeout)
	defer cancel()
	return c.lease.Load().Holder(ctx)
}

// otherHolder: someone else holds the Lease and has not let it expire.
func (c *controller) otherHolder(st roles.LeaseState) bool {
	return st.Holder != "" && st.Holder != c.me && !st.Expired
}

// --- postgres ---

func (c *controller) connect(ctx context.Context) (*pgx.Conn, error) {
	cc, err := c.connConfig(ctx)
	if err != nil {
		return nil, err
	}
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		return nil, fmt.Errorf("cannot connect to postgres: %w", err)
	}
	return conn, nil
}

// prepareStandby writes the configuration of a standby streaming from host
// (none when host is "") and standby.signal.
func (c *controller) prepareStandby(host string) error {
	managed := map[string]string{"recovery_target_timeline": "latest"}
	if host != "" {
		s, err := postgres.StandbyConfig{
			PrimaryHost: host, PrimaryPort: c.o.Port, User: postgres.ReplicationRole,
			Passfile: c.passfile, ApplicationName: c.me,
		}.Settings()
		if err != nil {
			return err
		}
		managed = s
	}
	maps.Copy(managed, roleSettings)
	if _, err := c.store.setManaged(managed); err != nil {
		return err
	}
	return postgres.WriteStandbySignal(c.o.DataDir, c.user)
}

// preparePrimary writes the configuration of a primary.
func (c *controller) preparePrimary() error {
	if _, err := c.store.setManaged(roleSettings); err != nil {
		return err
	}
	return postgres.RemoveStandbySignal(c.o.DataDir)
}

// startPrimary starts postgres as the primary; the Lease must be held (and
// Hold running). A fence that raced with the start stops it again.
func (c *controller) startPrimary(ctx context.Context) error {
	if err := c.preparePrimary(); err != nil {
		return err
	}
	if c.phase() == phaseFenced {
		return errors.New("fenced before postgres could start as primary")
	}
	err := c.sup.Start(ctx)
	if c.phase() == phaseFenced {
		c.sup.Fence()
		return errors.New("fenced while postgres started as primary")
	}
	if err != nil {
		c.holdStopped(ctx)
		return err
	}
	// Replicas need the role to clone and stream; a failure here is retried
	// by the primary's steps, not a reason to stop a primary.
	c.needReplRole = true
	c.ensureReplRole(ctx)
	return nil
}

// ensureReplRole creates or updates the replication role once the primary
// accepts connections (it may still be in crash recovery when it answers).
func (c *controller) ensureReplRole(ctx context.Context) {
	if !c.needReplRole {
		return
	}
	conn, err := c.connectWhenAccepting(ctx, c.o.StartDelay)
	if err == nil {
		err = postgres.EnsureReplicationRole(ctx, conn, postgres.ReplicationRole, c.kube.replPassword)
		conn.Close(context.Background())
	}
	if err != nil {
		c.log.Error("cannot create or update the replication role; retrying", "error", err.Error())
		return
	}
	c.needReplRole = false
}

// connectWhenAccepting connects, retrying while postgres is still starting
// up, within limit.
func (c *controller) connectWhenAccepting(ctx context.Context, limit time.Duration) (*pgx.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	t := time.NewTicker(fastPoll)
	defer t.Stop()
	for {
		conn, err := c.connect(ctx)
		if err == nil {
			return conn, nil
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-t.C:
		}
	}
}

// holdStopped makes sure a postmaster whose start failed stays stopped (the
// supervisor would retry it with backoff) so the next attempt begins afresh.
func (c *controller) holdStopped(ctx context.Context) {
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := c.sup.Stop(sctx, lifecycle.StepFast, 10*time.Second); err != nil {
		c.log.Warn("cannot stop postgres after a failed start", "error", err.Error())
	}
}

// roleSettings are set on every instance in Kubernetes mode, primary or
// replica. wal_keep_size keeps enough past WAL in pg_wal that a former
// primary can be rewound after a fence (pg_rewind reads its WAL back to the
// last common checkpoint, which crash recovery's own checkpoint would
// otherwise recycle) and that a rewound or lagging replica finds the WAL it
// needs on the new primary without a replication slot.
//
// wal_retrieve_retry_interval 1s: a replica whose primary restarted (or was
// replaced) reconnects within a second instead of five.
var roleSettings = map[string]string{"wal_keep_size": "256MB", "wal_retrieve_retry_interval": "1s"}

// --- rejoin: the one way postgres starts in Kubernetes mode ---

// rejoin starts postgres, which is stopped, in the role the data directory,
// the Lease and the desired role allow (see the package documentation,
// "Starting"). done is false when it must wait (for a Lease holder).
func (c *controller) rejoin(ctx, hold context.Context) (done bool, err error) {
	c.holdEnded()
	if c.sup.PID() != 0 {
		// Only after a fence that is not finished yet.
		return false, nil
	}
	st, err := c.readLease(ctx)
	if err != nil {
		return false, err
	}
	if what, err := c.interruptedRebuild(); err != nil {
		return false, err
	} else if what != "" {
		// Half rewound or half cloned: never run it, least of all as a primary. Clone afresh
		// from the Lease holder as soon as there is one.
		if !c.otherHolder(st) {
			return false, c.waiting("a data directory whose "+what+" was interrupted waits for a primary to clone from", st)
		}
		c.log.Warn("an earlier rebuild of the data directory was interrupted: re-cloning", "interrupted", what)
		if err := c.markRebuild("clone"); err != nil {
			return false, err
		}
		if err := emptyDir(c.o.DataDir); err != nil {
			return false, fmt.Errorf("cannot empty the data directory to re-clone: %w", err)
		}
		c.event(corev1.EventTypeWarning, roles.ReasonRecloned,
			"The %s before this start was interrupted: replacing the data directory with a fresh clone of the primary", what)
		// Empty now: joinAsReplica below clones it.
	}
	state, err := postgres.InspectDataDir(c.o.DataDir, c.bin.Major)
	if err != nil {
		return false, err
	}
	want := c.desired().Role
	l := c.lease.Load()

	if c.otherHolder(st) {
		addr, err := c.holderAddr(ctx, st)
		if err != nil {
			return false, err
		}
		if err := c.joinAsReplica(ctx, state, addr); errors.Is(err, errAwaitPromotion) {
			return false, nil
		} else if err != nil {
			return false, err
		}
		return true, nil
	}

	// Nobody else holds the Lease.
	hasSignal := false
	if state == postgres.Existing {
		if hasSignal, err = postgres.HasStandbySignal(c.o.DataDir); err != nil {
			return false, err
		}
	}
	switch {
	case state == postgres.Empty:
		// Only a new cluster is initialised: no Lease yet, or one that names
		// this instance (it crashed during its own bootstrap).
		if want != roles.RolePrimary || st.Exists && st.Holder != c.me {
			return false, c.waiting("an empty data directory waits for a primary to clone from", st)
		}
		return c.initPrimary(ctx, hold)
	case hasSignal:
		// A standby's data: safe to run without upstream; promotion, if
		// wanted, takes the Lease first.
		if err := c.prepareStandby(""); err != nil {
			return false, err
		}
		if err := c.sup.Start(ctx); err != nil {
			c.holdStopped(ctx)
			return false, err
		}
		c.setUpstream("")
		c.leaveFenced(phaseReplica)
		c.log.Info("running as a replica without upstream: nobody holds the primary lease")
		return true, nil
	default:
		// A former primary's data. It may run as primary again only under a
		// claim that no one else held since it wrote that data: the Lease
		// still names it (a restart, or a fence while the API server was
		// away), or it was the last to release the Lease cleanly.
		mine := st.Holder == c.me || st.Holder == "" && st.FinalLSN != nil && st.FinalLSN.Pod == c.me
		if !mine || want != roles.RolePrimary && !(st.Holder == c.me) {
			return false, c.waiting("a former primary waits for a new primary to follow", st)
		}
		ok, err := l.TryAcquire(ctx)
		if err != nil || !ok {
			return false, err
		}
		c.leaveFenced(phaseRejoining)
		c.startHold(hold)
		if err := c.startPrimary(ctx); err != nil {
			return false, err
		}
		if !c.setPhase(phasePrimary) {
			return false, errors.New("fenced")
		}
		c.log.Info("running as the primary again on its own data", "leaseHolderWas", st.Holder)
		return true, nil
	}
}

// waiting logs, once per phase entry, why the controller waits.
func (c *controller) waiting(why string, st roles.LeaseState) error {
	c.log.Debug(why, "leaseHolder", st.Holder, "leaseExpired", st.Expired)
	return nil
}

// initPrimary bootstraps a new cluster: take the Lease, initdb, start.
func (c *controller) initPrimary(ctx, hold context.Context) (bool, error) {
	l := c.lease.Load()
	ok, err := l.TryAcquire(ctx)
	if err != nil || !ok {
		return false, err
	}
	c.leaveFenced(phaseRejoining)
	c.startHold(hold)
	began := time.Now()
	c.log.Info("initialising an empty data directory with initdb as the first primary", "pgdata", c.o.DataDir)
	if err := postgres.InitDB(ctx, c.bin, postgres.InitOptions{DataDir: c.o.DataDir, PasswordFile: c.o.PasswordFile, Superuser: superuser, RunAs: c.user}); err != nil {
		return false, err
	}
	if err := c.startPrimary(ctx); err != nil {
		return false, err
	}
	if !c.setPhase(phasePrimary) {
		return false, errors.New("fenced")
	}
	c.log.Info("initialised and running as the first primary", "took", time.Since(began).Round(time.Millisecond).String())
	c.event(corev1.EventTypeNormal, roles.ReasonInitialized, "Initialised a new cluster (initdb) and started as its primary")
	return true, nil
}

// joinAsReplica makes the stopped data directory a standby of addr — clone
// an empty one; follow as it is, rewind, or re-clone a former primary's —
// and starts it.
func (c *controller) joinAsReplica(ctx context.Context, state postgres.State, addr string) error {
	if state == postgres.Empty {
		if err := c.clone(ctx, addr); err != nil {
			return err
		}
		c.event(corev1.EventTypeNormal, roles.ReasonCloned, "Cloned the data directory from the primary at %s", addr)
	} else {
		hasSignal, err := postgres.HasStandbySignal(c.o.DataDir)
		if err != nil {
			return err
		}
		if !hasSignal {
			if err := c.catchUpFormerPrimary(ctx, addr); err != nil {
				return err
			}
		}
	}
	if err := c.prepareStandby(addr); err != nil {
		return err
	}
	if err := c.sup.Start(ctx); err != nil {
		c.holdStopped(ctx)
		return err
	}
	c.setUpstream(addr)
	c.leaveFenced(phaseReplica)
	c.log.Info("running as a replica", "upstream", addr)
	c.event(corev1.EventTypeNormal, roles.ReasonFollowing, "Streaming from the primary at %s", addr)
	return nil
}

// catchUpFormerPrimary decides whether a former primary's data can follow
// addr as it is (a clean switchover: NeedsRewind false), must be rewound, or
// must be replaced by a fresh clone (rewind failed, other system).
func (c *controller) catchUpFormerPrimary(ctx context.Context, addr string) error {
	cd, err := postgres.ReadControlData(ctx, c.bin, c.o.DataDir, c.user)
	if err != nil {
		return err
	}
	src, err := postgres.IdentifySource(ctx, addr, c.o.Port, postgres.ReplicationRole, c.passfile)
	if err != nil {
		return err
	}
	// pg_rewind needs a source that left recovery, on a later timeline than
	// ours: a Lease holder that has not promoted yet is waited for.
	promoted := src.TimeLineID > cd.TimeLineID
	need := true
	if cd.State == postgres.StateShutDown {
		need, err = postgres.NeedsRewind(cd, src)
		var mismatch *postgres.SystemMismatchError
		if errors.As(err, &mismatch) {
			c.log.Warn("the data directory belongs to another database system: re-cloning", "error", err.Error())
			return c.reclone(ctx, addr, err)
		}
		if err != nil {
			return err
		}
		c.log.Info("former primary checked against the new one", "needsRewind", need,
			"finalLSN", cd.FinalLSN.String(), "timeline", cd.TimeLineID, "sourceTimeline", src.TimeLineID, "sourceFlush", src.FlushLSN.String())
	}
	if !need {
		return nil
	}
	if !promoted {
		return errAwaitPromotion
	}
	if cd.State != postgres.StateShutDown {
		c.log.Info("former primary did not shut down cleanly: rewinding", "state", string(cd.State))
	}
	began := time.Now()
	if err := c.markRebuild("pg_rewind"); err != nil {
		return err
	}
	err = postgres.Rewind(ctx, c.bin, postgres.RewindOptions{
		DataDir: c.o.DataDir, SourceHost: addr, SourcePort: c.o.Port,
		User: postgres.ReplicationRole, Passfile: c.passfile, RunAs: c.user,
	})
	if err != nil {
		if ctx.Err() != nil {
			return err // the marker stays: the next start re-clones
		}
		c.log.Error("pg_rewind failed: re-cloning", "error", err.Error())
		c.event(corev1.EventTypeWarning, roles.ReasonRewindFailed, "pg_rewind from %s failed; re-cloning: %v", addr, err)
		return c.reclone(ctx, addr, err)
	}
	if err := c.unmarkRebuild(); err != nil {
		return err
	}
	if err := c.checkRewound(ctx, addr); err != nil {
		return err
	}
	c.log.Info("rewound the former primary", "source", addr, "took", time.Since(began).Round(time.Millisecond).String())
	c.event(corev1.EventTypeNormal, roles.ReasonRewound, "Rewound the former primary (pg_rewind) to follow %s", addr)
	return nil
}

// checkRewound makes sure pg_rewind really rewound. It reads the source's
// timeline from the source's control file, which a just-promoted primary
// updates only at its first checkpoint on the new timeline; before that,
// pg_rewind finds "the same timeline", changes nothing but finishing crash
// recovery, and succeeds. Started as a standby, such a data directory could
// never follow the new timeline (its WAL goes past the fork point). A real
// rewind leaves the control file in archive recovery; a no-op leaves it shut
// down, and then the timeline history decides: still diverged means wait for
// the new primary's checkpoint and rewind again.
func (c *controller) checkRewound(ctx context.Context, addr string) error {
	cd, err := postgres.ReadControlData(ctx, c.bin, c.o.DataDir, c.user)
	if err != nil {
		return err
	}
	if cd.State != postgres.StateShutDown {
		return nil
	}
	src, err := postgres.IdentifySource(ctx, addr, c.o.Port, postgres.ReplicationRole, c.passfile)
	if err != nil {
		return err
	}
	still, err := postgres.NeedsRewind(cd, src)
	if err != nil {
		return err
	}
	if still {
		c.log.Info("pg_rewind changed nothing: the new primary has not checkpointed on its new timeline yet; rewinding again shortly",
			"finalLSN", cd.FinalLSN.String(), "timeline", cd.TimeLineID, "sourceTimeline", src.TimeLineID)
		return errAwaitPromotion
	}
	return nil
}

// errAwaitPromotion: the former primary must be rewound, and the new Lease
// holder has not promoted yet (or not checkpointed on its new timeline).
var errAwaitPromotion = errors.New("waiting for the new primary to promote before rewinding")

// reclone empties the data directory and clones it from addr.
func (c *controller) reclone(ctx context.Context, addr string, why error) error {
	if err := c.markRebuild("clone"); err != nil {
		return err
	}
	if err := emptyDir(c.o.DataDir); err != nil {
		return fmt.Errorf("cannot empty the data directory to re-clone: %w", err)
	}
	if err := c.clone(ctx, addr); err != nil {
		return err
	}
	c.event(corev1.EventTypeWarning, roles.ReasonRecloned, "Replaced the data directory with a fresh clone of %s (%v)", addr, why)
	return nil
}

func (c *controller) clone(ctx context.Context, addr string) error {
	began := time.Now()
	c.log.Info("cloning the data directory", "source", addr)
	if err := c.markRebuild("clone"); err != nil {
		return err
	}
	err := postgres.Clone(ctx, c.bin, postgres.CloneOptions{
		DataDir: c.o.DataDir, Host: addr, Port: c.o.Port, User: postgres.ReplicationRole,
		Passfile: c.passfile, RunAs: c.user, ApplicationName: c.me,
	})
	// A clone that returned, failed or not, has cleaned up after itself: only a
	// process killed during it leaves the marker.
	if uerr := c.unmarkRebuild(); err == nil {
		err = uerr
	}
	if err != nil {
		return err
	}
	c.log.Info("cloned the data directory", "source", addr, "took", time.Since(began).Round(time.Millisecond).String())
	return nil
}

// A pg_rewind or a clone killed half-way (the container killed, the node
// lost) leaves a data directory that must never run. rebuildFile, beside
// PGDATA on the same volume, names the rebuild while one runs; a start that
// finds it re-clones (rejoin).
func (c *controller) rebuildFile() string { return rebuildMarker(c.o.DataDir) }

func rebuildMarker(dataDir string) string {
	return filepath.Join(filepath.Dir(filepath.Clean(dataDir)), "pgwarden-rebuilding")
}

func (c *controller) markRebuild(what string) error {
	// A first clone may find no parent yet; it is made as the clone makes missing parents.
	if err := os.MkdirAll(filepath.Dir(c.rebuildFile()), 0o755); err != nil {
		return fmt.Errorf("cannot record the start of a %s: %w", what, err)
	}
	if err := writeFileSync(c.rebuildFile(), []byte(what+"\n")); err != nil {
		return fmt.Errorf("cannot record the start of a %s: %w", what, err)
	}
	return nil
}

func (c *controller) unmarkRebuild() error {
	if err := os.Remove(c.rebuildFile()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("cannot record the end of a rebuild: %w", err)
	}
	return nil
}

// interruptedRebuild names the rebuild an earlier process left unfinished, or "".
func (c *controller) interruptedRebuild() (string, error) { return interruptedRebuild(c.o.DataDir) }

func interruptedRebuild(dataDir string) (string, error) {
	b, err := os.ReadFile(rebuildMarker(dataDir))
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("cannot read %s: %w", rebuildMarker(dataDir), err)
	}
	what := strings.TrimSpace(string(b))
	if what == "" {
		what = "rebuild"
	}
	return what, nil
}

// writeFileSync writes a small file durably: the data, then the directory entry.
func writeFileSync(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// emptyDir removes everything inside dir, keeping dir (often a mount point);
// a dir that does not exist is empty.
func emptyDir(dir string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// --- replica ---

// follow points a running replica at the current Lease holder when it
// changed: primary_conninfo and a reload, no restart.
func (c *controller) follow(ctx context.Context) error {
	st, err := c.readLease(ctx)
	if err != nil {
		return err
	}
	if !c.otherHolder(st) {
		return nil
	}
	addr, err := c.holderAddr(ctx, st)
	if err != nil {
		return err
	}
	c.mu.Lock()
	same := c.upstream == addr
	c.mu.Unlock()
	if same {
		return nil
	}
	if err := c.prepareStandby(addr); err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, apiTimeout)
	defer cancel()
	if err := c.sup.Reload(rctx); err != nil {
		return err
	}
	c.setUpstream(addr)
	c.log.Info("following a new primary", "upstream", addr, "holder", st.Holder)
	c.event(corev1.EventTypeNormal, roles.ReasonFollowing, "Streaming from the new primary %s at %s", st.Holder, addr)
	return nil
}

// --- promote ---

// promote turns the running replica into the primary: the Lease first (it
// waits while another live holder has it), then the old primary's final
// LSN, replay, pg_promote, a checkpoint, the label.
func (c *controller) promote(ctx, hold context.Context) error {
	if !c.setPhase(phasePromoting) {
		return nil
	}
	l := c.lease.Load()
	began := time.Now()
	for {
		ok, err := l.TryAcquire(ctx)
		if ok {
			break
		}
		if err != nil && ctx.Err() == nil {
			c.log.Warn("cannot acquire the primary lease yet", "error", err.Error())
		}
		if c.desired().Role != roles.RolePrimary {
			c.setPhase(phaseReplica)
			return nil
		}
		wait := c.o.LeaseRetryPeriod
		if time.Since(began) < fastPollFor {
			wait = fastPoll
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
	c.startHold(hold)
	acquired := time.Now()
	handoff := l.Handoff()
	conn, err := c.connect(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	if handoff != nil && handoff.Pod != c.me {
		if err := c.awaitFinalLSN(ctx, conn, handoff); err != nil {
			return err
		}
	}
	if err := postgres.WaitReplayCaughtUp(ctx, conn); err != nil {
		return err
	}
	if c.phase() != phasePromoting {
		return errors.New("fenced before promotion")
	}
	if err := postgres.Promote(ctx, conn, promoteWait); err != nil {
		return err
	}
	if !c.setPhase(phasePrimary) {
		return errors.New("fenced during promotion")
	}
	c.setUpstream("")
	promoted := time.Now()
	go c.prober.CheckNow(context.WithoutCancel(ctx))
	c.log.Info("promoted", "leaseWaitMs", acquired.Sub(began).Milliseconds(),
		"promoteMs", promoted.Sub(acquired).Milliseconds(), "handoff", handoff)
	if err := postgres.Checkpoint(ctx, conn); err != nil {
		c.log.Warn("checkpoint after promotion failed", "error", err.Error())
	}
	if err := postgres.EnsureReplicationRole(ctx, conn, postgres.ReplicationRole, c.kube.replPassword); err != nil {
		c.log.Warn("cannot update the replication role", "error", err.Error())
	}
	if _, err := c.store.setManaged(roleSettings); err != nil {
		c.log.Warn("cannot rewrite the configuration of a primary", "error", err.Error())
	} else if err := postgres.Reload(ctx, conn); err != nil {
		c.log.Warn("cannot reload after promotion", "error", err.Error())
	}
	c.setLabel(ctx, roles.RolePrimary)
	c.event(corev1.EventTypeNormal, roles.ReasonPromoted, "Promoted to primary (lease wait %s, promotion %s)",
		acquired.Sub(began).Round(time.Millisecond), promoted.Sub(acquired).Round(time.Millisecond))
	return nil
}

// awaitFinalLSN waits until this standby has received the old primary's
// last WAL: never promote before, or acknowledged writes are lost. If the
// desired role changes meanwhile, the Lease is handed on with the same final
// LSN for the next candidate.
func (c *controller) awaitFinalLSN(ctx context.Context, conn *pgx.Conn, f *roles.FinalLSN) error {
	want, err := postgres.ParseLSN(f.LSN)
	if err != nil {
		return err
	}
	t := time.NewTicker(catchUpPoll)
	defer t.Stop()
	logged := false
	for {
		st, err := postgres.ReplicationStatus(ctx, conn)
		if err != nil {
			return err
		}
		// The timeline a standby reports lags once its walreceiver is gone
		// (it falls back to the last restartpoint's): one at or before the
		// old primary's is taken as that history; a later one means this
		// standby followed some other primary, and its LSNs say nothing.
		have := max(st.ReceiveLSN, st.ReplayLSN)
		if have >= want && st.TimeLineID <= f.Timeline {
			c.log.Info("received the old primary's final LSN", "finalLSN", f.LSN, "timeline", f.Timeline, "received", have.String())
			return nil
		}
		if !logged {
			c.log.Info("waiting for the old primary's final LSN before promoting", "finalLSN", f.LSN, "received", have.String())
			logged = true
		}
		if c.desired().Role != roles.RolePrimary || c.phase() != phasePromoting {
			c.stopHold()
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
			defer cancel()
			if err := c.lease.Load().Release(rctx, f); err != nil {
				c.log.Warn("cannot hand the primary lease on", "error", err.Error())
			}
			return errors.New("no longer desired primary before the old primary's final LSN arrived")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// --- demote ---

// demote turns the primary into a replica in place: unlabel, checkpoint,
// fast shutdown within --switchover-delay, release the Lease with the final
// LSN; rejoin follows (phaseRejoining).
// standbyWait bounds how long a demoting primary waits for the standbys it
// had to stream from it again.
const standbyWait = 10 * time.Second

// standbysFile (beside PGDATA, on the same volume) remembers how many standbys
// streamed from this primary, across restarts of the container.
func (c *controller) standbysFile() string {
	return filepath.Join(filepath.Dir(filepath.Clean(c.o.DataDir)), "pgwarden-standbys")
}

// recordStandbys writes down, while primary, how many standbys stream from it
// (from the prober's last check), when that number changed; a smaller number
// only once it has been primary for standbyWait.
func (c *controller) recordStandbys() {
	if c.standbysRecorded < 0 { // not read yet since this manager started
		c.standbysRecorded = c.readStandbys()
	}
	s := c.prober.Snapshot()
	if s.InRecovery || s.MeasuredAt.IsZero() || s.Stale || s.StreamingStandbys == c.standbysRecorded {
		return
	}
	n := s.StreamingStandbys
	c.mu.Lock()
	since := c.since
	c.mu.Unlock()
	if n < c.standbysRecorded && time.Since(since) < standbyWait {
		return // a primary that just started: its standbys are still reconnecting
	}
	if err := os.WriteFile(c.standbysFile(), []byte(strconv.Itoa(n)+"\n"), 0o600); err != nil {
		c.log.Warn("cannot record the number of streaming standbys", "error", err.Error())
		return
	}
	c.standbysRecorded = n
}

// readStandbys reads the recorded number of standbys, 0 if none.
func (c *controller) readStandbys() int {
	b, err := os.ReadFile(c.standbysFile())
	if err != nil {
		return 0
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || n < 0 {
		return 0
	}
	return n
}

// awaitStandbys holds a demotion, at most standbyWait, until as many standbys
// stream from this primary as did before (recordStandbys). A fast shutdown
// sends all WAL to the standbys connected at that moment, and the successor
// promotes only once it has the final LSN handed over on the Lease: when a
// primary's container restarted and the failover decided meanwhile demotes it
// at once, its replicas are still reconnecting, and the successor would wait
// forever for WAL that only this stopped server has. A planned switchover
// does not wait: its standbys are streaming.
func (c *controller) awaitStandbys(ctx context.Context, conn *pgx.Conn) {
	want := c.standbysRecorded
	if want < 0 {
		want = c.readStandbys()
	}
	if want <= 0 {
		return
	}
	deadline := time.Now().Add(min(standbyWait, c.o.SwitchoverDelay))
	began := time.Now()
	for {
		var streaming int
		qctx, cancel := context.WithTimeout(ctx, time.Second)
		err := conn.QueryRow(qctx, "SELECT count(*) FROM pg_catalog.pg_stat_replication WHERE state = 'streaming'").Scan(&streaming)
		cancel()
		switch {
		case err == nil && streaming >= want:
			if waited := time.Since(began); waited > 100*time.Millisecond {
				c.log.Info("demoting once the standbys stream again", "standbys", streaming, "waitedMs", waited.Milliseconds())
			}
			return
		case ctx.Err() != nil || time.Now().After(deadline):
			c.log.Warn("demoting with fewer standbys streaming than before; a successor that is not streaming waits for the final LSN",
				"streaming", streaming, "before", want)
			return
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (c *controller) demote(ctx context.Context) error {
	if !c.setPhase(phaseDemoting) {
		return nil
	}
	began := time.Now()
	c.setLabel(ctx, roles.RoleNone)
	go c.prober.CheckNow(context.WithoutCancel(ctx))
	if conn, err := c.connect(ctx); err == nil {
		c.awaitStandbys(ctx, conn)
		cctx, cancel := context.WithTimeout(ctx, min(c.o.SwitchoverDelay, 30*time.Second))
		if err := postgres.Checkpoint(cctx, conn); err != nil {
			c.log.Warn("checkpoint before demotion failed", "error", err.Error())
		}
		cancel()
		conn.Close(context.Background())
	}
	step, err := c.sup.Stop(ctx, lifecycle.StepFast, c.o.SwitchoverDelay)
	if err != nil {
		return err
	}
	stopped := time.Now()
	// Postgres is down: nothing accepts writes, so renewing may stop.
	c.stopHold()
	if c.phase() == phaseFenced {
		return errors.New("fenced during demotion")
	}
	var final *roles.FinalLSN
	if step != lifecycle.StepImmediate && step != lifecycle.StepKill {
		final = c.finalLSN(ctx)
	}
	rctx, cancel := context.WithTimeout(ctx, releaseTimeout)
	err = c.lease.Load().Release(rctx, final)
	cancel()
	if err != nil {
		c.log.Warn("cannot release the primary lease; the successor waits for it to expire", "error", err.Error())
	}
	c.setUpstream("")
	c.setPhase(phaseRejoining)
	c.log.Info("demoted", "shutdown", step.String(), "stopMs", stopped.Sub(began).Milliseconds(),
		"releasedMs", time.Since(began).Milliseconds(), "finalLSN", final)
	c.event(corev1.EventTypeNormal, roles.ReasonDemoted, "Demoted: %s shutdown in %s, lease released with final LSN %v",
		step, stopped.Sub(began).Round(time.Millisecond), final)
	return nil
}
