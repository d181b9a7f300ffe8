// Package reaper owns every wait for child processes of the instance manager.
//
// The manager is PID 1 of its container, so orphans (for example the grandchildren
// of archive_command) are re-parented to it and must be reaped, or they stay zombies
// forever. Reaping is done with wait4(-1), which would also steal the exit status of
// the children the manager started itself (exec.Cmd.Wait then fails with "no child
// processes"). This package resolves that conflict by owning all waiting:
//
//   - Start installs the SIGCHLD handler and, when the process is not PID 1,
//     registers it as a child subreaper so it behaves the same in tests.
//   - StartCommand starts a command under the reaper's lock and registers its PID
//     before the reaper can see it exit; WaitCommand then receives its exit status.
//   - Every other child is an orphan: it is reaped and counted.
//
// Other packages must never call exec.Cmd.Run, Output or Wait directly while the
// reaper is running: they use Run, CombinedOutput or StartCommand/WaitCommand.
// When the reaper is not started (unit tests, tools) those functions fall back to
// plain os/exec behaviour.
package reaper
