// Package postgres knows how a PostgreSQL installation and data directory look,
// and prepares them for the instance manager.
//
// It owns:
//
//   - finding the server binaries and their major version (FindBin);
//   - the OS user that runs postgres when the manager runs as root (RunAsUser);
//   - inspecting a data directory without changing it (InspectDataDir), with
//     typed errors for a directory it must refuse;
//   - bootstrapping a primary with initdb (InitDB) so that the superuser password
//     never reaches a command line, a child's environment, a log or an error;
//   - the configuration files the manager keeps inside PGDATA (WriteConfig):
//     pgwarden.conf, pgwarden-user.conf, pg_hba.conf and the two include lines in
//     postgresql.conf, plus parsing and vetting the user's parameters
//     (ParseParameters, ReadParametersFile);
//   - the mechanics of roles: replication role, standby settings, Clone, Promote, ReadControlData, NeedsRewind, Rewind;
//   - small SQL helpers over pgx (ConnConfig, Checkpoint, PendingRestart, ...).
//
// It must not:
//
//   - supervise the postmaster: it never starts, signals or waits for postgres
//     itself. That belongs to the one goroutine that owns the postmaster;
//   - wait for a child process other than through package reaper (the manager
//     is PID 1 and the reaper owns all waiting): commands are run with
//     reaper.CombinedOutput or reaper.StartCommand/WaitCommand, never with
//     exec.Cmd.Run, Output or Wait;
//   - modify a data directory while inspecting it, or create anything before
//     the input it was given has been validated;
//   - put a password into an argument, an environment variable, a connection
//     string, a log record or an error message.
//
// Root and the run-as user: PostgreSQL refuses to run as root. When the manager
// runs as root, RunAsUser returns the user postgres runs as, and every command
// and file this package creates for postgres carries that user's credentials.
// When the manager does not run as root, RunAsUser returns nil: postgres runs as
// the manager's own user and files belong to it. Every *User helper accepts nil.
package postgres
