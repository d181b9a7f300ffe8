package logging

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
)

// SourceKey is the field that tells who wrote a record.
const SourceKey = "source"

// lockedWriter serialises whole records so lines of the manager and of
// Postgres never interleave within a line.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// ParseLevel turns "debug", "info", "warn" or "error" into a slog level.
func ParseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("invalid log level %q: use debug, info, warn or error", s)
	}
	return l, nil
}

// New returns a JSON logger writing to w. Its records carry no source: use
// Manager for pgwarden's own records and CopyPostgres for postgres' lines.
func New(w io.Writer, level slog.Level) *slog.Logger {
	return slog.New(slog.NewJSONHandler(&lockedWriter{w: w}, &slog.HandlerOptions{Level: level}))
}

// Manager returns base marked as pgwarden's own records (source=pgwarden).
func Manager(base *slog.Logger) *slog.Logger { return base.With(SourceKey, "pgwarden") }

// Setup makes a JSON logger on stdout, sets its Manager form as the process
// default, and returns the base logger for CopyPostgres and the manager's logger.
func Setup(level slog.Level) (base, manager *slog.Logger) {
	base = New(os.Stdout, level)
	manager = Manager(base)
	slog.SetDefault(manager)
	return base, manager
}

// severities maps PostgreSQL's message severities to slog levels.
var severities = map[string]slog.Level{
	"DEBUG1": slog.LevelDebug, "DEBUG2": slog.LevelDebug, "DEBUG3": slog.LevelDebug,
	"DEBUG4": slog.LevelDebug, "DEBUG5": slog.LevelDebug,
	"LOG": slog.LevelInfo, "INFO": slog.LevelInfo, "NOTICE": slog.LevelInfo,
	"DETAIL": slog.LevelInfo, "HINT": slog.LevelInfo, "STATEMENT": slog.LevelInfo,
	"CONTEXT": slog.LevelInfo, "QUERY": slog.LevelInfo, "LOCATION": slog.LevelInfo,
	"WARNING": slog.LevelWarn,
	"ERROR":   slog.LevelError, "FATAL": slog.LevelError, "PANIC": slog.LevelError,
}

// PostgresLine is one line of PostgreSQL's stderr, split into its parts.
type PostgresLine struct {
	Time     string // as Postgres printed it (%m), empty without a prefix
	PID      string // %p, empty without a prefix
	Severity string // LOG, ERROR, ...; empty when the line had none
	Message  string
}

// ParsePostgresLine splits a line written with log_line_prefix "%m [%p] ".
// Lines without that prefix (early startup messages, continuation lines)
// come back whole in Message.
func ParsePostgresLine(line string) PostgresLine {
	// %m is "2006-01-02 15:04:05.000 TZ": three space-separated fields.
	rest := line
	var fields [3]string
	for i := range fields {
		j := strings.IndexByte(rest, ' ')
		if j <= 0 {
			return PostgresLine{Message: line}
		}
		fields[i], rest = rest[:j], rest[j+1:]
	}
	if len(fields[0]) != 10 || fields[0][4] != '-' || !strings.Contains(fields[1], ":") {
		return PostgresLine{Message: line}
	}
	if !strings.HasPrefix(rest, "[") {
		return PostgresLine{Message: line}
	}
	end := strings.IndexByte(rest, ']')
	if end < 0 {
		return PostgresLine{Message: line}
	}
	p := PostgresLine{Time: strings.Join(fields[:], " "), PID: rest[1:end]}
	rest = strings.TrimPrefix(rest[end+1:], " ")
	if k := strings.Index(rest, ":  "); k > 0 {
		if _, ok := severities[rest[:k]]; ok {
			p.Severity, rest = rest[:k], rest[k+3:]
		}
	}
	p.Message = rest
	return p
}

// maxLine bounds one re-emitted line; longer lines are cut and marked.
const maxLine = 64 << 10

// CopyPostgres reads PostgreSQL's stderr from r until EOF and re-emits every
// line as a record of logger (a base logger from New) with source=postgres.
// It returns when r ends.
func CopyPostgres(r io.Reader, logger *slog.Logger) {
	logger = logger.With(SourceKey, "postgres")
	buf := make([]byte, 0, 4096)
	chunk := make([]byte, 32<<10)
	emit := func(b []byte) {
		line := strings.TrimRight(string(b), "\r")
		if line == "" {
			return
		}
		p := ParsePostgresLine(line)
		level, ok := severities[p.Severity]
		if !ok {
			level = slog.LevelInfo
		}
		attrs := make([]slog.Attr, 0, 3)
		if p.Severity != "" {
			attrs = append(attrs, slog.String("pg_severity", p.Severity))
		}
		if p.PID != "" {
			attrs = append(attrs, slog.String("pid", p.PID))
		}
		if p.Time != "" {
			attrs = append(attrs, slog.String("pg_time", p.Time))
		}
		logger.LogAttrs(context.Background(), level, p.Message, attrs...)
	}
	for {
		n, err := r.Read(chunk)
		buf = append(buf, chunk[:n]...)
		for {
			i := bytes.IndexByte(buf, '\n')
			if i < 0 {
				break
			}
			emit(buf[:i])
			buf = buf[i+1:]
		}
		if len(buf) > maxLine {
			emit(append(buf[:maxLine:maxLine], []byte(" [truncated]")...))
			buf = buf[:0]
		}
		if err != nil {
			emit(buf)
			return
		}
	}
}
