// Package statusapi is the JSON contract of an instance manager's GET /status
// (DESIGN.md, "Command-line contract"): the instance serves it, the operator
// chooses failover candidates from it, kubectl-pgwarden shows it. It has no
// dependencies so that every reader can import it cheaply.
package statusapi

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Port is the instance manager's probes and status port (--status-addr :8000).
const Port = 8000

// Path is where the status is served.
const Path = "/status"

// Status is the JSON of GET /status.
type Status struct {
	// Role is what the server is: "primary", "replica", or "" before the first
	// successful check.
	Role     string `json:"role"`
	Timeline uint32 `json:"timeline,omitempty"`
	// CurrentLSN is set on a primary; ReceivedLSN and ReplayLSN on a replica.
	CurrentLSN     string `json:"currentLSN,omitempty"`
	ReceivedLSN    string `json:"receivedLSN,omitempty"`
	ReplayLSN      string `json:"replayLSN,omitempty"`
	PostmasterPID  int    `json:"postmasterPID"`
	Ready          bool   `json:"ready"`
	NotReady       string `json:"notReady,omitempty"`
	LeaseHolder    string `json:"leaseHolder"`
	PendingRestart bool   `json:"pendingRestart"`
	// Mode is "standalone" (no Kubernetes) or "kubernetes".
	Mode string `json:"mode"`
	// Phase is the role controller's state (Kubernetes mode): starting,
	// rejoining, replica, promoting, primary, demoting, fenced (on request:
	// Fenced true; or after losing the primary Lease).
	Phase string `json:"phase,omitempty"`
	// DesiredRole is the Pod's last valid pgwarden.io/role (Kubernetes mode).
	DesiredRole string `json:"desiredRole,omitempty"`
	// Upstream is the address a replica streams from (Kubernetes mode).
	Upstream string `json:"upstream,omitempty"`
	// ReplayLagSeconds is how far a replica's replay is behind in time, as of
	// MeasuredAt: 0 when it has replayed everything it received, else now()
	// minus the commit time of the last transaction it replayed
	// (pg_last_xact_replay_timestamp(), on the primary's clock; never below
	// 0). Absent on a primary, on a replica that never streamed, while no
	// transaction was replayed since postgres started, and while postgres is
	// stopped. After a long idle period on the primary, the first
	// transaction to arrive shows the idle time until it is replayed.
	ReplayLagSeconds *float64 `json:"replayLagSeconds,omitempty"`
	// Fenced is true while postgres is stopped, and kept stopped, because the
	// Pod carries pgwarden.io/fenced=true (Kubernetes mode). A primary asked
	// to fence keeps running (Fenced false) until it has been switched over.
	Fenced bool `json:"fenced,omitempty"`
	// FencedReason says why the instance is fenced (on request, or because
	// the primary Lease was lost: phase "fenced" without Fenced), or why a
	// requested fence waits.
	FencedReason string `json:"fencedReason,omitempty"`
	// MeasuredAt is when the server state above was read.
	MeasuredAt *time.Time `json:"measuredAt,omitempty"`
}

// ParseLSN parses the text form of a WAL position as PostgreSQL prints it and
// /status carries it: two hexadecimal 32-bit halves, "16/B374D848".
func ParseLSN(s string) (uint64, error) {
	hi, lo, ok := strings.Cut(s, "/")
	if !ok {
		return 0, fmt.Errorf("cannot parse LSN %q: no slash", s)
	}
	h, err := strconv.ParseUint(hi, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("cannot parse LSN %q: %w", s, err)
	}
	l, err := strconv.ParseUint(lo, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("cannot parse LSN %q: %w", s, err)
	}
	return h<<32 | l, nil
}
