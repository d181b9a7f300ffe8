package postgres

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// ClusterState is pg_control's "Database cluster state".
type ClusterState string

// The states pg_controldata prints.
const (
	StateStartingUp         ClusterState = "starting up"
	StateShutDown           ClusterState = "shut down"
	StateShutDownInRecovery ClusterState = "shut down in recovery"
	StateShuttingDown       ClusterState = "shutting down"
	StateInCrashRecovery    ClusterState = "in crash recovery"
	StateInArchiveRecovery  ClusterState = "in archive recovery"
	StateInProduction       ClusterState = "in production"
)

// CleanlyShutDown reports whether the server stopped cleanly: as a primary
// (after its shutdown checkpoint) or as a standby (after a restartpoint).
func (s ClusterState) CleanlyShutDown() bool {
	return s == StateShutDown || s == StateShutDownInRecovery
}

// ControlData is what ReadControlData reads from a data directory's pg_control.
type ControlData struct {
	SystemIdentifier uint64
	State            ClusterState
	// CheckpointLSN is "Latest checkpoint location": where the latest
	// checkpoint (or restartpoint) record begins.
	CheckpointLSN LSN
	// RedoLSN is "Latest checkpoint's REDO location": where replay starts.
	RedoLSN LSN
	// TimeLineID and PrevTimeLineID are the latest checkpoint's.
	TimeLineID, PrevTimeLineID uint32
	// MinRecoveryEndLSN is "Minimum recovery ending location" and
	// MinRecoveryEndTimeLineID its timeline: how far a standby must replay
	// before it is consistent; 0 on a primary.
	MinRecoveryEndLSN        LSN
	MinRecoveryEndTimeLineID uint32
	WALLogHints              bool
	DataChecksumVersion      int
	// MaxAlign, WALBlockSize and WALSegmentSize lay out the WAL.
	MaxAlign, WALBlockSize, WALSegmentSize uint64

	// FinalLSN is set only when State is StateShutDown: the end of the
	// shutdown checkpoint record at CheckpointLSN. A primary that shuts down
	// cleanly writes that record last, so FinalLSN is the end of all the WAL
	// it ever wrote (what pg_current_wal_flush_lsn() said last): CheckpointLSN
	// plus the record's length (read from its header in pg_wal) aligned to
	// MaxAlign, plus the page header it may cross (120 bytes in all on
	// PostgreSQL 15 on 64-bit machines, unless it crosses a page).
	//
	// The final-LSN rule: a standby holds everything the old primary wrote
	// when its pg_last_wal_receive_lsn() >= FinalLSN (ReplStatus.ReceiveLSN;
	// after WaitReplayCaughtUp its replay LSN is as far). Compare with
	// FinalLSN, not CheckpointLSN: at CheckpointLSN the standby has every
	// data record but not the shutdown checkpoint itself; promoted, it would
	// fork its new timeline at CheckpointLSN, before the old primary's last
	// record, and the old primary could then rejoin only through pg_rewind.
	// With receive >= FinalLSN the new timeline begins exactly at FinalLSN
	// (its history file says so) and the old primary follows it as it is
	// (NeedsRewind is false). In a clean switchover a streaming standby has
	// exactly FinalLSN once the old primary has exited: during shutdown its
	// walsenders wait until each connected standby has flushed all WAL.
	FinalLSN LSN

	// History is the timeline history of TimeLineID (pg_wal/<tli>.history),
	// oldest first; nil on timeline 1 or when the file is missing.
	History []TimelineSwitch
}

// ReadControlData runs pg_controldata on dataDir (as runAs) and parses its
// output. For a cleanly stopped primary it also finds FinalLSN, and on a
// timeline after the first it reads the timeline's history file. It only reads.
func ReadControlData(ctx context.Context, bin Bin, dataDir string, runAs *User) (ControlData, error) {
	out, err := runTool(ctx, bin, runAs, "pg_controldata", "-D", dataDir)
	if err != nil {
		return ControlData{}, fmt.Errorf("cannot read control data of %s: %w", dataDir, err)
	}
	cd, err := parseControlData(out)
	if err != nil {
		return ControlData{}, fmt.Errorf("cannot read control data of %s: %w", dataDir, err)
	}
	if cd.State == StateShutDown {
		if cd.FinalLSN, err = shutdownCheckpointEnd(dataDir, cd); err != nil {
			return ControlData{}, fmt.Errorf("cannot find the end of WAL of %s: %w", dataDir, err)
		}
	}
	if cd.TimeLineID > 1 {
		data, err := os.ReadFile(filepath.Join(dataDir, "pg_wal", fmt.Sprintf("%08X.history", cd.TimeLineID)))
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			return ControlData{}, fmt.Errorf("cannot read timeline history of %s: %w", dataDir, err)
		default:
			if cd.History, err = parseTimelineHistory(string(data)); err != nil {
				return ControlData{}, fmt.Errorf("cannot read timeline history of %s: %w", dataDir, err)
			}
		}
	}
	return cd, nil
}

// parseControlData parses pg_controldata's output (in English: the package's
// commands run with LC_ALL=C.UTF-8, which has no translations).
func parseControlData(out string) (ControlData, error) {
	fields := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		k, v, ok := strings.Cut(line, ":")
		if ok {
			fields[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	var (
		cd   ControlData
		errs []error
	)
	get := func(key string) string {
		v, ok := fields[key]
		if !ok {
			errs = append(errs, fmt.Errorf("no %q", key))
		}
		return v
	}
	lsn := func(key string) LSN {
		v := get(key)
		if v == "" {
			return 0
		}
		l, err := ParseLSN(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", key, err))
		}
		return l
	}
	uint := func(key string, bits int) uint64 {
		v := get(key)
		if v == "" {
			return 0
		}
		n, err := strconv.ParseUint(v, 10, bits)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", key, err))
		}
		return n
	}
	cd.SystemIdentifier = uint("Database system identifier", 64)
	cd.State = ClusterState(get("Database cluster state"))
	cd.CheckpointLSN = lsn("Latest checkpoint location")
	cd.RedoLSN = lsn("Latest checkpoint's REDO location")
	cd.TimeLineID = uint32(uint("Latest checkpoint's TimeLineID", 32))
	cd.PrevTimeLineID = uint32(uint("Latest checkpoint's PrevTimeLineID", 32))
	cd.MinRecoveryEndLSN = lsn("Minimum recovery ending location")
	cd.MinRecoveryEndTimeLineID = uint32(uint("Min recovery ending loc's timeline", 32))
	cd.WALLogHints = get("wal_log_hints setting") == "on"
	cd.DataChecksumVersion = int(uint("Data page checksum version", 32))
	cd.MaxAlign = uint("Maximum data alignment", 32)
	cd.WALBlockSize = uint("WAL block size", 32)
	cd.WALSegmentSize = uint("Bytes per WAL segment", 32)
	if len(errs) > 0 {
		return ControlData{}, fmt.Errorf("cannot parse pg_controldata output: %w", errors.Join(errs...))
	}
	switch cd.State {
	case StateStartingUp, StateShutDown, StateShutDownInRecovery, StateShuttingDown,
		StateInCrashRecovery, StateInArchiveRecovery, StateInProduction:
	default:
		return ControlData{}, fmt.Errorf("cannot parse pg_controldata output: unknown cluster state %q", cd.State)
	}
	if cd.MaxAlign == 0 || cd.MaxAlign&(cd.MaxAlign-1) != 0 ||
		cd.WALBlockSize == 0 || cd.WALBlockSize&(cd.WALBlockSize-1) != 0 ||
		cd.WALSegmentSize < cd.WALBlockSize || cd.WALSegmentSize&(cd.WALSegmentSize-1) != 0 {
		return ControlData{}, fmt.Errorf("cannot parse pg_controldata output: implausible WAL layout (alignment %d, block %d, segment %d)",
			cd.MaxAlign, cd.WALBlockSize, cd.WALSegmentSize)
	}
	return cd, nil
}

// WAL record and page layout (access/xlogrecord.h, access/xlog_internal.h),
// stable since PostgreSQL 9.5.
const (
	xlogRecordHeaderSize  = 24   // SizeOfXLogRecord
	xlogPageHeaderSize    = 20   // sizeof(XLogPageHeaderData), before alignment
	xlogLongPageExtraSize = 16   // the long header's extra fields, before alignment
	rmXLOG                = 0    // RM_XLOG_ID
	xlogCheckpointShutdwn = 0x00 // XLOG_CHECKPOINT_SHUTDOWN
	xlrInfoMask           = 0x0F // XLR_INFO_MASK: flags, not the record type
	maxPlausibleRecord    = 1 << 20
)

// walLayout converts between LSNs and positions among the usable bytes of
// WAL (page headers left out), as postgres does when it reserves room for a
// record: a record of n bytes (aligned) starting at LSN p ends at
// endOf(posOf(p) + n).
type walLayout struct {
	block, segment, shortHeader, longHeader uint64
}

func newWALLayout(cd ControlData) walLayout {
	align := func(n uint64) uint64 { return (n + cd.MaxAlign - 1) &^ (cd.MaxAlign - 1) }
	return walLayout{
		block:       cd.WALBlockSize,
		segment:     cd.WALSegmentSize,
		shortHeader: align(xlogPageHeaderSize),
		longHeader:  align(xlogPageHeaderSize + xlogLongPageExtraSize),
	}
}

func (w walLayout) usablePerPage() uint64 { return w.block - w.shortHeader }

func (w walLayout) usablePerSegment() uint64 {
	return (w.segment/w.block-1)*w.usablePerPage() + w.block - w.longHeader
}

// posOf is the usable-byte position of a record starting at lsn.
func (w walLayout) posOf(lsn LSN) uint64 {
	p := uint64(lsn)
	segs, inSeg := p/w.segment, p%w.segment
	pages, inPage := inSeg/w.block, inSeg%w.block
	pos := segs * w.usablePerSegment()
	if pages == 0 {
		return pos + inPage - w.longHeader
	}
	return pos + w.block - w.longHeader + (pages-1)*w.usablePerPage() + inPage - w.shortHeader
}

// endOf is the LSN where a record ending at usable-byte position pos ends; a
// record ending exactly at a page boundary ends there (before the next header).
func (w walLayout) endOf(pos uint64) LSN {
	segs, left := pos/w.usablePerSegment(), pos%w.usablePerSegment()
	var off uint64
	switch firstPage := w.block - w.longHeader; {
	case left == 0:
		off = 0
	case left < firstPage:
		off = w.longHeader + left
	default:
		left -= firstPage
		pages, inPage := left/w.usablePerPage(), left%w.usablePerPage()
		off = (pages + 1) * w.block
		if inPage > 0 {
			off += w.shortHeader + inPage
		}
	}
	return LSN(segs*w.segment + off)
}

// walFileName is the name of the WAL segment file holding lsn on timeline tli.
func walFileName(tli uint32, lsn LSN, segmentSize uint64) string {
	seg := uint64(lsn) / segmentSize
	perID := (uint64(1) << 32) / segmentSize
	return fmt.Sprintf("%08X%08X%08X", tli, seg/perID, seg%perID)
}

// shutdownCheckpointEnd finds the end of the shutdown checkpoint record at
// cd.CheckpointLSN: it reads the record's total length from the first bytes
// of its header in pg_wal (the header begins on an aligned position, so its
// first 4 bytes never straddle a page) and checks, where the header lies in
// one page, that it is indeed a shutdown checkpoint record.
func shutdownCheckpointEnd(dataDir string, cd ControlData) (LSN, error) {
	name := filepath.Join(dataDir, "pg_wal", walFileName(cd.TimeLineID, cd.CheckpointLSN, cd.WALSegmentSize))
	f, err := os.Open(name)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	off := int64(uint64(cd.CheckpointLSN) % cd.WALSegmentSize)
	header := make([]byte, 18) // xl_tot_len, xl_xid, xl_prev, xl_info, xl_rmid
	inPage := uint64(cd.CheckpointLSN) % cd.WALBlockSize
	n := 4
	if inPage+uint64(len(header)) <= cd.WALBlockSize {
		n = len(header)
	}
	if _, err := f.ReadAt(header[:n], off); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return 0, fmt.Errorf("cannot read the checkpoint record at %s in %s: %w", cd.CheckpointLSN, name, err)
	}
	total := uint64(binary.NativeEndian.Uint32(header[:4]))
	if total < xlogRecordHeaderSize || total > maxPlausibleRecord {
		return 0, fmt.Errorf("the record at %s in %s has implausible length %d", cd.CheckpointLSN, name, total)
	}
	if n == len(header) {
		info, rmid := header[16], header[17]
		if rmid != rmXLOG || info&^xlrInfoMask != xlogCheckpointShutdwn {
			return 0, fmt.Errorf("the record at %s in %s is not a shutdown checkpoint (resource manager %d, info %#x)",
				cd.CheckpointLSN, name, rmid, info)
		}
	}
	w := newWALLayout(cd)
	aligned := (total + cd.MaxAlign - 1) &^ (cd.MaxAlign - 1)
	return w.endOf(w.posOf(cd.CheckpointLSN) + aligned), nil
}
