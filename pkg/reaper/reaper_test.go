package reaper

import (
	"errors"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestOwnChildStatusAndOrphan runs a child that leaves a grandchild behind:
// the child's exit status must reach WaitCommand, and the orphaned
// grandchild (re-parented to us as subreaper) must be reaped, not left a zombie.
func TestOwnChildStatusAndOrphan(t *testing.T) {
	if err := Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(Stop)
	before := OrphansReaped()

	// The grandchild prints its PID and lives briefly after its parent exits with 7.
	cmd := exec.Command("sh", "-c", "sleep 0.3 & echo $!; exit 7")
	out, err := CombinedOutput(cmd)
	var ee *ExitError
	if !errors.As(err, &ee) || ee.Status.Code != 7 || ee.Status.Signal != 0 {
		t.Fatalf("want exit status 7, got err=%v", err)
	}
	orphan, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatalf("no grandchild pid in %q", out)
	}

	deadline := time.Now().Add(10 * time.Second)
	for OrphansReaped() == before {
		if time.Now().After(deadline) {
			t.Fatalf("orphan %d was not reaped within 10s", orphan)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := os.Stat("/proc/" + strconv.Itoa(orphan)); err == nil {
		st, _ := os.ReadFile("/proc/" + strconv.Itoa(orphan) + "/stat")
		t.Fatalf("orphan %d still exists after being counted as reaped: %s", orphan, st)
	}
}

func TestSignalledChildStatus(t *testing.T) {
	if err := Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(Stop)
	cmd := exec.Command("sleep", "30")
	if err := StartCommand(cmd); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	st, err := WaitCommand(cmd)
	if err != nil {
		t.Fatal(err)
	}
	if st.Signal != syscall.SIGKILL || st.Code != 128+9 {
		t.Fatalf("want killed by SIGKILL (137), got %+v", st)
	}
}

func TestWithoutReaperFallsBackToExec(t *testing.T) {
	Stop()
	if err := Run(exec.Command("false")); err == nil {
		t.Fatal("false succeeded")
	} else if ee := (*ExitError)(nil); !errors.As(err, &ee) || ee.Status.Code != 1 {
		t.Fatalf("want exit status 1, got %v", err)
	}
	if err := Run(exec.Command("true")); err != nil {
		t.Fatal(err)
	}
}

// TestExitBeforeWait: a command that has exited and been reaped before its
// owner calls WaitCommand still gets its own status.
func TestExitBeforeWait(t *testing.T) {
	if err := Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(Stop)
	cmd := exec.Command("sh", "-c", "exit 3")
	if err := StartCommand(cmd); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	// Wait until the reaper has collected it: the PID is gone from /proc.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d not reaped within 10s", pid)
		}
		time.Sleep(5 * time.Millisecond)
	}
	st, err := WaitCommand(cmd)
	if err != nil || st.Code != 3 {
		t.Fatalf("WaitCommand = %+v, %v; want exit status 3", st, err)
	}
}
