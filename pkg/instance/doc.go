// Package instance assembles `pgwarden instance run`: it validates the input,
// bootstraps the data directory, writes the configuration, and starts the
// long-lived parts — the postmaster's supervisor (lifecycle), the prober
// (probes), the parameters watcher, the status and metrics servers and, in
// Kubernetes mode, the own Pod's watcher and the role controller — then stops
// them in order: the supervisor first, the HTTP servers last.
//
// Signals become a cancelled context in one place (signals.go). Every input is
// checked before anything is written, so bad input exits with
// lifecycle.ExitCouldNotStart and leaves PGDATA as it was.
//
// It must not signal postgres itself (lifecycle does) nor speak the wire
// protocol for probes (probes does), nor read or write Kubernetes objects other
// than through package roles (and the Lease holder's Pod IP, read with the same
// name-scoped list the Pod watcher uses).
//
// # Kubernetes mode (controller.go)
//
// With --pod-name, --namespace and --cluster the supervisor starts held and the
// role controller — one goroutine, the only one that takes role decisions —
// prepares PGDATA and starts postgres through the supervisor's commands
// (Start, Stop, Fence, Reload). Its phases (typed, under one mutex; the Lease's
// fencing callback is the only other writer, and only ever sets fenced; every
// step re-checks the phase after each blocking call):
//
//	starting ──pod seen──▶ rejoining
//	rejoining ──holder elsewhere: clone / follow / rewind / re-clone, start standby──▶ replica
//	rejoining ──no holder, empty PGDATA, desired primary, no Lease yet: take it, initdb──▶ primary
//	rejoining ──no holder, standby data: start without upstream──▶ replica
//	rejoining ──former primary's data whose claim still stands (the Lease names it, or it
//	            released it last with its final LSN) and desired primary: take it──▶ primary
//	replica ──desired primary──▶ promoting ──Lease, final LSN, replay, pg_promote──▶ primary
//	promoting ──desired no longer primary (Lease handed on with the same final LSN)──▶ replica
//	primary ──desired replica: unlabel, checkpoint, fast stop, release with final LSN──▶ demoting ──▶ rejoining
//	primary | promoting | demoting ──Lease lost (Hold's callback: SIGQUIT at once)──▶ fenced
//	fenced ──like rejoining──▶ replica | primary
//
// Triggers: the Pod watcher (desired role), the Lease (read every retry period
// in steady state, every 50 ms for 20 s after a transition began, and the
// fencing callback), and the supervisor (Start reports when postgres answers).
//
// Decisions worth knowing:
//   - A desired role of none (missing or invalid annotation) changes nothing.
//   - An empty PGDATA is initialised only when no Lease exists yet (a new
//     cluster) or it names this instance; otherwise it waits for a holder and
//     clones from it, as the replication role, from the holder's pod address.
//   - A former primary's data (no standby.signal) never starts as a replica
//     without an upstream, since its WAL may have diverged: it waits for a holder,
//     then follows it as it is (NeedsRewind false), or is rewound (pg_rewind,
//     only once the holder has promoted: pg_rewind needs a source out of
//     recovery), or re-cloned when rewinding fails or the systems differ.
//   - After a fence the instance comes back as a replica of the live holder as
//     soon as it can read the Lease, whatever its desired role (a replica is
//     always safe); if the Lease still names it (nobody took it: the API server
//     was away) and it is still desired primary, it re-takes it and restarts as
//     primary with crash recovery — safe, because nobody else held the Lease.
//   - Promotion waits until the standby has received the old primary's final
//     LSN (the handoff on the Lease) — never promote before — then for replay.
//   - Readiness: a primary is ready only while it holds the Lease; a replica
//     (also while it waits to promote) when it answers queries, streaming or
//     not; nothing else is ready.
//   - On SIGTERM a primary unlabels itself, keeps renewing (or fences) while
//     postgres shuts down, then releases the Lease with its final LSN.
package instance
