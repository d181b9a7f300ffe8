package main

import (
	"context"
	"fmt"
)

// pgwarden's side of the benchmark is not written yet: its Kubernetes test bed
// is being finished. Replace this file with a System whose Start brings up a
// 3-instance cluster on the node test bed (e2e/testbed, `make testbed-up`,
// `make testbed-images`) and whose Cluster implements:
//
//   - ProbeDSN: the cluster's -rw Service, with connect_timeout=1;
//   - ServerAddr: "<pod IP>:5432";
//   - Primary: the holder of the cluster's Lease;
//   - Streaming: pg_stat_replication on the primary (streamingOn helps);
//   - Switchover: kubectl annotate pod <candidate> pgwarden.io/role=primary --overwrite;
//   - Kill: SIGKILL to the pod's instance manager and postmaster (host PIDs,
//     found through the container's cgroup), keeping the container from being
//     restarted until Restart;
//   - ManagerPIDs: the instance manager's host PID (not the operator's: it is
//     shared by every cluster and is reported separately if at all).
func init() { register("pgwarden", func(o Options) System { return pgwardenSystem{} }) }

type pgwardenSystem struct{}

func (pgwardenSystem) Name() string { return "pgwarden" }

func (pgwardenSystem) Start(context.Context) (Cluster, error) {
	return nil, fmt.Errorf("pgwarden: %w (its Kubernetes side is still being finished)", ErrNotPlugged)
}
