package roles

import (
	"encoding/json"
	"fmt"

	"github.com/pgwarden/pgwarden/pkg/postgres"
)

// FinalLSN is what a primary that stepped down cleanly leaves for its successor: the WAL position
// at which its clean shutdown ended, on which timeline. Release writes it on the Lease (annotation
// pgwarden.io/final-lsn) in the same update that clears the holder; the next acquisition removes
// it and hands it to the new holder (PrimaryLease.Handoff), which must have replayed up to LSN on
// Timeline before it promotes, or it would lose acknowledged writes.
type FinalLSN struct {
	Pod      string `json:"pod"`      // the releasing holder
	LSN      string `json:"lsn"`      // as PostgreSQL prints it, e.g. "0/3000028"
	Timeline uint32 `json:"timeline"` // the timeline the LSN is on
}

func (f FinalLSN) validate() error {
	if f.Pod == "" {
		return fmt.Errorf("invalid final LSN: no pod")
	}
	if _, err := postgres.ParseLSN(f.LSN); err != nil {
		return fmt.Errorf("invalid final LSN: %w", err)
	}
	if f.Timeline == 0 {
		return fmt.Errorf("invalid final LSN: timeline 0")
	}
	return nil
}

// Encode returns the annotation value, e.g. {"pod":"x","lsn":"0/3000028","timeline":1}.
func (f FinalLSN) Encode() (string, error) {
	if err := f.validate(); err != nil {
		return "", err
	}
	b, err := json.Marshal(f)
	if err != nil {
		return "", fmt.Errorf("cannot encode final LSN: %w", err)
	}
	return string(b), nil
}

// DecodeFinalLSN parses an annotation value written by Encode.
func DecodeFinalLSN(s string) (*FinalLSN, error) {
	var f FinalLSN
	if err := json.Unmarshal([]byte(s), &f); err != nil {
		return nil, fmt.Errorf("invalid final LSN %q: %w", s, err)
	}
	if err := f.validate(); err != nil {
		return nil, err
	}
	return &f, nil
}
