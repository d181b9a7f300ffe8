package operator

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	pgv1 "github.com/pgwarden/pgwarden/api/v1"
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

// Per-cluster gauges, set at the end of every reconcile from the status it computed and removed
// when the cluster is deleted.
var (
	clusterLabelNames = []string{"namespace", "cluster"}
	clusterPhase      = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "pgwarden_operator_cluster_phase",
		Help: "1 for the cluster's current phase (Creating, Healthy, FailoverRequired, FailingOver, SwitchingOver, Degraded), 0 for the others.",
	}, append(clusterLabelNames, "phase"))
	clusterInstances = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "pgwarden_operator_cluster_instances",
		Help: "Instances the cluster should have (spec.instances).",
	}, clusterLabelNames)
	clusterInstancesReady = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "pgwarden_operator_cluster_instances_ready",
		Help: "Instance Pods that are ready.",
	}, clusterLabelNames)
	clusterInstancesFenced = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "pgwarden_operator_cluster_instances_fenced",
		Help: "Instances fenced on request (pgwarden.io/fenced=true, or still reporting fenced).",
	}, clusterLabelNames)
	clusterPrimaryReady = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "pgwarden_operator_cluster_primary_ready",
		Help: "1 when the established primary (status.currentPrimary) is labelled primary and ready, else 0.",
	}, clusterLabelNames)
)

var allPhases = []pgv1.Phase{pgv1.PhaseCreating, pgv1.PhaseHealthy, pgv1.PhaseFailoverRequired,
	pgv1.PhaseFailingOver, pgv1.PhaseSwitchingOver, pgv1.PhaseDegraded}

func init() {
	metrics.Registry.MustRegister(reconcilesTotal, reconcileDuration, failoversTotal, switchoversTotal,
		failoverDuration, switchoverDuration,
		clusterPhase, clusterInstances, clusterInstancesReady, clusterInstancesFenced, clusterPrimaryReady)
}

// observeCluster sets the per-cluster gauges from c's status.
func observeCluster(c *pgv1.PostgresCluster, primaryReady bool) {
	ns, name := c.Namespace, c.Name
	for _, p := range allPhases {
		v := 0.0
		if c.Status.Phase == p {
			v = 1
		}
		clusterPhase.WithLabelValues(ns, name, string(p)).Set(v)
	}
	clusterInstances.WithLabelValues(ns, name).Set(float64(c.Spec.Instances))
	clusterInstancesReady.WithLabelValues(ns, name).Set(float64(c.Status.ReadyInstances))
	fenced := 0
	for _, is := range c.Status.InstancesStatus {
		if is.Fenced {
			fenced++
		}
	}
	clusterInstancesFenced.WithLabelValues(ns, name).Set(float64(fenced))
	v := 0.0
	if primaryReady {
		v = 1
	}
	clusterPrimaryReady.WithLabelValues(ns, name).Set(v)
}

// forgetCluster removes the per-cluster gauges of a deleted cluster.
func forgetCluster(namespace, name string) {
	l := prometheus.Labels{"namespace": namespace, "cluster": name}
	clusterPhase.DeletePartialMatch(l)
	clusterInstances.DeletePartialMatch(l)
	clusterInstancesReady.DeletePartialMatch(l)
	clusterInstancesFenced.DeletePartialMatch(l)
	clusterPrimaryReady.DeletePartialMatch(l)
}

func observeReconcile(start time.Time, err error) {
	reconcileDuration.Observe(time.Since(start).Seconds())
	if err != nil {
		reconcilesTotal.WithLabelValues("error").Inc()
		return
	}
	reconcilesTotal.WithLabelValues("success").Inc()
}
