package harness

import (
	"slices"
	"testing"
)

func TestMetricNames(t *testing.T) {
	for expr, want := range map[string][]string{
		`sum by (namespace, cluster) (pgwarden_instance_role{role="primary"}) == 0`:                                    {"pgwarden_instance_role"},
		`max_over_time(pgwarden_instance_replication_lag_seconds{cluster=~"$cluster"}[5m]) > 30`:                       {"pgwarden_instance_replication_lag_seconds"},
		`increase(pgwarden_operator_failovers_total[15m]) > 0 and on() up{job="x"} == 1`:                               {"pgwarden_operator_failovers_total", "up"},
		`histogram_quantile(0.99, sum by (le) (rate(pgwarden_probe_check_duration_seconds_bucket[$__rate_interval])))`: {"pgwarden_probe_check_duration_seconds_bucket"},
		`absent(up{job="pgwarden-operator"} == 1)`:                                                                     {"up"},
		`pgwarden_instance_connections / pgwarden_instance_max_connections > 0.9`:                                      {"pgwarden_instance_connections", "pgwarden_instance_max_connections"},
		`label_replace(pgwarden_operator_cluster_phase, "x", "$1", "phase", "(.*)") offset 5m`:                         {"pgwarden_operator_cluster_phase"},
		`count without (pod) (pgwarden_instance_fenced == bool 1)`:                                                     {"pgwarden_instance_fenced"},
	} {
		if got := MetricNames(expr); !slices.Equal(got, want) {
			t.Errorf("MetricNames(%s) = %v, want %v", expr, got, want)
		}
	}
}
