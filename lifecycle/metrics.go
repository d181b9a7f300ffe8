package lifecycle

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgwarden/pgwarden/pkg/reaper"
)

// Metrics are the supervisor's Prometheus metrics.
type Metrics struct {
	Up              prometheus.Gauge
	Starts          prometheus.Counter
	Restarts        prometheus.Counter
	UnexpectedExits prometheus.Counter
	StopDuration    *prometheus.HistogramVec
}

// NewMetrics creates the metrics and registers them with reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Up: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pgwarden_postmaster_up",
			Help: "1 while the postmaster process started by pgwarden is running.",
		}),
		Starts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pgwarden_postmaster_starts_total",
			Help: "Times pgwarden started the postmaster.",
		}),
		Restarts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pgwarden_postmaster_restarts_total",
			Help: "Times pgwarden restarted the postmaster after it died or failed to start.",
		}),
		UnexpectedExits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pgwarden_postmaster_unexpected_exits_total",
			Help: "Times the postmaster exited without pgwarden asking it to.",
		}),
		StopDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "pgwarden_postmaster_stop_duration_seconds",
			Help:    "How long stopping the postmaster took, by the shutdown mode that ended it (smart, fast, immediate, kill).",
			Buckets: []float64{0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120},
		}, []string{"mode"}),
	}
	if reg != nil {
		reg.MustRegister(m.Up, m.Starts, m.Restarts, m.UnexpectedExits, m.StopDuration,
			prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name: "pgwarden_orphans_reaped_total",
				Help: "Orphaned processes reaped by pgwarden as PID 1 or child subreaper.",
			}, func() float64 { return float64(reaper.OrphansReaped()) }))
	}
	return m
}
