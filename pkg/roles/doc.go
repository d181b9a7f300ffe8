// Package roles is the Kubernetes side of an instance's role: it reads the desired role from the
// instance's own Pod, writes the observed role label on it, holds the cluster's primary Lease
// (and fences when it cannot), and writes Events on the Pod.
//
// It owns no Postgres state and never starts, stops, promotes or demotes anything: the instance
// manager does, driven by what this package reports. It must not read or write any object other
// than the own Pod, the cluster's primary Lease and Events.
//
// # Desired role (PodWatcher)
//
// PodWatcher lists and watches exactly one Pod (fieldSelector metadata.name=<pod>), relisting
// after every watch (about once a minute, and after errors with backoff capped at 5 s). It reports
// the annotation pgwarden.io/role, the Pod's IP and whether it is being deleted or is gone.
//
// Only "primary" and "replica" are roles. Any other value ("master", "", "Primary") changes
// nothing: the last valid desired role stays in force, and with none yet Desired.Role is RoleNone,
// which the instance must treat as "no change" — never a reason to promote, and not a reason to
// demote either (a typo in an annotation must not take a primary down; the safe direction for a
// missing decision is to keep the status quo, and promotion always needs an explicit "primary").
// An invalid value is logged and reported as a Warning Event (reason InvalidRole) once each time
// the annotation takes it — not again on later updates or relists of a Pod that still carries
// it; a value that comes back after a valid one is a new mistake and is reported again. A
// missing annotation is not an error: it means no desired role yet.
//
// SetObservedRole writes or removes the label pgwarden.io/instance-role with one JSON merge patch.
//
// # Primary Lease (PrimaryLease)
//
// The Lease <cluster>-primary (coordination.k8s.io/v1) names the primary in holderIdentity (a pod
// name). Timing defaults: lease 15 s, renew deadline 10 s, retry 2 s.
//
// Expiry is never decided from timestamps written by other nodes. A contender records its own
// monotonic time when it first sees a holder's record (holder, renewTime, acquireTime, duration,
// transitions); the Lease counts as expired for it once it has seen that record unchanged for a
// full lease duration (the longer of its own and the record's). The holder measures its renew
// deadline from the instant it SENT its last successful write — no contender can see that write
// earlier — so it fences at least LeaseDuration - RenewDeadline (5 s by default) before any
// contender can take the Lease by expiry, whatever the clocks and network delays.
//
// Every write is an update carrying the resourceVersion of the read it was decided on, or a
// create; so of two contenders at most one succeeds. leaseTransitions is incremented whenever
// the holder changes (including from "no holder" after a release).
//
// Hold fences (calls the callback, then returns a *LostError) when:
//   - no renew has succeeded within RenewDeadline of the last successful one (own timer; each
//     attempt is bounded by RenewTimeout, RenewDeadline/3 by default, and runs in its own
//     goroutine, so a hung API server cannot delay the fence);
//   - a renew finds another holder, or no holder (someone broke or released the Lease);
//   - the Lease was deleted and someone else re-created it first.
//
// A Lease deleted by hand while held, and not re-created by anyone, is re-created by the holder
// with itself as holder: the claim was never given up, and the holder is still the primary; an
// accidental `kubectl delete lease` must not cause a failover. To keep that safe against a
// contender that might create the Lease in between, a contender that has seen the Lease held by
// another does not create a missing Lease before that holder's claim would have expired; only a
// contender that has never seen a holder (a new cluster) creates it at once. A contender that
// wins anyway (it started after the deletion) makes the old holder fence at its next renew.
//
// Release clears holderIdentity (only when this instance holds it) so the successor does not wait
// for expiry, and can record the old primary's FinalLSN (annotation pgwarden.io/final-lsn) in the
// same write. The next acquisition removes that annotation and hands it to the new holder
// (Handoff). The holder also writes its pod IP (annotation pgwarden.io/holder-ip) for replicas.
//
// # RBAC
//
// The instance needs exactly these rules in its namespace (PolicyRules returns them for the
// operator's per-cluster Role; pods are the cluster's instance Pod names):
//
//	apiGroups: [""]                    resources: [pods]   verbs: [list, watch, patch]  resourceNames: [<instance pods>]
//	apiGroups: [coordination.k8s.io]   resources: [leases] verbs: [get, update]         resourceNames: [<cluster>-primary]
//	apiGroups: [coordination.k8s.io]   resources: [leases] verbs: [create]
//	apiGroups: [""]                    resources: [events] verbs: [create]
//
// list and watch are narrowed by resourceNames because the requests carry
// fieldSelector=metadata.name=<pod>; create cannot be narrowed (RBAC sees no name on a create).
// The tests run everything as a ServiceAccount bound to exactly these rules.
package roles
