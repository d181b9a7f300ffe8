// Package probes answers the Kubernetes probes of a Postgres container and
// collects what /status reports, from state it caches in the background.
//
// It owns:
//   - Ping, a native pg_isready: one connection, one StartupMessage, the first
//     reply judged exactly as libpq's PQping judges it (Accepting, Rejecting,
//     NoResponse). No process is forked.
//   - Prober, which every interval pings the postmaster and, when it accepts
//     connections, runs one status query on a kept-open superuser connection,
//     each check bounded by a timeout. Its handlers (/startupz, /healthz,
//     /readyz) and Snapshot read only the cached result, so they never wait for
//     PostgreSQL, and they fail once that result is older than a staleness bound.
//   - The metrics of those probes and checks (Collectors).
//
// Probe semantics (DESIGN.md, "Probes"):
//   - startup passes once the postmaster answered at all (Accepting or
//     Rejecting), and stays passed until ResetStartup, which the owner of the
//     postmaster calls when it starts a new one;
//   - liveness passes while the ping is Accepting or Rejecting;
//   - readiness passes while the status query succeeds and the optional gate set
//     with SetReadinessGate returns nil (a primary is ready only while it holds
//     the lease).
//
// It must not start, stop, signal or configure PostgreSQL, nor fork any process:
// it only observes. The owner of the postmaster tells it about restarts
// (ResetStartup); the prober drops its own session whenever the server stops
// accepting new connections, so that it never holds up a smart shutdown for
// longer than one interval. It never logs or returns the superuser password.
package probes
