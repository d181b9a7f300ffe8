package postgres

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// State is what InspectDataDir found.
type State int

const (
	// Empty: the directory is missing or empty; it needs initdb (or a base backup).
	Empty State = iota + 1
	// Existing: a data directory of the expected major version with a sane pg_control.
	Existing
)

func (s State) String() string {
	switch s {
	case Empty:
		return "empty"
	case Existing:
		return "existing"
	default:
		return fmt.Sprintf("State(%d)", int(s))
	}
}

// NotDataDirError: the directory holds something, but not a PostgreSQL data directory.
type NotDataDirError struct {
	Dir string
	// Entries are (some of) the names found in Dir, sorted.
	Entries []string
	// NotDir is set when Dir is not a directory at all.
	NotDir bool
}

func (e *NotDataDirError) Error() string {
	if e.NotDir {
		return fmt.Sprintf("%s is not a directory, so it cannot be a PostgreSQL data directory", e.Dir)
	}
	msg := fmt.Sprintf("%s is not a PostgreSQL data directory: it is not empty (%s) but has no PG_VERSION",
		e.Dir, strings.Join(e.Entries, ", "))
	if e.HasLostFound() {
		msg += "; it looks like the root of a volume (lost+found): use a subdirectory of the volume as PGDATA, for example " +
			filepath.Join(e.Dir, "pgdata")
	}
	return msg
}

// HasLostFound reports whether the directory holds lost+found, the mark of a volume's root.
func (e *NotDataDirError) HasLostFound() bool {
	for _, n := range e.Entries {
		if n == "lost+found" {
			return true
		}
	}
	return false
}

// VersionMismatchError: the data directory belongs to another major version.
type VersionMismatchError struct {
	Dir   string
	Found string // the content of PG_VERSION
	Want  int    // the major version of the binaries
}

func (e *VersionMismatchError) Error() string {
	return fmt.Sprintf("data directory %s belongs to PostgreSQL %s, this is PostgreSQL %d (upgrade it with pg_upgrade or use matching binaries)",
		e.Dir, e.Found, e.Want)
}

// CorruptDataDirError: the data directory lacks or has an unreadable PG_VERSION
// or global/pg_control.
type CorruptDataDirError struct {
	Dir    string
	File   string // relative to Dir
	Reason string
}

func (e *CorruptDataDirError) Error() string {
	return fmt.Sprintf("data directory %s is corrupt: %s: %s", e.Dir, e.File, e.Reason)
}

// maxListed bounds NotDataDirError.Entries.
const maxListed = 10

// pgControlSize is PG_CONTROL_FILE_SIZE: pg_control is always written as 8 kB.
const pgControlSize = 8192

// InspectDataDir reports the state of the data directory dir for binaries of
// the given major version. It only reads. A directory it must refuse gives a
// *NotDataDirError, *VersionMismatchError or *CorruptDataDirError.
func InspectDataDir(dir string, major int) (State, error) {
	st, err := os.Stat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return Empty, nil
	}
	if err != nil {
		return 0, fmt.Errorf("cannot inspect data directory: %w", err)
	}
	if !st.IsDir() {
		return 0, &NotDataDirError{Dir: dir, NotDir: true}
	}
	f, err := os.Open(dir)
	if err != nil {
		return 0, fmt.Errorf("cannot inspect data directory: %w", err)
	}
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return 0, fmt.Errorf("cannot inspect data directory %s: %w", dir, err)
	}
	if len(names) == 0 {
		return Empty, nil
	}
	sort.Strings(names)
	if i := sort.SearchStrings(names, "PG_VERSION"); i == len(names) || names[i] != "PG_VERSION" {
		if len(names) > maxListed {
			names = append(names[:maxListed:maxListed], "...")
		}
		return 0, &NotDataDirError{Dir: dir, Entries: names}
	}

	raw, err := os.ReadFile(filepath.Join(dir, "PG_VERSION"))
	if err != nil {
		return 0, &CorruptDataDirError{Dir: dir, File: "PG_VERSION", Reason: errReason(err)}
	}
	version := strings.TrimSuffix(string(raw), "\n")
	if !validPGVersion(version) {
		return 0, &CorruptDataDirError{Dir: dir, File: "PG_VERSION", Reason: fmt.Sprintf("garbled content %q", truncate(version, 20))}
	}
	if version != strconv.Itoa(major) {
		return 0, &VersionMismatchError{Dir: dir, Found: version, Want: major}
	}

	if reason := checkPGControl(filepath.Join(dir, "global", "pg_control")); reason != "" {
		return 0, &CorruptDataDirError{Dir: dir, File: "global/pg_control", Reason: reason}
	}
	return Existing, nil
}

// validPGVersion accepts "15" and the two-part versions before 10 ("9.6").
func validPGVersion(v string) bool {
	parts := strings.Split(v, ".")
	if len(parts) > 2 {
		return false
	}
	for _, p := range parts {
		if p == "" || len(p) > 4 {
			return false
		}
		for _, c := range p {
			if c < '0' || c > '9' {
				return false
			}
		}
	}
	return true
}

// checkPGControl returns why the control file is not sane, or "".
//
// The file is 8 kB; its data (ControlFileData) begins with the system
// identifier and the control format version and ends with a CRC-32C of
// everything before it, in the machine's byte order. The struct's size differs
// between major versions, so the CRC is looked for at every 4-byte boundary of
// a plausible size: a garbled file matches nowhere (a false match has a
// probability near 2^-32 per position).
func checkPGControl(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return errReason(err)
	}
	if len(b) != pgControlSize {
		return fmt.Sprintf("size is %d bytes, want %d", len(b), pgControlSize)
	}
	if v := binary.NativeEndian.Uint32(b[8:12]); v < 1000 || v > 9999 {
		return fmt.Sprintf("implausible pg_control_version %d", v)
	}
	table := crc32.MakeTable(crc32.Castagnoli)
	for off := 16; off+4 <= 1024; off += 4 {
		if crc32.Checksum(b[:off], table) == binary.NativeEndian.Uint32(b[off:off+4]) {
			return ""
		}
	}
	return "CRC check failed"
}

func errReason(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		if errors.Is(err, fs.ErrNotExist) {
			return "missing"
		}
		return pe.Err.Error()
	}
	return err.Error()
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
