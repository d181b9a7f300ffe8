package operator

import (
	"testing"
	"time"

	"github.com/pgwarden/pgwarden/pkg/roles"
)

// A Lease lapses once the holder's renew deadline (after which it has fenced itself) plus the
// clock skew allowance has passed since its renew time; before that the operator learns when
// to look again, so it does not notice a partitioned primary a steady resync late.
func TestLeaseLapsed(t *testing.T) {
	renew := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	if leaseLapse != roles.DefaultRenewDeadline+leaseSkew || leaseLapse >= roles.DefaultLeaseDuration+leaseSkew {
		t.Fatalf("leaseLapse %v", leaseLapse)
	}
	for _, c := range []struct {
		after  time.Duration
		lapsed bool
		in     time.Duration
	}{
		{0, false, leaseLapse + 100*time.Millisecond},
		{2 * time.Second, false, leaseLapse - 2*time.Second + 100*time.Millisecond},
		{leaseLapse, false, 100 * time.Millisecond},
		{leaseLapse + time.Millisecond, true, 0},
		{time.Hour, true, 0},
	} {
		lapsed, in := leaseLapsed(renew, renew.Add(c.after))
		if lapsed != c.lapsed || in != c.in {
			t.Errorf("%v after the renewal: lapsed %v, look again in %v; want %v, %v", c.after, lapsed, in, c.lapsed, c.in)
		}
	}
}
