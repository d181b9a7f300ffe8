package instance

import (
	"github.com/pgwarden/pgwarden/pkg/statusapi"

	"context"
	"encoding/json"
	"log/slog"
	"net/http"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgwarden/pgwarden/lifecycle"
	"github.com/pgwarden/pgwarden/probes"
)

// Status is the JSON of GET /status: the contract in package statusapi.
type Status = statusapi.Status

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
			// The lag is served only from a check that just succeeded
			// with postgres running, never carried over from an older one.
			if s.ReplayLagSeconds != nil && pid != 0 && !s.Stale && s.MeasuredAt.Equal(s.CheckedAt) {
				lag := *s.ReplayLagSeconds
				st.ReplayLagSeconds = &lag
			}
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
