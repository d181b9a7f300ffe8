package instance

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgwarden/pgwarden/lifecycle"
	"github.com/pgwarden/pgwarden/probes"
)

// instanceCollector exports the instance's state on :9187 from what the
// prober's periodic check (one query per second on a kept connection), the
// supervisor and the role controller already hold: a scrape never touches
// PostgreSQL, so its cost does not depend on how often Prometheus scrapes.
//
// Values read from the server (role, timeline, WAL positions, lag,
// connections, pending restart) are exported only while the postmaster runs
// and the last check succeeded: a stopped or unreachable server exports
// none of them rather than old ones.
type instanceCollector struct {
	prober *probes.Prober
	sup    *lifecycle.Supervisor
	ctrl   *controller // nil when standalone
	now    func() time.Time
}

// Instance metric names (the README lists them; deploy/monitoring uses them).
var (
	descRole = prometheus.NewDesc("pgwarden_instance_role",
		"1 for the role the server runs as (pg_is_in_recovery: primary or replica), 0 for the other; both 0 while postgres is stopped or does not answer.",
		[]string{"role"}, nil)
	descReady = prometheus.NewDesc("pgwarden_instance_ready",
		"1 while the readiness probe passes (a query succeeds; a primary holds the Lease).", nil, nil)
	descTimeline = prometheus.NewDesc("pgwarden_instance_timeline",
		"The timeline the server writes (primary) or receives/replays (replica).", nil, nil)
	descCurrentLSN = prometheus.NewDesc("pgwarden_instance_wal_current_lsn_bytes",
		"Primary: pg_current_wal_lsn() as a byte position.", nil, nil)
	descReceivedLSN = prometheus.NewDesc("pgwarden_instance_wal_received_lsn_bytes",
		"Replica: pg_last_wal_receive_lsn() as a byte position (absent before it ever streamed).", nil, nil)
	descReplayedLSN = prometheus.NewDesc("pgwarden_instance_wal_replayed_lsn_bytes",
		"Replica: pg_last_wal_replay_lsn() as a byte position.", nil, nil)
	descLagBytes = prometheus.NewDesc("pgwarden_instance_replication_lag_bytes",
		"Replica: bytes of WAL not replayed yet: the highest of the upstream's last reported end of WAL (pg_stat_wal_receiver.latest_end_lsn) and the received position, minus the replayed position.",
		nil, nil)
	descLagSeconds = prometheus.NewDesc("pgwarden_instance_replication_lag_seconds",
		"Replica: replayLagSeconds of /status: 0 when everything received is replayed, else the age of the last replayed commit; absent when unknown.",
		nil, nil)
	descLeaseAge = prometheus.NewDesc("pgwarden_instance_lease_renew_age_seconds",
		"Primary (Lease holder): seconds since this instance last renewed the primary Lease; absent when it does not hold it.",
		nil, nil)
	descConnections = prometheus.NewDesc("pgwarden_instance_connections",
		"Client backends in pg_stat_activity (pgwarden's own probe session included).", nil, nil)
	descMaxConnections = prometheus.NewDesc("pgwarden_instance_max_connections",
		"The server's max_connections.", nil, nil)
	descPendingRestart = prometheus.NewDesc("pgwarden_instance_pending_restart",
		"1 when a changed setting waits for a restart of postgres (pg_settings.pending_restart).", nil, nil)
	descFenced = prometheus.NewDesc("pgwarden_instance_fenced",
		"1 while the instance is fenced on request (pgwarden.io/fenced=true) and postgres is held stopped.", nil, nil)
)

func (c *instanceCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descRole, descReady, descTimeline, descCurrentLSN, descReceivedLSN, descReplayedLSN,
		descLagBytes, descLagSeconds, descLeaseAge, descConnections, descMaxConnections, descPendingRestart, descFenced} {
		ch <- d
	}
}

func gauge(ch chan<- prometheus.Metric, d *prometheus.Desc, v float64, labels ...string) {
	ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func (c *instanceCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.prober.Snapshot()
	gauge(ch, descReady, b2f(s.Ready))
	fenced := false
	if c.ctrl != nil {
		fenced = c.ctrl.phase() == phaseHeld
		if l := c.ctrl.lease.Load(); l != nil {
			if at, ok := l.LastRenew(); ok {
				gauge(ch, descLeaseAge, c.now().Sub(at).Seconds())
			}
		}
	}
	gauge(ch, descFenced, b2f(fenced))
	live := c.sup.PID() != 0 && !s.Stale && !s.MeasuredAt.IsZero() && s.MeasuredAt.Equal(s.CheckedAt)
	if !live {
		gauge(ch, descRole, 0, "primary")
		gauge(ch, descRole, 0, "replica")
		return
	}
	gauge(ch, descRole, b2f(!s.InRecovery), "primary")
	gauge(ch, descRole, b2f(s.InRecovery), "replica")
	gauge(ch, descTimeline, float64(s.Timeline))
	gauge(ch, descConnections, float64(s.Connections))
	gauge(ch, descMaxConnections, float64(s.MaxConnections))
	gauge(ch, descPendingRestart, b2f(s.PendingRestart))
	if !s.InRecovery {
		gauge(ch, descCurrentLSN, float64(s.CurrentLSN))
		return
	}
	if s.ReceivedLSN != 0 {
		gauge(ch, descReceivedLSN, float64(s.ReceivedLSN))
	}
	gauge(ch, descReplayedLSN, float64(s.ReplayLSN))
	end := max(s.LatestEndLSN, s.ReceivedLSN)
	lag := 0.0
	if end > s.ReplayLSN {
		lag = float64(end - s.ReplayLSN)
	}
	gauge(ch, descLagBytes, lag)
	if s.ReplayLagSeconds != nil {
		gauge(ch, descLagSeconds, *s.ReplayLagSeconds)
	}
}
