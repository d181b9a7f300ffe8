package reaper

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// Status is how a child process ended.
type Status struct {
	// Code is the exit code, or 128+signal when the process was killed by a
	// signal (the shell's convention, also tini's).
	Code int
	// Signal is the terminating signal, or 0 when the process exited.
	Signal syscall.Signal
}

// Success reports whether the process exited with code 0.
func (s Status) Success() bool { return s.Code == 0 && s.Signal == 0 }

func (s Status) String() string {
	if s.Signal != 0 {
		return fmt.Sprintf("killed by signal %d (%s)", int(s.Signal), unix.SignalName(s.Signal))
	}
	return fmt.Sprintf("exit status %d", s.Code)
}

// ExitError is returned by Run and CombinedOutput for a command that did not succeed.
type ExitError struct {
	Status Status
}

func (e *ExitError) Error() string { return e.Status.String() }

func statusOf(ws unix.WaitStatus) Status {
	if ws.Signaled() {
		return Status{Code: 128 + int(ws.Signal()), Signal: ws.Signal()}
	}
	return Status{Code: ws.ExitStatus()}
}

var (
	mu      sync.Mutex
	started bool
	waiting map[int]chan Status
	stopCh  chan struct{}
	doneCh  chan struct{}
	sigCh   chan os.Signal

	orphans atomic.Uint64
)

// Start begins reaping. It is idempotent. When the process is not PID 1 it
// registers itself as a child subreaper, so orphans of its descendants are
// re-parented to it as they would be to PID 1.
func Start() error {
	mu.Lock()
	defer mu.Unlock()
	if started {
		return nil
	}
	if os.Getpid() != 1 {
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			return fmt.Errorf("cannot register as child subreaper: %w", err)
		}
	}
	waiting = make(map[int]chan Status)
	stopCh = make(chan struct{})
	doneCh = make(chan struct{})
	sigCh = make(chan os.Signal, 1)
	signal.Notify(sigCh, unix.SIGCHLD)
	started = true
	go loop(sigCh, stopCh, doneCh)
	// Children may have exited before the handler was installed.
	sigCh <- unix.SIGCHLD
	return nil
}

// Stop stops reaping. Commands still registered get no status; callers stop
// their children before stopping the reaper.
func Stop() {
	mu.Lock()
	if !started {
		mu.Unlock()
		return
	}
	signal.Stop(sigCh)
	close(stopCh)
	done := doneCh
	started = false
	mu.Unlock()
	<-done
}

// OrphansReaped is the number of processes reaped that no StartCommand caller
// was waiting for.
func OrphansReaped() uint64 { return orphans.Load() }

func loop(sigs <-chan os.Signal, stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	for {
		select {
		case <-sigs:
			reapAll()
		case <-stop:
			return
		}
	}
}

// reapAll collects every child that has exited, as tini does after each
// SIGCHLD: signals coalesce, so one SIGCHLD may stand for many exits.
func reapAll() {
	mu.Lock()
	defer mu.Unlock()
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || pid <= 0 {
			return // ECHILD: no children; 0: none has exited yet
		}
		st := statusOf(ws)
		if ch, ok := waiting[pid]; ok {
			// Buffered: never blocks. The entry stays until WaitCommand takes
			// it, so a command that exits before its owner waits is not lost.
			ch <- st
			continue
		}
		orphans.Add(1)
		slog.Debug("reaped orphan process", "pid", pid, "status", st.String())
	}
}

// StartCommand starts cmd so that its exit status is kept for WaitCommand.
// The PID is registered under the same lock the reaper takes before waiting,
// so the command cannot be reaped as an orphan before it is registered.
func StartCommand(cmd *exec.Cmd) error {
	mu.Lock()
	defer mu.Unlock()
	if err := cmd.Start(); err != nil {
		return err
	}
	if started {
		waiting[cmd.Process.Pid] = make(chan Status, 1)
	}
	return nil
}

// WaitCommand waits for a command started with StartCommand and returns how
// it ended. It also releases the command's I/O resources.
func WaitCommand(cmd *exec.Cmd) (Status, error) {
	mu.Lock()
	ch, ok := waiting[cmd.Process.Pid]
	mu.Unlock()
	if !ok {
		// Started before the reaper, or the reaper is not running: os/exec waits.
		err := cmd.Wait()
		if cmd.ProcessState == nil {
			return Status{}, fmt.Errorf("cannot wait for process %d: %w", cmd.Process.Pid, err)
		}
		ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
		return statusOf(unix.WaitStatus(ws)), nil
	}
	st := <-ch
	mu.Lock()
	delete(waiting, cmd.Process.Pid)
	mu.Unlock()
	// The process is already reaped, so Wait reports ECHILD; it is still needed
	// to finish copying output and close the pipes os/exec made for cmd.
	_ = cmd.Wait()
	return st, nil
}

// Run starts cmd and waits for it. A command that does not exit with 0 gives an *ExitError.
func Run(cmd *exec.Cmd) error {
	if err := StartCommand(cmd); err != nil {
		return err
	}
	st, err := WaitCommand(cmd)
	if err != nil {
		return err
	}
	if !st.Success() {
		return &ExitError{Status: st}
	}
	return nil
}

// CombinedOutput runs cmd and returns its standard output and error together.
func CombinedOutput(cmd *exec.Cmd) ([]byte, error) {
	var b bytes.Buffer
	cmd.Stdout = &b
	cmd.Stderr = &b
	err := Run(cmd)
	return b.Bytes(), err
}
