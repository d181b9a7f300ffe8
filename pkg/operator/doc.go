// Package operator is the pgwarden operator (`pgwarden operator`): a controller-runtime manager
// with one controller for PostgresCluster (pgwarden.io/v1).
//
// It owns, per cluster: the superuser and replication Secrets (generated when absent; values are
// never logged), a ServiceAccount with a least-privilege Role (roles.PolicyRules) and its
// RoleBinding, the parameters ConfigMap, one PVC and one Pod per instance (<cluster>-1..N), the
// Services <cluster>-rw, -ro, -r, two PodDisruptionBudgets, and the cluster's status and Events.
//
// It decides who should be primary and writes that decision as the Pod annotation
// pgwarden.io/role; the instances carry it out. It must never touch PostgreSQL, never write the
// observed-role label (pgwarden.io/instance-role, the instances' output), and never take the
// primary Lease. The one write it does on the Lease is breaking it (clearing the holder) when the
// kubelet reports that the old primary's container is not running, so the new primary need not
// wait for expiry.
//
// Decisions are persisted in status before they are acted on (TargetPrimary is written before
// the annotation that carries it out), so a new leader after an operator failover finishes what
// the old one started.
//
// Layout: command.go (NewCommand, flags, the manager, leader election, /healthz, /readyz),
// reconcile.go (the loop, Secrets, supporting objects, PVCs and Pods), roles.go (failover and
// switchover decisions), update.go (rolling update on a changed pod spec), candidate.go (ChooseCandidate, pure), resources.go (pure builders of
// the owned objects), status.go (observed status, phase, conditions), instancestatus.go
// (GET /status of the instances), names.go, metrics.go.
package operator
