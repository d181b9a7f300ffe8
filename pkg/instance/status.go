package instance

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgwarden/pgwarden/lifecycle"
	"github.com/pgwarden/pgwarden/probes"
)

// Status is the JSON of GET /status. The field names are a contract (DESIGN.md):
// the operator and kubectl-pgwarden read them.
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
	// replica, promoting, primary, demoting, fenced, rejoining.
	Phase string `json:"phase,omitempty"`
	// DesiredRole is the Pod's last valid pgwarden.io/role (Kubernetes mode).
	DesiredRole string `json:"desiredRole,omitempty"`
	// Upstream is the address a replica streams from (Kubernetes mode).
	Upstream string `json:"upstream,omitempty"`
	// MeasuredAt is when the server state above was read.
	MeasuredAt *time.Time `json:"measuredAt,omitempty"`
}

func newProber(socket string, connConfig func(context.Context) (*pgx.ConnConfig, error), reg prometheus.Registerer, log *slog.Logger) *probes.Prober {
	p := probes.New(probes.Config{Network: "unix", Address: socket, ConnConfig: connConfig, Logger: log})
	reg.MustRegister(p.Collectors()...)
	return p
}

func statusOf(s probes.Snapshot, pid int) Status {
	st := Status{
		PostmasterPID:  pid,
		Ready:          s.Ready,
		PendingRestart: s.PendingRestart,
		Timeline:       s.Timeline,
		Mode:           "standalone",
	}
	if s.NotReady != nil {
		st.NotReady = s.NotReady.Error()
	}
	if !s.MeasuredAt.IsZero() {
		t := s.MeasuredAt
		st.MeasuredAt = &t
		if s.InRecovery {
			st.Role = "replica"
			if s.ReceivedLSN != 0 {
				st.ReceivedLSN = s.ReceivedLSN.String()
			}
			st.ReplayLSN = s.ReplayLSN.String()
		} else {
			st.Role = "primary"
			st.CurrentLSN = s.CurrentLSN.String()
		}
	}
	return st
}

func serveStatus(w http.ResponseWriter, p *probes.Prober, sup *lifecycle.Supervisor, ctrl *controller) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	st := statusOf(p.Snapshot(), sup.PID())
	if ctrl != nil {
		ctrl.fillStatus(&st)
	}
	_ = json.NewEncoder(w).Encode(st)
}
