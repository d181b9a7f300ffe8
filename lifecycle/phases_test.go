package lifecycle

import (
	"testing"
	"time"
)

// TestPhases pins the shutdown schedule: smart for half of the budget, and
// immediate and SIGKILL each get r = clamp(budget/20, 250ms, 2s) at the end,
// so every step happens inside the budget.
func TestPhases(t *testing.T) {
	tests := []struct {
		budget                 time.Duration
		smart, fast, immediate time.Duration
	}{
		{30 * time.Second, 15 * time.Second, 27 * time.Second, 28500 * time.Millisecond},
		{6 * time.Second, 3 * time.Second, 5400 * time.Millisecond, 5700 * time.Millisecond},
		{2 * time.Second, time.Second, 1500 * time.Millisecond, 1750 * time.Millisecond},
		{120 * time.Second, 60 * time.Second, 116 * time.Second, 118 * time.Second},
	}
	for _, tt := range tests {
		s, f, i := phases(tt.budget)
		if s != tt.smart || f != tt.fast || i != tt.immediate {
			t.Errorf("phases(%s) = %s, %s, %s; want %s, %s, %s", tt.budget, s, f, i, tt.smart, tt.fast, tt.immediate)
		}
		if !(s <= f && f < i && i < tt.budget) {
			t.Errorf("phases(%s) out of order or past the budget: %s, %s, %s", tt.budget, s, f, i)
		}
	}
}

func TestStepExitCodes(t *testing.T) {
	for step, want := range map[Step]int{
		StepNone: ExitClean, StepSmart: ExitClean, StepFast: ExitClean,
		StepImmediate: ExitImmediate, StepKill: ExitKilled,
	} {
		if got := step.ExitCode(); got != want {
			t.Errorf("%s.ExitCode() = %d, want %d", step, got, want)
		}
	}
}
