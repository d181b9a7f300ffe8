// Package lifecycle owns the postmaster process for the whole life of the pod.
//
// A Supervisor is the only code that starts, signals or stops postgres: one
// goroutine (Run) holds the process and everything else asks it through
// methods that send typed commands. It
//
//   - starts postgres as a direct child in its own process group, through the
//     reaper, with an environment it builds itself (nothing inherited, so no
//     secret of the manager's environment reaches postgres);
//   - gives the postmaster StartDelay to answer at all (accepting or rejecting
//     connections); crash recovery may take longer to finish, that is fine;
//   - restarts a postmaster that dies on its own, with capped exponential
//     backoff, and gives up after MaxFailures consecutive failed starts;
//   - on shutdown spends StopDelay in steps: a primary checkpoints, then smart
//     shutdown until half of StopDelay, fast until shortly before the end,
//     immediate, and finally SIGKILL to the postmaster's process group and to
//     every remaining descendant. It returns only once the postmaster is gone;
//   - on command (Kubernetes mode: the role controller) stops the postmaster
//     and keeps it stopped (Stop, with a first step and a budget: a demotion's
//     fast shutdown), starts it again (Start, or the first time with
//     StartHeld), and fences (Fence: SIGQUIT from the caller's goroutine at
//     once, without waiting for the supervising goroutine, then SIGKILL to
//     what is left after a short grace; a Stop in progress escalates). A held
//     postmaster is never restarted behind the caller's back.
//
// It must not decide roles, talk to Kubernetes or serve HTTP.
package lifecycle
