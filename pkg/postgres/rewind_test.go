package postgres

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const controlDataSample = `pg_control version number:            1300
Catalog version number:               202209061
Database system identifier:           7710566571276133981
Database cluster state:               shut down
pg_control last modified:             Sat Nov 21 10:16:18 2026
Latest checkpoint location:           0/17414F8
Latest checkpoint's REDO location:    0/17414F0
Latest checkpoint's REDO WAL file:    000000010000000000000001
Latest checkpoint's TimeLineID:       3
Latest checkpoint's PrevTimeLineID:   2
Latest checkpoint's full_page_writes: on
Latest checkpoint's NextXID:          0:724
Time of latest checkpoint:            Sat Nov 21 10:16:18 2026
Minimum recovery ending location:     0/3000060
Min recovery ending loc's timeline:   2
wal_level setting:                    replica
wal_log_hints setting:                on
Maximum data alignment:               8
Database block size:                  8192
WAL block size:                       8192
Bytes per WAL segment:                16777216
Data page checksum version:           1
Mock authentication nonce:            d7a770722cb1838b0f0a968247b3ea135a3e74dc5c875ed13f7ace7605c23ab5
`

func TestRewindParseControlData(t *testing.T) {
	got, err := parseControlData(controlDataSample)
	if err != nil {
		t.Fatal(err)
	}
	want := ControlData{
		SystemIdentifier: 7710566571276133981, State: StateShutDown,
		CheckpointLSN: 0x17414F8, RedoLSN: 0x17414F0, TimeLineID: 3, PrevTimeLineID: 2,
		MinRecoveryEndLSN: 0x3000060, MinRecoveryEndTimeLineID: 2, WALLogHints: true, DataChecksumVersion: 1,
		MaxAlign: 8, WALBlockSize: 8192, WALSegmentSize: 16 << 20,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("parseControlData (-want +got):\n%s", diff)
	}
	for _, bad := range []string{
		"",
		strings.Replace(controlDataSample, "shut down", "on holiday", 1),
		strings.Replace(controlDataSample, "0/17414F8", "nonsense", 1),
		strings.Replace(controlDataSample, "Bytes per WAL segment:                16777216", "Bytes per WAL segment: 1000", 1),
	} {
		if _, err := parseControlData(bad); err == nil {
			t.Errorf("parseControlData accepted %.60q...", bad)
		}
	}
}

func TestRewindWALLayout(t *testing.T) {
	cd := ControlData{MaxAlign: 8, WALBlockSize: 8192, WALSegmentSize: 16 << 20}
	w := newWALLayout(cd)
	const seg, page = 16 << 20, 8192
	for _, tt := range []struct {
		name       string
		start, end LSN
	}{
		{"within a page", 0x17414F8, 0x17414F8 + 120},
		{"at a segment's first record", seg + 40, seg + 40 + 120},
		{"ends at a page boundary", 5*page - 120, 5 * page},
		{"crosses a page", 5*page - 56, 5*page + 24 + 64},
		{"crosses into a segment", 2*seg - 56, 2*seg + 40 + 64},
	} {
		if got := w.endOf(w.posOf(tt.start) + 120); got != tt.end {
			t.Errorf("%s: a 120-byte record at %s ends at %s, want %s", tt.name, tt.start, got, tt.end)
		}
	}
	if got := walFileName(2, 0x1_2345_6789, seg); got != "000000020000000100000023" {
		t.Errorf("walFileName = %s", got)
	}
}

// TestRewindShutdownCheckpointEnd reads a hand-made record header.
func TestRewindShutdownCheckpointEnd(t *testing.T) {
	dir := t.TempDir()
	cd, err := parseControlData(controlDataSample)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "pg_wal"), 0o700); err != nil {
		t.Fatal(err)
	}
	segment := make([]byte, 8<<20) // enough to hold the record; the size does not matter
	off := uint64(cd.CheckpointLSN) % cd.WALSegmentSize
	binary.NativeEndian.PutUint32(segment[off:], 114) // xl_tot_len
	segment[off+16], segment[off+17] = 0x00, rmXLOG   // XLOG_CHECKPOINT_SHUTDOWN
	name := filepath.Join(dir, "pg_wal", walFileName(cd.TimeLineID, cd.CheckpointLSN, cd.WALSegmentSize))
	writeFile(t, name, string(segment), 0o600)
	end, err := shutdownCheckpointEnd(dir, cd)
	if err != nil || end != cd.CheckpointLSN+120 {
		t.Errorf("shutdownCheckpointEnd = %s, %v; want %s", end, err, cd.CheckpointLSN+120)
	}
	segment[off+16] = 0x10 // XLOG_CHECKPOINT_ONLINE
	writeFile(t, name, string(segment), 0o600)
	if _, err := shutdownCheckpointEnd(dir, cd); err == nil {
		t.Errorf("an online checkpoint was taken for a shutdown checkpoint")
	}
}

func TestRewindParseTimelineHistory(t *testing.T) {
	got, err := parseTimelineHistory("1\t0/3000158\tno recovery target specified\n\n# comment\n2\t0/5000000\tbefore 2000-01-01\n")
	if err != nil {
		t.Fatal(err)
	}
	want := []TimelineSwitch{{1, 0x3000158}, {2, 0x5000000}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("parseTimelineHistory (-want +got):\n%s", diff)
	}
	for _, bad := range []string{"1\n", "x\t0/1\n", "1\tzz\n", "2\t0/5\n1\t0/6\n"} {
		if _, err := parseTimelineHistory(bad); err == nil {
			t.Errorf("parseTimelineHistory(%q) succeeded", bad)
		}
	}
}

func TestRewindNeeded(t *testing.T) {
	const sys = 42
	local := func(tli uint32, final LSN, history ...TimelineSwitch) ControlData {
		return ControlData{SystemIdentifier: sys, State: StateShutDown, TimeLineID: tli, FinalLSN: final, History: history}
	}
	source := func(tli uint32, flush LSN, history ...TimelineSwitch) SourceTimeline {
		return SourceTimeline{SystemIdentifier: sys, TimeLineID: tli, FlushLSN: flush, History: history}
	}
	for _, tt := range []struct {
		name   string
		local  ControlData
		source SourceTimeline
		want   bool
	}{
		{"clean switchover: switch point is our end", local(1, 0x5000), source(2, 0x9000, TimelineSwitch{1, 0x5000}), false},
		{"standby promoted before our end", local(1, 0x5008), source(2, 0x9000, TimelineSwitch{1, 0x5000}), true},
		{"we stopped long before the switch", local(1, 0x4000), source(2, 0x9000, TimelineSwitch{1, 0x5000}), false},
		{"our timeline is not in the source's history", local(3, 0x5000, TimelineSwitch{1, 0x1000}), source(2, 0x9000, TimelineSwitch{1, 0x1000}), true},
		{"grandparent timeline, before its switch", local(1, 0x1000), source(3, 0x9000, TimelineSwitch{1, 0x1000}, TimelineSwitch{2, 0x5000}), false},
		{"parent timeline, histories agree", local(2, 0x5000, TimelineSwitch{1, 0x1000}), source(3, 0x9000, TimelineSwitch{1, 0x1000}, TimelineSwitch{2, 0x5000}), false},
		{"same timeline number, different history", local(2, 0x5000, TimelineSwitch{1, 0x1800}), source(3, 0x9000, TimelineSwitch{1, 0x1000}, TimelineSwitch{2, 0x5000}), true},
		{"same timeline, source ahead", local(2, 0x5000, TimelineSwitch{1, 0x1000}), source(2, 0x9000, TimelineSwitch{1, 0x1000}), false},
		{"same timeline, we are ahead", local(2, 0x9008, TimelineSwitch{1, 0x1000}), source(2, 0x9000, TimelineSwitch{1, 0x1000}), true},
	} {
		got, err := NeedsRewind(tt.local, tt.source)
		if err != nil || got != tt.want {
			t.Errorf("%s: NeedsRewind = %v, %v; want %v", tt.name, got, err, tt.want)
		}
	}

	crashed := local(1, 0)
	crashed.State = StateInProduction
	var notShutDown *NotShutDownError
	if _, err := NeedsRewind(crashed, source(2, 0x9000, TimelineSwitch{1, 0x5000})); !errors.As(err, &notShutDown) {
		t.Errorf("crashed primary: err = %v, want *NotShutDownError", err)
	}
	other := source(2, 0x9000, TimelineSwitch{1, 0x5000})
	other.SystemIdentifier = 7
	var mismatch *SystemMismatchError
	if _, err := NeedsRewind(local(1, 0x5000), other); !errors.As(err, &mismatch) {
		t.Errorf("other system: err = %v, want *SystemMismatchError", err)
	}
}
