package operator

import (
	"github.com/pgwarden/pgwarden/pkg/statusapi"

	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Candidate is one replica as the failover sees it: the Pod's state and its /status answer.
type Candidate struct {
	Name string
	// Usable: the Pod exists, is not being deleted, its container runs, and it belongs to the
	// spec (index <= instances).
	Usable bool
	// Status is the answer to GET /status; nil when the instance did not answer in time.
	Status *InstanceStatus
	// Err says why Status is nil.
	Err error
	// Why says why the candidate is not Usable (optional; "pod not running" when empty).
	Why string
}

// NoCandidateError says why no replica can be promoted.
type NoCandidateError struct {
	Reason string
}

func (e *NoCandidateError) Error() string { return "no failover candidate: " + e.Reason }

// ChooseCandidate picks the replica to promote: among the usable replicas that answered with a
// received LSN, the one on the highest timeline with the highest received LSN (then replayed
// LSN, then the lowest instance number, so the choice is deterministic).
//
// With synchronous replication (syncNumber N > 0, synchronous_standby_names = ANY N over every
// instance) an acknowledged commit is on at least N of the R replicas. Among any R-N+1 replicas
// at least one has it, so the choice is made only when at least R-N+1 replicas answered: then the
// one with the highest received LSN has every acknowledged commit and nothing is lost. With fewer
// answers it returns a *NoCandidateError rather than risk losing commits. R counts every replica,
// usable or not.
func ChooseCandidate(cands []Candidate, syncNumber int) (string, error) {
	type scored struct {
		name             string
		index            int
		tli              uint32
		received, replay uint64
	}
	var ok []scored
	var skipped []string
	for _, c := range cands {
		switch {
		case !c.Usable:
			why := c.Why
			if why == "" {
				why = "pod not running"
			}
			skipped = append(skipped, c.Name+": "+why)
		case c.Status == nil:
			skipped = append(skipped, fmt.Sprintf("%s: no status (%v)", c.Name, c.Err))
		case c.Status.Fenced:
			skipped = append(skipped, c.Name+": fenced")
		case c.Status.Role != "replica":
			skipped = append(skipped, fmt.Sprintf("%s: reports role %q", c.Name, c.Status.Role))
		default:
			recv, err := statusapi.ParseLSN(c.Status.ReceivedLSN)
			if err != nil {
				skipped = append(skipped, fmt.Sprintf("%s: %v", c.Name, err))
				continue
			}
			replay, _ := statusapi.ParseLSN(c.Status.ReplayLSN) // only a tie-breaker
			ok = append(ok, scored{name: c.Name, index: trailingNumber(c.Name), tli: c.Status.Timeline,
				received: recv, replay: replay})
		}
	}
	if syncNumber > 0 {
		need := len(cands) - syncNumber + 1
		if len(ok) < need {
			return "", &NoCandidateError{Reason: fmt.Sprintf(
				"synchronous replication (ANY %d of %d replicas) needs answers from %d replicas to be sure of every acknowledged commit, got %d (%s)",
				syncNumber, len(cands), need, len(ok), strings.Join(skipped, "; "))}
		}
	}
	if len(ok) == 0 {
		if len(skipped) == 0 {
			return "", &NoCandidateError{Reason: "no replicas"}
		}
		return "", &NoCandidateError{Reason: strings.Join(skipped, "; ")}
	}
	best := slices.MinFunc(ok, func(a, b scored) int {
		return cmp.Or(
			cmp.Compare(b.tli, a.tli),
			cmp.Compare(b.received, a.received),
			cmp.Compare(b.replay, a.replay),
			cmp.Compare(a.index, b.index),
			strings.Compare(a.name, b.name),
		)
	})
	return best.name, nil
}

func trailingNumber(name string) int {
	i := strings.LastIndexByte(name, '-')
	n, _ := strconv.Atoi(name[i+1:])
	return n
}
