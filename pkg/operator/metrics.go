package operator

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

// The operator's metrics, on controller-runtime's registry (served with its own at /metrics).
var (
	reconcilesTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pgwarden_operator_reconciles_total",
		Help: "PostgresCluster reconciles, by result (success or error).",
	}, []string{"result"})
	reconcileDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "pgwarden_operator_reconcile_duration_seconds",
		Help:    "Duration of one PostgresCluster reconcile.",
		Buckets: prometheus.ExponentialBuckets(0.005, 2, 12),
	})
	failoversTotal = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "pgwarden_operator_failovers_total",
		Help: "Failovers started (a replica was told to become primary because the primary failed).",
	})
	switchoversTotal = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "pgwarden_operator_switchovers_total",
		Help: "Switchovers started on request (annotation or spec.failover.promotePod).",
	})
	failoverDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "pgwarden_operator_failover_duration_seconds",
		Help:    "From choosing a new primary to it being a ready primary.",
		Buckets: prometheus.ExponentialBuckets(0.5, 2, 10),
	})
	switchoverDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "pgwarden_operator_switchover_duration_seconds",
		Help:    "From a switchover's start to the new primary being ready.",
		Buckets: prometheus.ExponentialBuckets(0.5, 2, 10),
	})
)

func init() {
	metrics.Registry.MustRegister(reconcilesTotal, reconcileDuration, failoversTotal, switchoversTotal,
		failoverDuration, switchoverDuration)
}

func observeReconcile(start time.Time, err error) {
	reconcileDuration.Observe(time.Since(start).Seconds())
	if err != nil {
		reconcilesTotal.WithLabelValues("error").Inc()
		return
	}
	reconcilesTotal.WithLabelValues("success").Inc()
}
