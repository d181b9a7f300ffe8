package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pgwarden/pgwarden/pkg/reaper"
)

// Exit codes of `pgwarden instance run`. Documented in the README.
const (
	ExitClean         = 0 // smart or fast shutdown completed
	ExitError         = 1 // an unexpected internal error
	ExitUsage         = 2 // invalid flags or arguments
	ExitCouldNotStart = 3 // bad input, or postgres could not be started or kept running
	ExitImmediate     = 4 // shutdown needed an immediate shutdown (crash recovery at next start)
	ExitKilled        = 5 // shutdown needed SIGKILL
)

// Step is the shutdown step that ended a stop of the postmaster.
type Step int

const (
	StepNone Step = iota // the postmaster was not running
	StepSmart
	StepFast
	StepImmediate
	StepKill
)

func (s Step) String() string {
	switch s {
	case StepSmart:
		return "smart"
	case StepFast:
		return "fast"
	case StepImmediate:
		return "immediate"
	case StepKill:
		return "kill"
	default:
		return "none"
	}
}

// ExitCode is the process exit code that reports a shutdown ended by s.
func (s Step) ExitCode() int {
	switch s {
	case StepImmediate:
		return ExitImmediate
	case StepKill:
		return ExitKilled
	default:
		return ExitClean
	}
}

// signal is what PostgreSQL understands as this shutdown mode.
func (s Step) signal() syscall.Signal {
	switch s {
	case StepSmart:
		return unix.SIGTERM
	case StepFast:
		return unix.SIGINT
	case StepImmediate:
		return unix.SIGQUIT
	default:
		return unix.SIGKILL
	}
}

// Config is what a Supervisor needs. Zero durations take the defaults below.
type Config struct {
	Postgres   string   // path of the postgres binary
	DataDir    string   // PGDATA
	Env        []string // the complete environment of postgres
	Credential *syscall.Credential
	// Output receives postgres' stdout and stderr. It should be the write end
	// of a pipe (an *os.File), so os/exec needs no copying goroutine.
	Output *os.File

	StartDelay time.Duration // budget for the postmaster to answer at all
	StopDelay  time.Duration // budget for the whole shutdown

	// Answers tells whether the postmaster answers at all: pg_isready says
	// "accepting" or "rejecting".
	Answers func(ctx context.Context) bool
	// Checkpoint runs CHECKPOINT before a shutdown of a primary. Nil skips it.
	Checkpoint func(ctx context.Context) error
	// Started is called, from the supervising goroutine, each time a new
	// postmaster answers for the first time. It must not block.
	Started func(pid int)
	// Stopping is called before the supervisor stops the postmaster (after the
	// checkpoint, before the first signal), with a context bounding it: the
	// owner closes its own sessions there so they do not hold up a smart
	// shutdown.
	Stopping func(ctx context.Context)

	// MaxFailures is how many consecutive starts may fail (exit before running
	// for StableAfter) before the supervisor gives up. Default 10.
	MaxFailures int
	// StableAfter is how long a postmaster must run for its start to count as good. Default 60 s.
	StableAfter time.Duration
	// MaxBackoff caps the wait before a restart. Default 30 s; the first wait is 1 s.
	MaxBackoff time.Duration

	// StartHeld makes Run wait for a Start before it starts the first
	// postmaster (Kubernetes mode: the role controller prepares the data
	// directory first). Without it Run starts postgres at once.
	StartHeld bool

	Logger  *slog.Logger
	Metrics *Metrics
}

// ErrCouldNotStart marks a postmaster that could not be started or kept running.
type ErrCouldNotStart struct{ Reason string }

func (e *ErrCouldNotStart) Error() string { return "cannot start postgres: " + e.Reason }

// Supervisor owns one postmaster. Create it with New and call Run once.
type Supervisor struct {
	cfg  Config
	log  *slog.Logger
	cmds chan command

	// owned by the Run goroutine
	proc         *exec.Cmd
	done         chan struct{} // closed when proc has exited; status is then set
	status       reaper.Status
	startAt      time.Time
	answered     bool // the current postmaster has answered a ping
	everAnswered bool // some postmaster has answered since Run began

	pid atomic.Int64 // the running postmaster's PID, 0 when none; read by any goroutine

	// held: the postmaster is to stay stopped until a Start. Set by Stop and
	// Fence (from any goroutine), cleared by Start; Run checks it before every
	// start and restart, so a fenced postmaster is never restarted behind the
	// role controller's back.
	held atomic.Bool
	// fence wakes the Run goroutine after Fence; one pending wake-up is enough.
	fence chan struct{}
	// hurry ends the smart phase of a running shutdown early (Hurry).
	hurry chan struct{}
	// lastStop is the step that ended the last commanded stop; owned by Run.
	lastStop Step
}

type command interface{ isCommand() }

type reloadCmd struct{ done chan error }

func (reloadCmd) isCommand() {}

// stopCmd stops the postmaster and keeps it stopped until a startCmd.
type stopCmd struct {
	first  Step
	budget time.Duration
	done   chan Step
}

func (stopCmd) isCommand() {}

// startCmd starts a postmaster after a stopCmd or Fence (or with StartHeld).
type startCmd struct{ done chan error }

func (startCmd) isCommand() {}

// ErrHeld: the postmaster is stopped on request (Stop or Fence) and stays so until Start.
var ErrHeld = errors.New("postgres is stopped on request")

// New returns a Supervisor for cfg.
func New(cfg Config) *Supervisor {
	if cfg.StartDelay <= 0 {
		cfg.StartDelay = 30 * time.Second
	}
	if cfg.StopDelay <= 0 {
		cfg.StopDelay = 30 * time.Second
	}
	if cfg.MaxFailures <= 0 {
		cfg.MaxFailures = 10
	}
	if cfg.StableAfter <= 0 {
		cfg.StableAfter = time.Minute
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics(nil)
	}
	s := &Supervisor{cfg: cfg, log: cfg.Logger, cmds: make(chan command), fence: make(chan struct{}, 1), hurry: make(chan struct{}, 1)}
	s.held.Store(cfg.StartHeld)
	return s
}

// Stop stops the postmaster, starting with step first (StepSmart, StepFast or
// StepImmediate) and escalating within budget, and keeps it stopped until
// Start: the supervisor does not restart it. It returns the step that ended
// the stop (StepNone if postgres was not running). A Fence during the stop
// escalates it to immediate at once. ctx bounds only the wait for the
// supervisor to take the command; once taken, the stop runs to its end.
func (s *Supervisor) Stop(ctx context.Context, first Step, budget time.Duration) (Step, error) {
	c := stopCmd{first: first, budget: budget, done: make(chan Step, 1)}
	select {
	case s.cmds <- c:
	case <-ctx.Done():
		return StepNone, ctx.Err()
	}
	return <-c.done, nil
}

// Start starts postgres again after Stop or Fence (or the first time, with
// StartHeld), with whatever configuration is in the data directory now, and
// waits until it answers. An error says the start failed; the supervisor then
// restarts it with backoff as after any failed start.
func (s *Supervisor) Start(ctx context.Context) error {
	c := startCmd{done: make(chan error, 1)}
	return s.request(ctx, c, c.done)
}

// request hands c to the supervising goroutine and waits for its answer on
// done; both steps end early when ctx does.
func (s *Supervisor) request(ctx context.Context, c command, done <-chan error) error {
	select {
	case s.cmds <- c:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Fence stops accepting writes at once: it sends SIGQUIT (immediate shutdown)
// to the postmaster from the caller's goroutine, without waiting for the
// supervising goroutine, and marks the postmaster held so that nothing
// restarts it until Start. The supervising goroutine then finishes the stop
// (SIGKILL to whatever is left after a short grace). It never blocks: call it
// from the primary Lease's fencing callback.
func (s *Supervisor) Fence() {
	s.held.Store(true)
	if pid := s.pid.Load(); pid > 0 {
		_ = unix.Kill(int(pid), unix.SIGQUIT)
	}
	select {
	case s.fence <- struct{}{}:
	default:
	}
}

// Hurry ends the smart phase of the shutdown now under way, or of the next one
// if it has not begun: fast shutdown follows at once, the rest of the schedule
// is unchanged. Call it only once shutdown was asked for (a stale call would
// shorten a later stop). It never blocks. The instance manager hurries a
// primary's shutdown once another instance was chosen to take over: waiting
// for sessions to end by themselves then only prolongs the write outage.
func (s *Supervisor) Hurry() {
	select {
	case s.hurry <- struct{}{}:
	default:
	}
}

// fenceBudget bounds the stop after a Fence: SIGQUIT at once, SIGKILL to the
// process group near the end. Immediate shutdown takes milliseconds; the rest
// is for a postmaster that is stuck.
const fenceBudget = 3 * time.Second

// Reload asks the postmaster to re-read its configuration (SIGHUP).
func (s *Supervisor) Reload(ctx context.Context) error {
	c := reloadCmd{done: make(chan error, 1)}
	return s.request(ctx, c, c.done)
}

// PID returns the postmaster's PID, or 0 when it is not running.
func (s *Supervisor) PID() int { return int(s.pid.Load()) }

// Run starts the postmaster and supervises it until ctx is cancelled, then
// shuts it down within StopDelay. It returns the process exit code to use and,
// when something went wrong, the error that says what. It never returns while
// the postmaster it started is alive.
func (s *Supervisor) Run(ctx context.Context) (int, error) {
	failures := 0
	backoff := time.Second
	var starting *startCmd // a Start waiting for the postmaster to answer
	reply := func(err error) {
		if starting != nil {
			starting.done <- err
			starting = nil
		}
	}
	defer reply(ErrHeld)
	for {
		if s.held.Load() {
			c, ok := s.waitHeld(ctx)
			if !ok {
				return s.lastStop.ExitCode(), nil
			}
			starting = c
			failures, backoff = 0, time.Second
		}
		err := s.start()
		if err == nil {
			err = s.awaitAnswer(ctx)
		}
		if ctx.Err() != nil {
			reply(ctx.Err())
			return s.shutdown()
		}
		if errors.Is(err, ErrHeld) {
			reply(err)
			continue
		}
		reply(err)
		if err != nil {
			var cns *ErrCouldNotStart
			if errors.As(err, &cns) && !s.everAnswered {
				// The very first start failed: nothing was ever running,
				// so restarting would only hide bad input.
				s.stopNow()
				return ExitCouldNotStart, err
			}
			failures++
			s.log.Error("postgres failed to start", "error", err, "consecutive_failures", failures)
		} else {
			code, done, runErr := s.supervise(ctx)
			if done {
				return code, runErr
			}
			if s.held.Load() {
				continue // stopped on request: not a failure
			}
			if time.Since(s.startAt) >= s.cfg.StableAfter {
				failures, backoff = 0, time.Second
			} else {
				failures++
			}
		}
		s.stopNow() // make sure nothing of the old postmaster is left
		if s.held.Load() {
			continue
		}
		if failures >= s.cfg.MaxFailures {
			return ExitCouldNotStart, &ErrCouldNotStart{Reason: fmt.Sprintf("postgres failed %d times in a row; giving up", failures)}
		}
		s.log.Warn("restarting postgres after backoff", "backoff", backoff.String(), "consecutive_failures", failures)
		if !s.backoff(ctx, backoff) {
			if ctx.Err() != nil {
				return ExitClean, nil
			}
			continue // held meanwhile
		}
		backoff = min(2*backoff, s.cfg.MaxBackoff)
		s.cfg.Metrics.Restarts.Inc()
	}
}

// backoff waits d before a restart, serving commands; false if ctx ended or
// the postmaster was held (Stop or Fence) meanwhile.
func (s *Supervisor) backoff(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			return !s.held.Load()
		case <-ctx.Done():
			return false
		case <-s.fence:
			return false
		case c := <-s.cmds:
			if s.handle(c) {
				return false
			}
		}
	}
}

// waitHeld waits, with no postmaster running, for a Start; false when ctx ended.
func (s *Supervisor) waitHeld(ctx context.Context) (*startCmd, bool) {
	for {
		select {
		case <-ctx.Done():
			return nil, false
		case <-s.fence:
		case c := <-s.cmds:
			switch c := c.(type) {
			case startCmd:
				s.held.Store(false)
				s.log.Info("starting postgres on request")
				return &c, true
			case stopCmd:
				c.done <- StepNone
			case reloadCmd:
				c.done <- errors.New("cannot reload: postgres is not running")
			}
		}
	}
}

// start launches postgres as a direct child in its own process group.
func (s *Supervisor) start() error {
	cmd := exec.Command(s.cfg.Postgres, "-D", s.cfg.DataDir)
	cmd.Env = s.cfg.Env
	cmd.Dir = s.cfg.DataDir
	if s.cfg.Output != nil {
		cmd.Stdout, cmd.Stderr = s.cfg.Output, s.cfg.Output
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: s.cfg.Credential}
	if err := reaper.StartCommand(cmd); err != nil {
		return &ErrCouldNotStart{Reason: err.Error()}
	}
	s.cfg.Metrics.Starts.Inc()
	s.proc, s.startAt, s.answered = cmd, time.Now(), false
	done := make(chan struct{})
	s.done = done
	go func() {
		st, err := reaper.WaitCommand(cmd)
		if err != nil {
			st = reaper.Status{Code: -1}
		}
		s.status = st // published by closing done
		s.pid.Store(0)
		close(done)
	}()
	s.pid.Store(int64(cmd.Process.Pid))
	s.cfg.Metrics.Up.Set(1)
	s.log.Info("postgres started", "pid", cmd.Process.Pid)
	return nil
}

// The postmaster is pinged often right after it starts, because readiness
// (and so the whole pod) waits on it, then less and less often: every ping
// during crash recovery makes postgres log a FATAL "starting up" line.
const (
	firstPoll = 20 * time.Millisecond
	maxPoll   = time.Second
)

// awaitAnswer waits until the postmaster answers at all, within StartDelay.
func (s *Supervisor) awaitAnswer(ctx context.Context) error {
	deadline := time.NewTimer(s.cfg.StartDelay)
	defer deadline.Stop()
	poll := firstPoll
	for {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		ok := s.cfg.Answers(pctx)
		cancel()
		if ok {
			s.answered, s.everAnswered = true, true
			s.log.Info("postgres answers", "pid", s.proc.Process.Pid,
				"after", time.Since(s.startAt).Round(time.Millisecond).String())
			if s.cfg.Started != nil {
				s.cfg.Started(s.proc.Process.Pid)
			}
			return nil
		}
		select {
		case <-s.done:
			if s.held.Load() {
				s.fenceStop()
				return ErrHeld
			}
			return &ErrCouldNotStart{Reason: "postgres exited before it answered (" + s.status.String() + "); see its log above"}
		case <-deadline.C:
			return &ErrCouldNotStart{Reason: fmt.Sprintf("postgres did not answer within the start delay of %s", s.cfg.StartDelay)}
		case <-ctx.Done():
			return ctx.Err()
		case <-s.fence:
			if s.held.Load() { // else a stale wake-up from before the last Start
				s.fenceStop()
				return ErrHeld
			}
		case c := <-s.cmds:
			if s.handle(c) {
				return ErrHeld
			}
		case <-time.After(poll):
			poll = min(2*poll, maxPoll)
		}
	}
}

// supervise waits for the postmaster to exit or for ctx to end. done reports
// that Run should return code and err.
func (s *Supervisor) supervise(ctx context.Context) (code int, done bool, err error) {
	for {
		select {
		case <-s.fence:
			if s.held.Load() { // else a stale wake-up from before the last Start
				s.fenceStop()
				return 0, false, nil
			}
		case <-s.done:
			if s.held.Load() { // fenced: SIGQUIT came from Fence
				s.fenceStop()
				return 0, false, nil
			}
			s.cfg.Metrics.Up.Set(0)
			s.cfg.Metrics.UnexpectedExits.Inc()
			s.log.Error("postgres exited unexpectedly", "pid", s.proc.Process.Pid, "status", s.status.String(),
				"ran_for", time.Since(s.startAt).Round(time.Millisecond).String())
			return 0, false, nil
		case <-ctx.Done():
			code, err := s.shutdown()
			return code, true, err
		case c := <-s.cmds:
			if s.handle(c) {
				return 0, false, nil
			}
		}
	}
}

// fenceStop finishes a stop after Fence: the postmaster already has SIGQUIT.
func (s *Supervisor) fenceStop() {
	s.log.Warn("postgres fenced: immediate shutdown")
	s.lastStop = s.stopFrom(StepImmediate, fenceBudget)
	if s.lastStop == StepNone {
		s.lastStop = StepImmediate
	}
}

func (s *Supervisor) running() bool {
	if s.proc == nil {
		return false
	}
	select {
	case <-s.done:
		return false
	default:
		return true
	}
}

// handle serves a command while a postmaster runs (or is starting). It
// reports whether the postmaster was stopped on request and is now held.
func (s *Supervisor) handle(c command) bool {
	switch c := c.(type) {
	case reloadCmd:
		if !s.running() {
			c.done <- errors.New("cannot reload: postgres is not running")
			return false
		}
		c.done <- s.proc.Process.Signal(unix.SIGHUP)
	case startCmd:
		c.done <- nil // already running
	case stopCmd:
		s.held.Store(true)
		s.log.Info("stopping postgres on request", "first", c.first.String(), "budget", c.budget.String())
		step := s.stopFrom(c.first, c.budget)
		s.lastStop = step
		c.done <- step
		return true
	}
	return false
}

// phases splits a stop budget: smart until half, fast until 2r before the
// end, immediate until r before the end, then SIGKILL. r leaves the last step
// time to act before the kubelet's own SIGKILL at the end of the grace period.
func phases(budget time.Duration) (smartEnd, fastEnd, immediateEnd time.Duration) {
	r := min(max(budget/20, 250*time.Millisecond), 2*time.Second)
	return budget / 2, budget - 2*r, budget - r
}

// shutdown stops the postmaster within StopDelay, in steps, and returns the
// exit code that reports the step that ended it.
func (s *Supervisor) shutdown() (int, error) {
	step := s.stop(s.cfg.StopDelay, s.cfg.Checkpoint != nil)
	return step.ExitCode(), nil
}

// stopNow stops whatever is left of a postmaster quickly, for restarts and
// failed starts: fast, then immediate, then SIGKILL, within a few seconds.
func (s *Supervisor) stopNow() {
	s.stopFrom(StepFast, 5*time.Second)
}

// stop runs the full shutdown sequence within budget.
func (s *Supervisor) stop(budget time.Duration, checkpoint bool) Step {
	began := time.Now()
	if checkpoint && s.running() && s.answered {
		smartEnd, _, _ := phases(budget)
		ctx, cancel := context.WithTimeout(context.Background(), smartEnd)
		err := s.cfg.Checkpoint(ctx)
		cancel()
		if err != nil {
			s.log.Warn("checkpoint before shutdown failed; shutting down anyway", "error", err)
		} else {
			s.log.Info("checkpoint before shutdown done", "took", time.Since(began).Round(time.Millisecond).String())
		}
	}
	return s.stopFrom(StepSmart, budget-time.Since(began))
}

// stoppingHookTimeout bounds the Stopping hook: a small part of the budget.
func stoppingHookTimeout(budget time.Duration) time.Duration {
	return min(max(budget/20, 100*time.Millisecond), 2*time.Second)
}

// stopFrom sends the shutdown signals from step first on, each at its time
// within budget, and waits for the postmaster to exit.
func (s *Supervisor) stopFrom(first Step, budget time.Duration) Step {
	if s.proc == nil {
		return StepNone
	}
	began := time.Now()
	if s.cfg.Stopping != nil {
		ctx, cancel := context.WithTimeout(context.Background(), stoppingHookTimeout(budget))
		s.cfg.Stopping(ctx)
		cancel()
	}
	budget -= time.Since(began)
	pid := s.proc.Process.Pid
	smartEnd, fastEnd, immEnd := phases(budget)
	type phase struct {
		step Step
		at   time.Duration
	}
	schedule := []phase{{StepSmart, 0}, {StepFast, smartEnd}, {StepImmediate, fastEnd}, {StepKill, immEnd}}
	switch first {
	case StepSmart:
	case StepImmediate:
		schedule = []phase{{StepImmediate, 0}, {StepKill, immEnd}}
	default:
		schedule = []phase{{StepFast, 0}, {StepImmediate, fastEnd}, {StepKill, immEnd}}
	}
	ended := StepNone
	hurried := false
	for k := 0; k < len(schedule); k++ {
		ph := schedule[k]
		if hurried && ph.step == StepFast {
			ph.at = min(ph.at, time.Since(began))
		}
		t := time.NewTimer(time.Until(began.Add(ph.at)))
	wait:
		for {
			select {
			case <-s.done:
				t.Stop()
				return s.finishStop(ended, pid, began)
			case <-t.C:
				break wait
			case <-s.hurry:
				if ph.step > StepFast || hurried {
					continue // smart is already over
				}
				hurried = true
				s.log.Info("ending smart shutdown early: another instance takes over")
				if ph.step == StepFast {
					t.Stop()
					break wait
				} // else smart is about to be sent: fast follows at once
			case <-s.fence:
				// Fenced during a stop: immediate now, SIGKILL after fenceBudget.
				if !s.held.Load() || ph.step >= StepImmediate {
					continue // stale (from before the last Start), or already past fast
				}
				t.Stop()
				at := time.Since(began)
				schedule = append(schedule[:k:k], phase{StepImmediate, at}, phase{StepKill, at + fenceBudget})
				ph = schedule[k]
				break wait
			case c := <-s.cmds:
				switch c := c.(type) {
				case reloadCmd:
					c.done <- errors.New("cannot reload: postgres is stopping")
				case startCmd:
					c.done <- errors.New("cannot start postgres: it is stopping")
				case stopCmd:
					c.done <- StepNone // already stopping
				}
			}
		}
		s.log.Info("stopping postgres", "pid", pid, "mode", ph.step.String())
		if ph.step == StepKill {
			_ = unix.Kill(-pid, unix.SIGKILL) // the postmaster's process group
			if n := reaper.KillDescendants(unix.SIGKILL); n > 0 {
				s.log.Warn("killed processes left behind by postgres", "count", n)
			}
		} else if err := s.proc.Process.Signal(ph.step.signal()); err != nil && !errors.Is(err, os.ErrProcessDone) {
			s.log.Warn("cannot signal postgres", "mode", ph.step.String(), "error", err)
		}
		ended = ph.step
	}
	<-s.done // SIGKILL cannot be caught or ignored
	return s.finishStop(ended, pid, began)
}

func (s *Supervisor) finishStop(step Step, pid int, began time.Time) Step {
	took := time.Since(began)
	s.cfg.Metrics.Up.Set(0)
	// Backends run in their own sessions; whatever survived the postmaster
	// (for example a stopped backend) would block the next start or keep the
	// container alive: kill it and let the reaper collect it.
	if n := reaper.KillDescendants(unix.SIGKILL); n > 0 {
		s.log.Warn("killed processes left behind by postgres", "count", n)
	}
	s.awaitNoDescendants(2 * time.Second)
	if step != StepNone {
		s.cfg.Metrics.StopDuration.WithLabelValues(step.String()).Observe(took.Seconds())
		s.log.Info("postgres stopped", "pid", pid, "mode", step.String(), "took", took.Round(time.Millisecond).String())
	}
	s.proc, s.answered = nil, false
	return step
}

// awaitNoDescendants waits, bounded, until every descendant is gone.
func (s *Supervisor) awaitNoDescendants(limit time.Duration) {
	deadline := time.Now().Add(limit)
	for len(reaper.Descendants()) > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond) // bounded by deadline; the reaper does the collecting
	}
}
