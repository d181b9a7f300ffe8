package operator

import (
	"errors"
	"testing"
)

func TestChooseCandidate(t *testing.T) {
	replica := func(tli uint32, recv, replay string) *InstanceStatus {
		return &InstanceStatus{Role: "replica", Timeline: tli, ReceivedLSN: recv, ReplayLSN: replay}
	}
	down := errors.New("connection refused")
	tests := []struct {
		name  string
		cands []Candidate
		sync  int
		want  string // "" means a *NoCandidateError
	}{
		{name: "highest received LSN wins",
			cands: []Candidate{
				{Name: "c-2", Usable: true, Status: replica(1, "0/5000000", "0/5000000")},
				{Name: "c-3", Usable: true, Status: replica(1, "0/6000000", "0/4000000")},
			}, want: "c-3"},
		{name: "LSN compares numerically, not as text",
			cands: []Candidate{
				{Name: "c-2", Usable: true, Status: replica(1, "0/9000000", "")},
				{Name: "c-3", Usable: true, Status: replica(1, "1/0", "")},
			}, want: "c-3"},
		{name: "higher timeline first",
			cands: []Candidate{
				{Name: "c-2", Usable: true, Status: replica(2, "0/5000000", "")},
				{Name: "c-3", Usable: true, Status: replica(1, "0/6000000", "")},
			}, want: "c-2"},
		{name: "tie on received: replayed more wins",
			cands: []Candidate{
				{Name: "c-2", Usable: true, Status: replica(1, "0/5000000", "0/4000000")},
				{Name: "c-3", Usable: true, Status: replica(1, "0/5000000", "0/5000000")},
			}, want: "c-3"},
		{name: "full tie: lowest instance number (numerically)",
			cands: []Candidate{
				{Name: "c-10", Usable: true, Status: replica(1, "0/5000000", "0/5000000")},
				{Name: "c-9", Usable: true, Status: replica(1, "0/5000000", "0/5000000")},
			}, want: "c-9"},
		{name: "unusable and silent replicas are skipped",
			cands: []Candidate{
				{Name: "c-2", Usable: false, Status: replica(1, "0/9000000", "")},
				{Name: "c-3", Usable: true, Err: down},
				{Name: "c-4", Usable: true, Status: replica(1, "0/1000000", "")},
			}, want: "c-4"},
		{name: "an instance that says it is primary is not a candidate",
			cands: []Candidate{
				{Name: "c-2", Usable: true, Status: &InstanceStatus{Role: "primary", CurrentLSN: "0/9000000"}},
				{Name: "c-3", Usable: true, Status: replica(1, "0/1000000", "")},
			}, want: "c-3"},
		{name: "no LSN or a malformed one is skipped",
			cands: []Candidate{
				{Name: "c-2", Usable: true, Status: replica(1, "", "")},
				{Name: "c-3", Usable: true, Status: replica(1, "garbage", "")},
			}, want: ""},
		{name: "an instance that reports itself fenced is not a candidate",
			cands: []Candidate{
				{Name: "c-2", Usable: true, Status: &InstanceStatus{Role: "replica", ReceivedLSN: "0/9000000", Fenced: true}},
				{Name: "c-3", Usable: true, Status: replica(1, "0/1000000", "")},
			}, want: "c-3"},
		{name: "a fenced pod is not usable, whatever its position",
			cands: []Candidate{
				{Name: "c-2", Usable: false, Why: "fenced (pgwarden.io/fenced)", Status: replica(1, "0/9000000", "")},
			}, want: ""},
		{name: "nobody answers", cands: []Candidate{{Name: "c-2", Usable: true, Err: down}}, want: ""},
		{name: "no replicas at all", cands: nil, want: ""},
		{name: "sync ANY 1 of 2: one answer is not enough",
			cands: []Candidate{
				{Name: "c-2", Usable: true, Status: replica(1, "0/5000000", "")},
				{Name: "c-3", Usable: true, Err: down},
			}, sync: 1, want: ""},
		{name: "sync ANY 1 of 2: both answer",
			cands: []Candidate{
				{Name: "c-2", Usable: true, Status: replica(1, "0/5000000", "")},
				{Name: "c-3", Usable: true, Status: replica(1, "0/4000000", "")},
			}, sync: 1, want: "c-2"},
		{name: "sync ANY 2 of 3: two answers suffice, a dead pod counts as a replica",
			cands: []Candidate{
				{Name: "c-2", Usable: true, Status: replica(1, "0/5000000", "")},
				{Name: "c-3", Usable: true, Status: replica(1, "0/7000000", "")},
				{Name: "c-4", Usable: false},
			}, sync: 2, want: "c-3"},
		{name: "sync ANY 2 of 3: one answer is not enough",
			cands: []Candidate{
				{Name: "c-2", Usable: true, Status: replica(1, "0/5000000", "")},
				{Name: "c-3", Usable: true, Err: down},
				{Name: "c-4", Usable: false},
			}, sync: 2, want: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ChooseCandidate(tt.cands, tt.sync)
			if tt.want == "" {
				var nc *NoCandidateError
				if !errors.As(err, &nc) {
					t.Fatalf("ChooseCandidate = %q, %v; want a *NoCandidateError", got, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ChooseCandidate = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}
