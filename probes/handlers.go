package probes

import (
	"net/http"
)

// probe is one of the three Kubernetes probes.
type probe int

const (
	probeStartup probe = iota
	probeLiveness
	probeReadiness
)

func (pr probe) String() string {
	switch pr {
	case probeStartup:
		return "startup"
	case probeLiveness:
		return "liveness"
	default:
		return "readiness"
	}
}

// Paths the probes are served on (DESIGN.md: port 8000).
const (
	StartupPath   = "/startupz"
	LivenessPath  = "/healthz"
	ReadinessPath = "/readyz"
)

// Handler serves StartupPath, LivenessPath and ReadinessPath from the cached
// state: 200 "ok" when the probe passes, 503 and the reason otherwise. It never
// waits for PostgreSQL. Other paths get 404.
func (p *Prober) Handler() http.Handler {
	mux := http.NewServeMux()
	p.Register(mux)
	return mux
}

// Register adds the three probe handlers to mux.
func (p *Prober) Register(mux *http.ServeMux) {
	mux.Handle(StartupPath, p.probeHandler(probeStartup))
	mux.Handle(LivenessPath, p.probeHandler(probeLiveness))
	mux.Handle(ReadinessPath, p.probeHandler(probeReadiness))
}

func (p *Prober) probeHandler(pr probe) http.Handler {
	success := p.probeTotal.WithLabelValues(pr.String(), "success")
	failure := p.probeTotal.WithLabelValues(pr.String(), "failure")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		err := p.evaluate(pr)
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		if err != nil {
			failure.Inc()
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte(pr.String() + " probe fails: " + err.Error() + "\n"))
			return
		}
		success.Inc()
		_, _ = w.Write([]byte("ok\n"))
	})
}

// evaluate returns nil when the probe passes, else why it fails.
func (p *Prober) evaluate(pr probe) error {
	p.mu.Lock()
	st := p.st
	p.mu.Unlock()
	if err := p.staleErr(st); err != nil {
		return err
	}
	switch pr {
	case probeStartup:
		if !st.started && p.livenessExempt() == "" {
			return errNotStarted
		}
	case probeLiveness:
		if !st.verdict.Answered() && p.livenessExempt() == "" {
			return errNoResponse
		}
	case probeReadiness:
		return p.readyErr(st)
	}
	return nil
}

type probeError string

func (e probeError) Error() string { return string(e) }

const (
	errNotStarted = probeError("postgres has not answered since it was started")
	errNoResponse = probeError("postgres does not respond")
)
