package roles_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/rest"

	"github.com/pgwarden/pgwarden/e2e/testbed"
	"github.com/pgwarden/pgwarden/pkg/roles"
)

// holding is a running Hold.
type holding struct {
	lost   chan *roles.LostError // the fencing callback's argument
	cancel context.CancelFunc
	done   chan struct{}
	err    error // Hold's result, valid after done
	once   sync.Once
}

func hold(t *testing.T, l *roles.PrimaryLease) *holding {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	h := &holding{lost: make(chan *roles.LostError, 1), cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(h.done)
		h.err = l.Hold(ctx, func(e *roles.LostError) { h.lost <- e })
	}()
	t.Cleanup(func() { h.stop(t) })
	return h
}

// stop cancels Hold and returns its result.
func (h *holding) stop(t *testing.T) error {
	t.Helper()
	h.cancel()
	return h.wait(t, 10*time.Second)
}

// wait waits for Hold to return by itself.
func (h *holding) wait(t *testing.T, timeout time.Duration) error {
	t.Helper()
	select {
	case <-h.done:
		return h.err
	case <-time.After(timeout):
		t.Fatalf("Hold did not return within %s", timeout)
		return nil
	}
}

// fenced waits for the fencing callback.
func (h *holding) fenced(t *testing.T, timeout time.Duration) *roles.LostError {
	t.Helper()
	select {
	case e := <-h.lost:
		return e
	case <-time.After(timeout):
		t.Fatalf("not fenced within %s", timeout)
		return nil
	}
}

func (h *holding) notFenced(t *testing.T) {
	t.Helper()
	select {
	case e := <-h.lost:
		t.Fatalf("fenced unexpectedly: %v", e)
	default:
	}
}

// acquiring is a running Acquire.
type acquiring struct {
	done chan struct{}
	err  error
	at   time.Time // when Acquire returned
}

func acquire(ctx context.Context, l *roles.PrimaryLease) *acquiring {
	a := &acquiring{done: make(chan struct{})}
	go func() {
		defer close(a.done)
		a.err = l.Acquire(ctx)
		a.at = time.Now()
	}()
	return a
}

func (a *acquiring) wait(t *testing.T, timeout time.Duration) {
	t.Helper()
	select {
	case <-a.done:
		if a.err != nil {
			t.Fatalf("Acquire: %v", a.err)
		}
	case <-time.After(timeout):
		t.Fatalf("Acquire did not succeed within %s", timeout)
	}
}

func (a *acquiring) pending() bool {
	select {
	case <-a.done:
		return false
	default:
		return true
	}
}

func (e *env) getLease(t *testing.T) *coordinationv1.Lease {
	t.Helper()
	l, err := e.admin.CoordinationV1().Leases(e.ns).Get(context.Background(), roles.LeaseName(e.cluster), metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get lease: %v", err)
	}
	return l
}

func holderOf(l *coordinationv1.Lease) string {
	if l.Spec.HolderIdentity == nil {
		return ""
	}
	return *l.Spec.HolderIdentity
}

func transitionsOf(l *coordinationv1.Lease) int32 {
	if l.Spec.LeaseTransitions == nil {
		return 0
	}
	return *l.Spec.LeaseTransitions
}

// waitRenewals waits until the holder has written the Lease n more times.
func (e *env) waitRenewals(t *testing.T, n int) {
	t.Helper()
	last := e.getLease(t).Spec.RenewTime.Time
	for range n {
		waitFor(t, testRenewDeadline, "a renewal", func() bool {
			r := e.getLease(t).Spec.RenewTime.Time
			if r.Equal(last) {
				return false
			}
			last = r
			return true
		})
	}
}

// events returns the Events on pod with reason.
func (e *env) events(t *testing.T, pod, reason string) []corev1.Event {
	t.Helper()
	sel := fields.Set{"involvedObject.name": pod, "reason": reason}.AsSelector().String()
	list, err := e.admin.CoreV1().Events(e.ns).List(context.Background(), metav1.ListOptions{FieldSelector: sel})
	if err != nil {
		t.Fatalf("list events: %v", err)
	}
	return list.Items
}

func TestLease(t *testing.T) {
	api := testbed.StartAPI(t)
	t.Run("ContendersRace", func(t *testing.T) { testContendersRace(t, newEnv(t, api, "race", "race")) })
	t.Run("AcquireWaitsForReleaseAndExpiry", func(t *testing.T) { testAcquireWaits(t, newEnv(t, api, "wait", "wait")) })
	t.Run("DeletedByHandWhileHeld", func(t *testing.T) { testDeletedByHand(t, newEnv(t, api, "deleted", "deleted")) })
	t.Run("TakenAway", func(t *testing.T) { testTakenAway(t, newEnv(t, api, "taken", "taken")) })
	t.Run("FencingFrozenAPI", func(t *testing.T) { testFencingFrozenAPI(t, api, newEnv(t, api, "frozen", "frozen")) })
}

// Three contenders race TryAcquire from a missing Lease (create race) and then, round after
// round, from a released one (update race): exactly one wins each time, the others then keep
// failing against the live holder, and every holder change is counted. Finally they race for
// an expired Lease with Acquire: exactly one gets it.
func testContendersRace(t *testing.T, e *env) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ids := []string{"pod-a", "pod-b", "pod-c"}
	var ls []*roles.PrimaryLease
	for _, id := range ids {
		ls = append(ls, e.lease(t, id, nil))
	}
	const rounds = 15
	wins := map[string]int{}
	for round := range rounds {
		ok := make([]bool, len(ls))
		errs := make([]error, len(ls))
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i, l := range ls {
			wg.Go(func() {
				<-start
				ok[i], errs[i] = l.TryAcquire(ctx)
			})
		}
		close(start)
		wg.Wait()
		var winners []int
		for i := range ls {
			if errs[i] != nil {
				t.Fatalf("round %d: %s: TryAcquire: %v", round, ids[i], errs[i])
			}
			if ok[i] {
				winners = append(winners, i)
			}
		}
		if len(winners) != 1 {
			t.Fatalf("round %d: winners %v, want exactly one", round, winners)
		}
		w := winners[0]
		wins[ids[w]]++
		if got := holderOf(e.getLease(t)); got != ids[w] {
			t.Fatalf("round %d: lease holder %q, want the winner %q", round, got, ids[w])
		}
		for i, l := range ls {
			if i == w {
				continue
			}
			if ok, err := l.TryAcquire(ctx); ok || err != nil {
				t.Fatalf("round %d: %s took a live lease from %s: %v, %v", round, ids[i], ids[w], ok, err)
			}
			if l.IsHeld() {
				t.Fatalf("round %d: %s believes it holds the lease", round, ids[i])
			}
		}
		if round < rounds-1 {
			if err := ls[w].Release(ctx, nil); err != nil {
				t.Fatalf("round %d: release: %v", round, err)
			}
		}
	}
	if got := transitionsOf(e.getLease(t)); got != rounds-1 {
		t.Errorf("leaseTransitions = %d after %d acquisitions, want %d", got, rounds, rounds-1)
	}
	t.Logf("wins: %v", wins)

	// The last winner stops renewing; the others race for the expired Lease. Their contexts end
	// before the new holder (which does not renew either) could expire for the loser.
	last := holderOf(e.getLease(t))
	actx, acancel := context.WithTimeout(ctx, testLeaseDuration+testRetryPeriod+time.Second)
	defer acancel()
	var as []*acquiring
	var contenders []string
	for i, l := range ls {
		if ids[i] != last {
			as = append(as, acquire(actx, l))
			contenders = append(contenders, ids[i])
		}
	}
	var got []string
	for i, a := range as {
		<-a.done
		if a.err == nil {
			got = append(got, contenders[i])
		} else if !errors.Is(a.err, context.DeadlineExceeded) {
			t.Errorf("%s: Acquire: %v", contenders[i], a.err)
		}
	}
	if len(got) != 1 {
		t.Fatalf("after expiry, %v acquired, want exactly one", got)
	}
	l := e.getLease(t)
	if holderOf(l) != got[0] || transitionsOf(l) != rounds {
		t.Errorf("lease holder %q transitions %d, want %q and %d", holderOf(l), transitionsOf(l), got[0], rounds)
	}
}

// Acquire waits while a live holder renews; it gets the Lease within a retry period once the
// holder releases it (with the final LSN handed over), and only a full lease duration after the
// holder's last renew when the holder just stops.
func testAcquireWaits(t *testing.T, e *env) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a, b := e.lease(t, "pod-a", nil), e.lease(t, "pod-b", nil)
	if ok, err := a.TryAcquire(ctx); !ok || err != nil {
		t.Fatalf("TryAcquire on a new cluster: %v, %v", ok, err)
	}
	ha := hold(t, a)
	ab := acquire(ctx, b)
	// Well past a lease duration: a live holder keeps it.
	select {
	case <-ab.done:
		t.Fatalf("pod-b acquired while pod-a renews (err %v)", ab.err)
	case <-time.After(testLeaseDuration * 3 / 2):
	}
	st, err := b.Holder(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Holder != "pod-a" || st.Expired || st.HolderIP == "" || st.UnchangedFor >= testLeaseDuration {
		t.Errorf("pod-b's view: %+v, want held by pod-a, not expired, with its IP", st)
	}

	if err := ha.stop(t); err != nil {
		t.Fatalf("Hold after cancel: %v", err)
	}
	final := &roles.FinalLSN{Pod: "pod-a", LSN: "0/3000028", Timeline: 1}
	released := time.Now()
	if err := a.Release(ctx, final); err != nil {
		t.Fatal(err)
	}
	ab.wait(t, 5*time.Second)
	if d := ab.at.Sub(released); d > testRetryPeriod+timerSlack {
		t.Errorf("pod-b acquired %s after the release, want within a retry period (%s)", d, testRetryPeriod)
	} else {
		t.Logf("pod-b acquired %s after the release", d.Round(time.Millisecond))
	}
	if diff := cmp.Diff(final, b.Handoff()); diff != "" {
		t.Errorf("handoff (-want +got):\n%s", diff)
	}
	l := e.getLease(t)
	if _, ok := l.Annotations[roles.FinalLSNAnnotation]; ok || holderOf(l) != "pod-b" || transitionsOf(l) != 1 {
		t.Errorf("after handover: holder %q transitions %d annotations %v, want pod-b, 1, no final LSN",
			holderOf(l), transitionsOf(l), l.Annotations)
	}
	waitFor(t, 5*time.Second, "a LeaseAcquired event on pod-b", func() bool {
		return len(e.events(t, "pod-b", roles.ReasonLeaseAcquired)) == 1
	})
	if n := len(e.events(t, "pod-a", roles.ReasonLeaseReleased)); n != 1 {
		t.Errorf("%d LeaseReleased events on pod-a, want 1", n)
	}

	// pod-b holds and renews; pod-a waits and must have seen it; then pod-b just stops.
	hb := hold(t, b)
	aa := acquire(ctx, a)
	waitFor(t, 5*time.Second, "pod-a to see pod-b's lease", func() bool {
		st, ok := a.Cached()
		return ok && st.Holder == "pod-b"
	})
	if err := hb.stop(t); err != nil {
		t.Fatalf("Hold after cancel: %v", err)
	}
	deadline, ok := b.FenceDeadline()
	if !ok {
		t.Fatal("pod-b lost the lease by stopping Hold")
	}
	lastRenew := deadline.Add(-testRenewDeadline)
	aa.wait(t, 2*testLeaseDuration)
	after := aa.at.Sub(lastRenew)
	if after < testLeaseDuration || after > testLeaseDuration+testRetryPeriod+timerSlack {
		t.Errorf("pod-a acquired %s after pod-b's last renew, want in [%s, %s]", after,
			testLeaseDuration, testLeaseDuration+testRetryPeriod+timerSlack)
	} else {
		t.Logf("pod-a acquired the expired lease %s after pod-b's last renew", after.Round(time.Millisecond))
	}
	if a.Handoff() != nil {
		t.Errorf("a lease taken after expiry hands over %v, want nothing", a.Handoff())
	}
	if got := transitionsOf(e.getLease(t)); got != 2 {
		t.Errorf("leaseTransitions = %d, want 2", got)
	}
	// pod-b is no holder any more: it cannot release.
	if err := b.Release(ctx, nil); !errors.Is(err, roles.ErrNotHeld) {
		t.Errorf("release by the old holder: %v, want ErrNotHeld", err)
	}
}

// A Lease deleted by hand while held is re-created by its holder, which is not fenced, and a
// contender that had seen it held does not grab it in between.
func testDeletedByHand(t *testing.T, e *env) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a, b := e.lease(t, "pod-a", nil), e.lease(t, "pod-b", nil)
	if ok, err := a.TryAcquire(ctx); !ok || err != nil {
		t.Fatalf("TryAcquire: %v, %v", ok, err)
	}
	ha := hold(t, a)
	bctx, bcancel := context.WithCancel(ctx)
	defer bcancel()
	ab := acquire(bctx, b)
	waitFor(t, 5*time.Second, "pod-b to see pod-a's lease", func() bool {
		st, ok := b.Cached()
		return ok && st.Holder == "pod-a"
	})
	before := e.getLease(t)
	for range 3 {
		if err := e.admin.CoordinationV1().Leases(e.ns).Delete(ctx, roles.LeaseName(e.cluster), metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, testRenewDeadline, "the holder to re-create the lease", func() bool {
			l, err := e.admin.CoordinationV1().Leases(e.ns).Get(ctx, roles.LeaseName(e.cluster), metav1.GetOptions{})
			return err == nil && holderOf(l) == "pod-a"
		})
		e.waitRenewals(t, 2)
	}
	ha.notFenced(t)
	if !ab.pending() {
		t.Fatalf("pod-b acquired a deleted lease whose holder is alive (err %v)", ab.err)
	}
	after := e.getLease(t)
	if transitionsOf(after) != transitionsOf(before) || !after.Spec.AcquireTime.Equal(before.Spec.AcquireTime) {
		t.Errorf("re-created lease: transitions %d acquireTime %v, want those of before the deletion: %d %v",
			transitionsOf(after), after.Spec.AcquireTime, transitionsOf(before), before.Spec.AcquireTime)
	}
	bcancel()
	<-ab.done
}

// The holder fences when a renew finds the Lease taken by another, cleared, or deleted and
// re-created by another.
func testTakenAway(t *testing.T, e *env) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	leases := e.admin.CoordinationV1().Leases(e.ns)
	name := roles.LeaseName(e.cluster)
	intruder := "intruder"
	for _, tc := range []struct {
		name    string
		take    func() error
		reasons []roles.LostReason
		holder  string
	}{
		{"stolen", func() error {
			l := e.getLease(t)
			l.Spec.HolderIdentity = &intruder
			_, err := leases.Update(ctx, l, metav1.UpdateOptions{})
			return err
		}, []roles.LostReason{roles.LostHeldByOther}, intruder},
		{"cleared", func() error {
			l := e.getLease(t)
			l.Spec.HolderIdentity = nil
			_, err := leases.Update(ctx, l, metav1.UpdateOptions{})
			return err
		}, []roles.LostReason{roles.LostCleared}, ""},
		{"recreated by another", func() error {
			if err := leases.Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
				return err
			}
			secs := int32(3)
			_, err := leases.Create(ctx, &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: name},
				Spec: coordinationv1.LeaseSpec{HolderIdentity: &intruder, LeaseDurationSeconds: &secs}}, metav1.CreateOptions{})
			return err
		}, []roles.LostReason{roles.LostHeldByOther, roles.LostRecreated}, intruder},
	} {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			_ = leases.Delete(ctx, name, metav1.DeleteOptions{})
			id := "pod-" + strings.ReplaceAll(tc.name, " ", "-")
			a := e.lease(t, id, nil)
			if ok, err := a.TryAcquire(ctx); !ok || err != nil {
				t.Fatalf("TryAcquire: %v, %v", ok, err)
			}
			ha := hold(t, a)
			e.waitRenewals(t, 1)
			taken := time.Now()
			if err := tc.take(); err != nil {
				t.Fatal(err)
			}
			lost := ha.fenced(t, testRetryPeriod+testRenewDeadline)
			t.Logf("fenced %s after the change: %v", time.Since(taken).Round(time.Millisecond), lost)
			if d := lost.FencedAt.Sub(taken); d > testRetryPeriod+timerSlack {
				t.Errorf("fenced %s after the change, want within a retry period (%s)", d, testRetryPeriod)
			}
			if !contains(tc.reasons, lost.Reason) || (tc.holder != "" && lost.Holder != tc.holder) {
				t.Errorf("lost %s (holder %q), want one of %v (holder %q)", lost.Reason, lost.Holder, tc.reasons, tc.holder)
			}
			var got *roles.LostError
			if err := ha.wait(t, 10*time.Second); !errors.As(err, &got) || got != lost {
				t.Errorf("Hold returned %v, want the LostError passed to the callback", err)
			}
			if a.IsHeld() {
				t.Error("still believes it holds the lease")
			}
			if n := len(e.events(t, id, roles.ReasonFenced)); n != 1 {
				t.Errorf("%d Fenced events, want 1", n)
			}
		})
	}
}

func contains[T comparable](s []T, v T) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// A holder whose API server stops answering (requests hang) fences RenewDeadline after its last
// successful renew, before the Lease can expire for a contender that has been watching all along,
// and that contender gets it only after the fence.
func testFencingFrozenAPI(t *testing.T, api *testbed.API, e *env) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p := startProxy(t, strings.TrimPrefix(api.URL, "https://"))
	cfg := rest.CopyConfig(e.instance)
	cfg.Host = "https://" + p.addr()
	viaProxy, err := roles.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	a, b := e.lease(t, "pod-a", viaProxy), e.lease(t, "pod-b", nil)
	if ok, err := a.TryAcquire(ctx); !ok || err != nil {
		t.Fatalf("TryAcquire: %v, %v", ok, err)
	}
	ha := hold(t, a)
	ab := acquire(ctx, b)
	e.waitRenewals(t, 2)
	frozen := time.Now()
	p.freeze()
	lost := ha.fenced(t, testRenewDeadline+5*time.Second)
	checkFence(t, e, lost, frozen)
	ab.wait(t, 2*testLeaseDuration)
	if !ab.at.After(lost.FencedAt) || ab.at.Sub(lost.LastRenew) < testLeaseDuration {
		t.Errorf("contender acquired %s after the fence, %s after the last renew; want after the fence and >= %s after the renew",
			ab.at.Sub(lost.FencedAt), ab.at.Sub(lost.LastRenew), testLeaseDuration)
	}
	t.Logf("contender acquired %s after the fence", ab.at.Sub(lost.FencedAt).Round(time.Millisecond))
	p.thaw()
	if err := ha.wait(t, 10*time.Second); !errors.As(err, new(*roles.LostError)) {
		t.Errorf("Hold returned %v, want a LostError", err)
	}
}

// checkFence checks the timing of a fence for the renew deadline, the API server having become
// unavailable at cut.
func checkFence(t *testing.T, e *env, lost *roles.LostError, cut time.Time) {
	t.Helper()
	sinceRenew := lost.FencedAt.Sub(lost.LastRenew)
	t.Logf("fenced %s after the last successful renew, %s after the API server went away; margin before the lease could expire for others: %s",
		sinceRenew.Round(time.Millisecond), lost.FencedAt.Sub(cut).Round(time.Millisecond), lost.Margin.Round(time.Millisecond))
	if lost.Reason != roles.LostRenewDeadline {
		t.Errorf("reason %s, want %s", lost.Reason, roles.LostRenewDeadline)
	}
	if lost.LastRenew.After(cut) {
		t.Errorf("last successful renew %s after the API server went away", lost.LastRenew.Sub(cut))
	}
	if sinceRenew < testRenewDeadline || sinceRenew > testRenewDeadline+timerSlack {
		t.Errorf("fenced %s after the last renew, want within [%s, %s]", sinceRenew, testRenewDeadline, testRenewDeadline+timerSlack)
	}
	if !lost.FencedAt.Before(lost.ExpiresForOthers) || lost.Margin < testLeaseDuration-testRenewDeadline-timerSlack {
		t.Errorf("margin %s, want about %s and never negative", lost.Margin, testLeaseDuration-testRenewDeadline)
	}
	// The record is written just after the callback returned.
	var recs []map[string]any
	waitFor(t, time.Second, "the fence log record", func() bool {
		recs = e.log.records("primary lease lost: fenced")
		return len(recs) > 0
	})
	if len(recs) != 1 {
		t.Fatalf("%d fence log records, want 1", len(recs))
	}
	if got, want := recs[0]["marginMs"], float64(lost.Margin.Milliseconds()); got != want {
		t.Errorf("logged marginMs %v, want %v", got, want)
	}
}
