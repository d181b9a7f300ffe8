package roles

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Timing of the primary Lease (DESIGN.md, "Defaults"). The order matters:
// RetryPeriod < RenewDeadline < LeaseDuration. A holder that has not renewed for RenewDeadline
// fences itself; nobody else can take the Lease before LeaseDuration has passed since that
// renew, so the holder has LeaseDuration - RenewDeadline (5 s) to stop accepting writes.
const (
	DefaultLeaseDuration = 15 * time.Second
	DefaultRenewDeadline = 10 * time.Second
	DefaultRetryPeriod   = 2 * time.Second
)

// LeaseName returns the name of a cluster's primary Lease.
func LeaseName(cluster string) string { return cluster + "-primary" }

// LeaseConfig configures a PrimaryLease.
type LeaseConfig struct {
	Client    *Client
	Namespace string
	Cluster   string // the Lease is LeaseName(Cluster)
	Identity  string // the holder identity: this instance's pod name
	// PodIP, if set, is written on the Lease as annotation pgwarden.io/holder-ip while this
	// instance holds it, for replicas to stream from.
	PodIP string

	// LeaseDuration is how long others wait, after they first saw a holder's record unchanged,
	// before they take the Lease. It is written on the Lease rounded up to whole seconds.
	LeaseDuration time.Duration
	// RenewDeadline is how long after the last successful renew the holder fences itself.
	RenewDeadline time.Duration
	// RetryPeriod is how often the holder renews, and how often Acquire tries.
	RetryPeriod time.Duration
	// RenewTimeout bounds one renew attempt (a read and a write); default RenewDeadline/3, so a
	// hung API server costs at most that much per attempt and never delays the fence, which has
	// its own timer.
	RenewTimeout time.Duration

	Recorder *Recorder    // optional: LeaseAcquired, LeaseReleased and Fenced Events
	Logger   *slog.Logger // nil: slog.Default()
}

// Errors of PrimaryLease. Loss of the Lease while holding it is a *LostError.
var (
	// ErrNotHeld: the operation needs the Lease and this instance does not hold it.
	ErrNotHeld = errors.New("primary lease not held by this instance")
	// ErrReleased: Hold stopped because Release was called.
	ErrReleased = errors.New("primary lease released")
)

// LostReason tells why a holder lost the Lease.
type LostReason string

// The reasons of a LostError.
const (
	// LostRenewDeadline: no renew succeeded within RenewDeadline of the last successful one.
	LostRenewDeadline LostReason = "RenewDeadlineExceeded"
	// LostHeldByOther: a renew found another holder (taken, or deleted and re-created by another).
	LostHeldByOther LostReason = "HeldByOther"
	// LostCleared: a renew found no holder: someone else released or broke the Lease.
	LostCleared LostReason = "HolderCleared"
	// LostRecreated: the Lease had been deleted and someone else created it before this holder
	// could re-create it.
	LostRecreated LostReason = "RecreatedByOther"
)

// LostError describes the loss of the Lease by its holder; Hold passes it to the fencing callback
// and returns it.
type LostError struct {
	Reason LostReason
	Holder string // the holder found on the Lease, for LostHeldByOther
	// LastRenew is when the last successful write of the Lease by this holder was sent (local
	// monotonic clock). Nobody can observe that write before it was sent, so nobody can consider
	// the Lease expired before ExpiresForOthers = LastRenew + LeaseDuration.
	LastRenew        time.Time
	ExpiresForOthers time.Time
	FencedAt         time.Time
	// Margin is ExpiresForOthers - FencedAt: how long the instance has to stop accepting writes
	// before anyone else can take the Lease by expiry. For LostHeldByOther and LostCleared someone
	// else already changed the Lease; the margin only describes this holder's own timing.
	Margin time.Duration
}

func (e *LostError) Error() string {
	s := fmt.Sprintf("primary lease lost (%s", e.Reason)
	if e.Holder != "" {
		s += ", now held by " + e.Holder
	}
	return s + fmt.Sprintf("): fenced %s after the last renew, %s before it could expire for others",
		e.FencedAt.Sub(e.LastRenew).Round(time.Millisecond), e.Margin.Round(time.Millisecond))
}

// LeaseState is a view of the Lease as this instance last read it.
type LeaseState struct {
	Exists      bool
	Holder      string    // "" when nobody holds it
	HolderIP    string    // annotation pgwarden.io/holder-ip, written by the holder
	RenewTime   time.Time // as the holder wrote it (the holder's wall clock): for display only
	Transitions int32
	// UnchangedFor is how long this instance has seen the holder's record unchanged, on its own
	// monotonic clock: a lower bound of the time since the holder's last renew.
	UnchangedFor time.Duration
	// Expired: a holder is set and UnchangedFor has reached the lease duration, so any contender
	// may take the Lease. A fresh reader sees no Lease expired before it has watched it unchanged
	// for a whole lease duration.
	Expired  bool
	FinalLSN *FinalLSN // annotation pgwarden.io/final-lsn, present between a Release and the next acquisition
}

// holdState is where this instance stands with the Lease.
type holdState int

const (
	notHeld  holdState = iota // never acquired, released, or lost
	held                      // acquired; renewals keep it
	released                  // Release was called; Hold must stop without fencing
)

// observation is the Lease record as this instance saw it, and since when (monotonic): the only
// clock used to decide expiry, so clock skew between nodes cannot make a Lease expire early.
type observation struct {
	key         string // what identifies one renew of one holder; "" before the first read
	read        bool   // the Lease has been read (found or not) at least once
	exists      bool
	holder      string
	holderIP    string
	renewTime   time.Time
	transitions int32
	duration    time.Duration // the record's leaseDurationSeconds
	finalLSN    *FinalLSN
	at          time.Time // when key was first seen
}

// PrimaryLease is this instance's side of the cluster's primary Lease: acquire it, hold it (renew,
// and fence when renewing fails), release it, and read who holds it.
//
// Guarantee: while Hold runs, the fencing callback is called no later than RenewDeadline after
// the start of the last successful write (plus timer latency), by its own timer, whatever the API
// server does; and no other PrimaryLease can take the Lease before LeaseDuration after that same
// instant. Two contenders never both succeed: every write carries the resourceVersion it was
// decided on (or is a create, which only one can win).
type PrimaryLease struct {
	cfg  LeaseConfig
	name string
	log  *slog.Logger
	op   chan struct{} // one API operation (acquire, renew, release) at a time; ctx-aware mutex

	mu        sync.Mutex
	state     holdState
	holding   bool      // Hold is running
	lastRenew time.Time // start of the last successful write while held
	acquired  time.Time // acquireTime we wrote, kept across renewals and re-creation
	handoff   *FinalLSN
	obs       observation
}

// NewPrimaryLease checks cfg, fills in defaults and returns a PrimaryLease. It makes no API call.
func NewPrimaryLease(cfg LeaseConfig) (*PrimaryLease, error) {
	if cfg.LeaseDuration == 0 {
		cfg.LeaseDuration = DefaultLeaseDuration
	}
	if cfg.RenewDeadline == 0 {
		cfg.RenewDeadline = DefaultRenewDeadline
	}
	if cfg.RetryPeriod == 0 {
		cfg.RetryPeriod = DefaultRetryPeriod
	}
	if cfg.RenewTimeout == 0 {
		cfg.RenewTimeout = cfg.RenewDeadline / 3
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	var errs []error
	if cfg.Client == nil {
		errs = append(errs, errors.New("no Kubernetes client"))
	}
	if cfg.Namespace == "" || cfg.Cluster == "" || cfg.Identity == "" {
		errs = append(errs, fmt.Errorf("namespace %q, cluster %q and identity %q must all be set", cfg.Namespace, cfg.Cluster, cfg.Identity))
	}
	if !(0 < cfg.RetryPeriod && cfg.RetryPeriod < cfg.RenewDeadline && cfg.RenewDeadline < cfg.LeaseDuration) {
		errs = append(errs, fmt.Errorf("want 0 < retry period (%s) < renew deadline (%s) < lease duration (%s)",
			cfg.RetryPeriod, cfg.RenewDeadline, cfg.LeaseDuration))
	}
	if cfg.RenewTimeout <= 0 || cfg.RenewTimeout > cfg.RenewDeadline {
		errs = append(errs, fmt.Errorf("renew timeout %s must be positive and at most the renew deadline", cfg.RenewTimeout))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("invalid primary lease configuration: %w", err)
	}
	name := LeaseName(cfg.Cluster)
	return &PrimaryLease{
		cfg: cfg, name: name, op: make(chan struct{}, 1),
		log: cfg.Logger.With("lease", cfg.Namespace+"/"+name, "identity", cfg.Identity),
	}, nil
}

// Name returns the Lease's name.
func (l *PrimaryLease) Name() string { return l.name }

func (l *PrimaryLease) lock(ctx context.Context) error {
	select {
	case l.op <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (l *PrimaryLease) unlock() { <-l.op }

func (l *PrimaryLease) leases() leaseClient {
	return l.cfg.Client.leases(l.cfg.Namespace)
}

func holderOf(lease *coordinationv1.Lease) string {
	if lease.Spec.HolderIdentity == nil {
		return ""
	}
	return *lease.Spec.HolderIdentity
}

func microTime(t *metav1.MicroTime) time.Time {
	if t == nil {
		return time.Time{}
	}
	return t.Time
}

// observeLocked records lease (nil: not found) as seen now.
func (l *PrimaryLease) observeLocked(lease *coordinationv1.Lease, now time.Time) {
	if lease == nil {
		// Keep the last holder's record and its time: a Lease that disappears does not make
		// its last live holder's claim any shorter (see TryAcquire).
		l.obs.read, l.obs.exists = true, false
		l.obs.finalLSN = nil
		l.obs.holderIP = ""
		return
	}
	var dur time.Duration
	if s := lease.Spec.LeaseDurationSeconds; s != nil {
		dur = time.Duration(*s) * time.Second
	}
	var transitions int32
	if t := lease.Spec.LeaseTransitions; t != nil {
		transitions = *t
	}
	holder, renew := holderOf(lease), microTime(lease.Spec.RenewTime)
	key := holder + "|" + renew.UTC().Format(time.RFC3339Nano) + "|" +
		microTime(lease.Spec.AcquireTime).UTC().Format(time.RFC3339Nano) + "|" +
		dur.String() + "|" + strconv.Itoa(int(transitions))
	var final *FinalLSN
	if v, ok := lease.Annotations[FinalLSNAnnotation]; ok {
		if f, err := DecodeFinalLSN(v); err == nil {
			final = f
		} else {
			l.log.Warn("ignoring invalid final LSN on lease", "err", err)
		}
	}
	at := l.obs.at
	if key != l.obs.key || !l.obs.exists {
		at = now
	}
	l.obs = observation{key: key, read: true, exists: true, holder: holder, holderIP: lease.Annotations[HolderIPAnnotation],
		renewTime: renew, transitions: transitions, duration: dur, finalLSN: final, at: at}
}

// expiresLocked returns when the observed holder's claim ends for this reader: a full lease
// duration (ours or the record's, whichever is longer) after it first saw the record.
func (l *PrimaryLease) expiresLocked() time.Time {
	return l.obs.at.Add(max(l.cfg.LeaseDuration, l.obs.duration))
}

func (l *PrimaryLease) durationSeconds() *int32 {
	s := int32((l.cfg.LeaseDuration + time.Second - 1) / time.Second)
	return &s
}

// TryAcquire makes this instance the holder if the Lease does not exist, is held by this
// instance, has no holder, or has expired — and reports whether it is now the holder. It makes
// at most two API calls and does not retry; a lost race (another contender wrote first) is
// (false, nil). A Lease this instance has never read counts as expired only after it has been
// seen unchanged for a full lease duration (later calls measure from the first), so a restarted
// contender waits out a live holder instead of trusting clocks. A Lease that disappears after this
// instance saw it held by another is not taken before that holder's claim would have expired;
// one never seen (a new cluster) is created at once.
//
// On success the fence deadline starts from the moment the write was sent; call Hold promptly.
// Do not call it while Hold runs.
func (l *PrimaryLease) TryAcquire(ctx context.Context) (bool, error) {
	if err := l.lock(ctx); err != nil {
		return false, fmt.Errorf("cannot acquire primary lease: %w", err)
	}
	defer l.unlock()
	ok, prev, err := l.tryAcquire(ctx)
	if err != nil {
		return false, fmt.Errorf("cannot acquire primary lease %s: %w", l.name, err)
	}
	if ok && prev != l.cfg.Identity {
		l.log.Info("primary lease acquired", "previousHolder", prev, "handoff", l.Handoff())
		// In the background: the fence deadline runs from now, and Hold must not start late
		// because the API server is slow to take an Event.
		go l.cfg.Recorder.Eventf(context.WithoutCancel(ctx), corev1.EventTypeNormal, ReasonLeaseAcquired,
			"Acquired primary lease %s (previous holder %q)", l.name, prev)
	}
	return ok, nil
}

// tryAcquire returns whether it acquired the Lease and the holder it took it from.
func (l *PrimaryLease) tryAcquire(ctx context.Context) (bool, string, error) {
	lease, err := l.leases().Get(ctx, l.name, metav1.GetOptions{})
	now := time.Now()
	if apierrors.IsNotFound(err) {
		l.mu.Lock()
		l.observeLocked(nil, now)
		last := l.obs.holder
		if last != "" && last != l.cfg.Identity && now.Before(l.expiresLocked()) {
			l.mu.Unlock()
			l.log.Debug("lease is missing but its last holder was alive recently; waiting out its claim", "lastHolder", last)
			return false, "", nil
		}
		transitions := int32(0)
		if l.obs.key != "" {
			transitions = l.obs.transitions + 1
		}
		l.mu.Unlock()
		lease := l.newLease(now, transitions)
		sent := time.Now()
		created, err := l.leases().Create(ctx, lease, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			return false, "", nil
		}
		if err != nil {
			return false, "", err
		}
		l.mu.Lock()
		l.becomeHolderLocked(created, sent, nil)
		l.mu.Unlock()
		return true, "", nil
	}
	if err != nil {
		return false, "", err
	}

	l.mu.Lock()
	l.observeLocked(lease, now)
	holder := l.obs.holder
	var handoff *FinalLSN
	switch {
	case holder == l.cfg.Identity:
		handoff = l.handoff // ours already (or from before a restart of this process)
	case holder == "":
		handoff = l.obs.finalLSN // released: the previous holder's clean-shutdown position
	case !now.Before(l.expiresLocked()):
		// Expired: the holder crashed or was partitioned; any final LSN is from an older release.
		l.log.Info("primary lease expired; taking it", "holder", holder,
			"unchangedFor", now.Sub(l.obs.at).Round(time.Millisecond))
	default:
		l.mu.Unlock()
		return false, holder, nil
	}
	transitions := l.obs.transitions
	l.mu.Unlock()

	next := lease.DeepCopy()
	if holder != l.cfg.Identity {
		transitions++
		next.Spec.AcquireTime = &metav1.MicroTime{Time: now}
		next.Spec.LeaseTransitions = &transitions
		delete(next.Annotations, FinalLSNAnnotation)
	}
	id := l.cfg.Identity
	next.Spec.HolderIdentity = &id
	next.Spec.RenewTime = &metav1.MicroTime{Time: now}
	next.Spec.LeaseDurationSeconds = l.durationSeconds()
	l.setHolderIP(next)
	sent := time.Now()
	updated, err := l.leases().Update(ctx, next, metav1.UpdateOptions{})
	if apierrors.IsConflict(err) {
		return false, holder, nil
	}
	if err != nil {
		return false, holder, err
	}
	l.mu.Lock()
	l.becomeHolderLocked(updated, sent, handoff)
	l.mu.Unlock()
	return true, holder, nil
}

func (l *PrimaryLease) newLease(now time.Time, transitions int32) *coordinationv1.Lease {
	id := l.cfg.Identity
	lease := &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: l.name, Namespace: l.cfg.Namespace},
		Spec: coordinationv1.LeaseSpec{
			HolderIdentity:       &id,
			LeaseDurationSeconds: l.durationSeconds(),
			AcquireTime:          &metav1.MicroTime{Time: now},
			RenewTime:            &metav1.MicroTime{Time: now},
			LeaseTransitions:     &transitions,
		},
	}
	l.setHolderIP(lease)
	return lease
}

func (l *PrimaryLease) setHolderIP(lease *coordinationv1.Lease) {
	if l.cfg.PodIP == "" {
		delete(lease.Annotations, HolderIPAnnotation)
		return
	}
	if lease.Annotations == nil {
		lease.Annotations = map[string]string{}
	}
	lease.Annotations[HolderIPAnnotation] = l.cfg.PodIP
}

func (l *PrimaryLease) becomeHolderLocked(lease *coordinationv1.Lease, sent time.Time, handoff *FinalLSN) {
	l.observeLocked(lease, sent)
	if l.state != held {
		l.acquired = microTime(lease.Spec.AcquireTime)
		l.handoff = handoff
	}
	l.state, l.lastRenew = held, sent
}

// Acquire calls TryAcquire until it succeeds or ctx ends: it waits while another live holder
// renews the Lease, and takes it as soon as it is released or has expired. Between tries it
// waits RetryPeriod, or less if the observed holder's claim ends sooner. Errors of single tries
// are logged and retried.
func (l *PrimaryLease) Acquire(ctx context.Context) error {
	lastHolder := "\x00"
	for {
		ok, err := l.TryAcquire(ctx)
		if ok {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("cannot acquire primary lease %s: %w", l.name, ctx.Err())
		}
		l.mu.Lock()
		wait := l.cfg.RetryPeriod
		if l.obs.holder != "" {
			// Just after the claim ends; at least a little, so a stale view cannot spin.
			wait = max(min(wait, time.Until(l.expiresLocked())+time.Millisecond), 10*time.Millisecond)
		}
		holder := l.obs.holder
		l.mu.Unlock()
		if err != nil {
			l.log.Warn("cannot acquire primary lease yet; retrying", "err", err, "retryIn", wait)
		} else if holder != lastHolder {
			l.log.Info("waiting for primary lease", "holder", holder)
			lastHolder = holder
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("cannot acquire primary lease %s: %w", l.name, ctx.Err())
		case <-t.C:
		}
	}
}

// attempt is the result of one renew attempt.
type attempt struct {
	start time.Time
	lost  *LostError
	err   error
}

// Hold renews the Lease every RetryPeriod until ctx ends (it returns nil; the Lease stays held
// until it expires or Release is called), Release is called (ErrReleased), or the Lease is lost:
// then it calls onLost — at once, from Hold's goroutine, before anything else — and returns the
// *LostError.
//
// The Lease is lost when no renew has succeeded within RenewDeadline of the start of the last
// successful one (a timer independent of the attempts fires, however the API server behaves;
// each attempt is also bounded by RenewTimeout), or when a renew finds another holder, no holder,
// or finds the Lease deleted and another holder has re-created it. A Lease deleted while held and
// not yet re-created is re-created with this instance as holder (it still holds the claim and is
// still the primary; losing the object is not losing the claim). onLost must stop writes at once
// (immediate shutdown): nobody else can take the Lease before LostError.ExpiresForOthers.
//
// Hold needs the Lease held (ErrNotHeld otherwise); one Hold runs at a time.
func (l *PrimaryLease) Hold(ctx context.Context, onLost func(*LostError)) error {
	l.mu.Lock()
	if l.state != held {
		l.mu.Unlock()
		return ErrNotHeld
	}
	if l.holding {
		l.mu.Unlock()
		return errors.New("primary lease: Hold is already running")
	}
	l.holding = true
	deadline := l.lastRenew.Add(l.cfg.RenewDeadline)
	nextAt := l.lastRenew.Add(l.cfg.RetryPeriod)
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		l.holding = false
		l.mu.Unlock()
	}()

	fence := time.NewTimer(time.Until(deadline))
	defer fence.Stop()
	next := time.NewTimer(time.Until(nextAt))
	defer next.Stop()
	results := make(chan attempt, 1)
	// Attempts run in their own goroutine so that neither a hung API server nor a client that
	// ignores its context can delay the fence timer. At most one is in flight.
	attempts, stopAttempts := context.WithCancel(ctx)
	inflight := false
	stopAttempt := func() {
		stopAttempts()
		if inflight {
			<-results
			inflight = false
		}
	}
	defer stopAttempt()

	for {
		select {
		case <-ctx.Done():
			l.log.Info("no longer renewing primary lease", "fenceDeadlineIn", time.Until(deadline).Round(time.Millisecond))
			return nil

		case <-fence.C:
			l.mu.Lock()
			if l.state != held {
				l.mu.Unlock()
				return ErrReleased
			}
			deadline = l.lastRenew.Add(l.cfg.RenewDeadline)
			if now := time.Now(); now.Before(deadline) { // a renew succeeded meanwhile
				l.mu.Unlock()
				fence.Reset(deadline.Sub(now))
				continue
			}
			lost := l.loseLocked(&LostError{Reason: LostRenewDeadline})
			l.mu.Unlock()
			return l.fence(lost, onLost)

		case <-next.C:
			if inflight {
				continue
			}
			start := time.Now()
			timeout := min(l.cfg.RenewTimeout, deadline.Sub(start))
			if timeout <= 0 {
				continue // the fence timer fires now
			}
			inflight = true
			go func() {
				actx, cancel := context.WithTimeout(attempts, timeout)
				defer cancel()
				lost, err := l.renew(actx)
				results <- attempt{start: start, lost: lost, err: err}
			}()

		case r := <-results:
			inflight = false
			if errors.Is(r.err, ErrReleased) {
				return ErrReleased
			}
			if r.lost != nil {
				l.mu.Lock()
				if l.state != held {
					l.mu.Unlock()
					return ErrReleased
				}
				lost := l.loseLocked(r.lost)
				l.mu.Unlock()
				return l.fence(lost, onLost)
			}
			l.mu.Lock()
			deadline = l.lastRenew.Add(l.cfg.RenewDeadline)
			l.mu.Unlock()
			fence.Reset(time.Until(deadline))
			if r.err != nil {
				if ctx.Err() == nil {
					l.log.Warn("cannot renew primary lease", "err", r.err,
						"fenceIn", time.Until(deadline).Round(time.Millisecond))
				}
			}
			next.Reset(time.Until(r.start.Add(l.cfg.RetryPeriod)))
		}
	}
}

// loseLocked marks the Lease lost and completes lost's timing.
func (l *PrimaryLease) loseLocked(lost *LostError) *LostError {
	l.state = notHeld
	lost.FencedAt = time.Now()
	lost.LastRenew = l.lastRenew
	lost.ExpiresForOthers = l.lastRenew.Add(max(l.cfg.LeaseDuration, time.Duration(*l.durationSeconds())*time.Second))
	lost.Margin = lost.ExpiresForOthers.Sub(lost.FencedAt)
	return lost
}

// fence calls onLost, then logs and records the loss.
func (l *PrimaryLease) fence(lost *LostError, onLost func(*LostError)) error {
	if onLost != nil {
		onLost(lost)
	}
	l.log.Error("primary lease lost: fenced", "reason", string(lost.Reason), "holder", lost.Holder,
		"sinceLastRenewMs", lost.FencedAt.Sub(lost.LastRenew).Milliseconds(),
		"marginMs", lost.Margin.Milliseconds())
	l.cfg.Recorder.Eventf(context.Background(), corev1.EventTypeWarning, ReasonFenced,
		"Fenced: %v", lost)
	return lost
}

// renew makes one renew attempt: read the Lease, check it is still ours, write a new renewTime.
// It returns a *LostError when the Lease is someone else's now.
func (l *PrimaryLease) renew(ctx context.Context) (*LostError, error) {
	if err := l.lock(ctx); err != nil {
		return nil, err
	}
	defer l.unlock()
	for {
		l.mu.Lock()
		state := l.state
		l.mu.Unlock()
		if state != held {
			return nil, ErrReleased
		}
		lease, err := l.leases().Get(ctx, l.name, metav1.GetOptions{})
		now := time.Now()
		if apierrors.IsNotFound(err) {
			return l.recreate(ctx, now)
		}
		if err != nil {
			return nil, err
		}
		l.mu.Lock()
		l.observeLocked(lease, now)
		l.mu.Unlock()
		switch holder := holderOf(lease); holder {
		case l.cfg.Identity:
		case "":
			return &LostError{Reason: LostCleared}, nil
		default:
			return &LostError{Reason: LostHeldByOther, Holder: holder}, nil
		}
		next := lease.DeepCopy()
		next.Spec.RenewTime = &metav1.MicroTime{Time: now}
		next.Spec.LeaseDurationSeconds = l.durationSeconds()
		l.setHolderIP(next)
		sent := time.Now()
		updated, err := l.leases().Update(ctx, next, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) {
			continue // someone wrote in between: read again and judge (bounded by ctx)
		}
		if err != nil {
			return nil, err
		}
		l.renewed(updated, sent)
		return nil, nil
	}
}

// recreate re-creates a Lease that was deleted while this instance held it.
func (l *PrimaryLease) recreate(ctx context.Context, now time.Time) (*LostError, error) {
	l.mu.Lock()
	transitions, acquired := l.obs.transitions, l.acquired
	l.observeLocked(nil, now)
	l.mu.Unlock()
	lease := l.newLease(now, transitions)
	if !acquired.IsZero() {
		lease.Spec.AcquireTime = &metav1.MicroTime{Time: acquired}
	}
	sent := time.Now()
	created, err := l.leases().Create(ctx, lease, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		// Someone else created it after the deletion: whoever it names, the claim is no longer
		// uncontested. Fence.
		return &LostError{Reason: LostRecreated}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("lease was deleted and cannot be re-created: %w", err)
	}
	l.log.Warn("primary lease was deleted while held; re-created it")
	l.renewed(created, sent)
	return nil, nil
}

func (l *PrimaryLease) renewed(lease *coordinationv1.Lease, sent time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.observeLocked(lease, sent)
	if l.state == held { // not if Hold fenced or Release was called meanwhile
		l.lastRenew = sent
	}
}

// Release gives the Lease up so a successor need not wait for it to expire: it clears the holder
// (only if this instance is the holder; ErrNotHeld otherwise) and, if final is set, records it
// for the successor in the same write. Call it only when this instance no longer accepts writes.
// A running Hold stops with ErrReleased, without fencing. Conflicting writes are retried until
// ctx ends.
func (l *PrimaryLease) Release(ctx context.Context, final *FinalLSN) error {
	var encoded string
	if final != nil {
		var err error
		if encoded, err = final.Encode(); err != nil {
			return fmt.Errorf("cannot release primary lease: %w", err)
		}
	}
	l.mu.Lock()
	if l.state == held {
		l.state = released
	}
	l.mu.Unlock()
	if err := l.lock(ctx); err != nil {
		return fmt.Errorf("cannot release primary lease: %w", err)
	}
	defer l.unlock()
	for {
		lease, err := l.leases().Get(ctx, l.name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return fmt.Errorf("cannot release primary lease %s: it does not exist: %w", l.name, ErrNotHeld)
		}
		if err != nil {
			return fmt.Errorf("cannot release primary lease %s: %w", l.name, err)
		}
		l.mu.Lock()
		l.observeLocked(lease, time.Now())
		l.mu.Unlock()
		if holder := holderOf(lease); holder != l.cfg.Identity {
			return fmt.Errorf("cannot release primary lease %s: held by %q: %w", l.name, holder, ErrNotHeld)
		}
		next := lease.DeepCopy()
		next.Spec.HolderIdentity = nil
		next.Spec.RenewTime = &metav1.MicroTime{Time: time.Now()}
		delete(next.Annotations, HolderIPAnnotation)
		delete(next.Annotations, FinalLSNAnnotation)
		if final != nil {
			if next.Annotations == nil {
				next.Annotations = map[string]string{}
			}
			next.Annotations[FinalLSNAnnotation] = encoded
		}
		updated, err := l.leases().Update(ctx, next, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("cannot release primary lease %s: %w", l.name, err)
		}
		l.mu.Lock()
		l.observeLocked(updated, time.Now())
		l.state = notHeld
		l.mu.Unlock()
		l.log.Info("primary lease released", "finalLSN", final)
		l.cfg.Recorder.Eventf(context.WithoutCancel(ctx), corev1.EventTypeNormal, ReasonLeaseReleased,
			"Released primary lease %s (final LSN %s)", l.name, encoded)
		return nil
	}
}

// Holder reads the Lease and returns its state (Exists false if there is none).
func (l *PrimaryLease) Holder(ctx context.Context) (LeaseState, error) {
	lease, err := l.leases().Get(ctx, l.name, metav1.GetOptions{})
	now := time.Now()
	if err != nil && !apierrors.IsNotFound(err) {
		return LeaseState{}, fmt.Errorf("cannot read primary lease %s: %w", l.name, err)
	}
	if err != nil {
		lease = nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.observeLocked(lease, now)
	return l.stateLocked(now), nil
}

// Cached returns the state as of the last API call of this PrimaryLease, without a new one;
// false if it has not read the Lease yet. Use it for /status.
func (l *PrimaryLease) Cached() (LeaseState, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.stateLocked(time.Now()), l.obs.read
}

func (l *PrimaryLease) stateLocked(now time.Time) LeaseState {
	o := l.obs
	if !o.exists {
		return LeaseState{}
	}
	return LeaseState{
		Exists: true, Holder: o.holder, HolderIP: o.holderIP, RenewTime: o.renewTime,
		Transitions: o.transitions, UnchangedFor: now.Sub(o.at),
		Expired:  o.holder != "" && !now.Before(l.expiresLocked()),
		FinalLSN: o.finalLSN,
	}
}

// IsHeld reports whether this instance holds the Lease: acquired, not released, not lost. A
// holder whose Hold has stopped still counts until Release or the fence deadline: see
// FenceDeadline.
func (l *PrimaryLease) IsHeld() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.state == held
}

// FenceDeadline returns the instant by which this holder must stop accepting writes unless a
// renew succeeds: the start of the last successful write plus RenewDeadline. False if the Lease
// is not held.
func (l *PrimaryLease) FenceDeadline() (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.state != held {
		return time.Time{}, false
	}
	return l.lastRenew.Add(l.cfg.RenewDeadline), true
}

// LastRenew returns when this holder last renewed the Lease successfully (the start of that
// write, local clock); false if the Lease is not held.
func (l *PrimaryLease) LastRenew() (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.state != held {
		return time.Time{}, false
	}
	return l.lastRenew, true
}

// Handoff returns the FinalLSN the previous holder recorded when it released the Lease that this
// instance then acquired; nil if the Lease was created, taken after expiry, or released without
// one. A new holder must replay up to it before promoting.
func (l *PrimaryLease) Handoff() *FinalLSN {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.handoff
}
