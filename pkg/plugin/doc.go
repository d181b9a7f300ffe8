// Package plugin is the kubectl plugin kubectl-pgwarden.
//
//   - status <cluster>: every instance (observed and desired role, readiness, timeline, LSNs,
//     replication lag), the primary Lease and its age, the cluster's phase and recent Events.
//   - promote <cluster> <pod>: writes pgwarden.io/role=primary on the Pod (as a user could) and
//     follows the switchover until the new primary accepts writes and the old one streams again.
//
// Each instance's /status is read through the API server's pod proxy (StatusFetcher; tests serve
// it from loopback HTTP servers instead). An instance that does not answer is shown as unknown.
//
// Layout: command.go (cobra, flags, clients), status.go (collecting a Report), render.go (table,
// JSON, YAML, LSN arithmetic), promote.go (the switchover follower), fetch.go (StatusFetcher).
package plugin
