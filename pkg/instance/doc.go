// Package instance assembles `pgwarden instance run`: it validates the input,
// bootstraps the data directory, writes the configuration, and starts the
// long-lived parts — the postmaster's supervisor (lifecycle), the prober
// (probes), the parameters watcher, the status and metrics servers — then
// stops them in order: the supervisor first, the HTTP servers last.
//
// Signals become a cancelled context in one place (signals.go). Every input is
// checked before anything is written, so bad input exits with
// lifecycle.ExitCouldNotStart and leaves PGDATA as it was.
//
// It must not signal postgres itself (lifecycle does) nor speak the wire
// protocol for probes (probes does).
package instance
