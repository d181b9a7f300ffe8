package logging

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParsePostgresLine(t *testing.T) {
	tests := []struct {
		in   string
		want PostgresLine
	}{
		{
			in:   "2026-11-21 10:01:02.345 UTC [4711] LOG:  database system is ready to accept connections",
			want: PostgresLine{Time: "2026-11-21 10:01:02.345 UTC", PID: "4711", Severity: "LOG", Message: "database system is ready to accept connections"},
		},
		{
			in:   "2026-11-21 10:01:02.345 UTC [12] FATAL:  role \"x\" does not exist",
			want: PostgresLine{Time: "2026-11-21 10:01:02.345 UTC", PID: "12", Severity: "FATAL", Message: "role \"x\" does not exist"},
		},
		{
			// A message that itself contains "word:  " must keep it.
			in:   "2026-11-21 10:01:02.345 UTC [12] ERROR:  syntax error: at or near \"x\"",
			want: PostgresLine{Time: "2026-11-21 10:01:02.345 UTC", PID: "12", Severity: "ERROR", Message: "syntax error: at or near \"x\""},
		},
		{
			// Written before the configuration was read: no prefix.
			in:   "postgres: could not access directory \"/x\": No such file or directory",
			want: PostgresLine{Message: "postgres: could not access directory \"/x\": No such file or directory"},
		},
		{in: "\tcontinuation of a statement", want: PostgresLine{Message: "\tcontinuation of a statement"}},
		{in: "a b c [d", want: PostgresLine{Message: "a b c [d"}},
	}
	for _, tt := range tests {
		if diff := cmp.Diff(tt.want, ParsePostgresLine(tt.in)); diff != "" {
			t.Errorf("ParsePostgresLine(%q) mismatch (-want +got):\n%s", tt.in, diff)
		}
	}
}

func TestCopyPostgresEmitsOneJSONObjectPerLine(t *testing.T) {
	var out bytes.Buffer
	logger := New(&out, slog.LevelDebug)
	Manager(logger).Info("own record") // must not leak its source into postgres' records
	out.Reset()
	in := "2026-11-21 10:01:02.345 UTC [7] WARNING:  careful\n" +
		"plain line\n\n" +
		"2026-11-21 10:01:02.345 UTC [7] PANIC:  no tail newline"
	CopyPostgres(strings.NewReader(in), logger)

	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("got %d records, want 3:\n%s", len(lines), out.String())
	}
	type rec struct {
		Level, Msg, Source, Pid string
		PgSeverity              string `json:"pg_severity"`
	}
	want := []rec{
		{Level: "WARN", Msg: "careful", Source: "postgres", Pid: "7", PgSeverity: "WARNING"},
		{Level: "INFO", Msg: "plain line", Source: "postgres"},
		{Level: "ERROR", Msg: "no tail newline", Source: "postgres", Pid: "7", PgSeverity: "PANIC"},
	}
	for i, l := range lines {
		var got rec
		if err := json.Unmarshal([]byte(l), &got); err != nil {
			t.Fatalf("line %d is not JSON: %q: %v", i, l, err)
		}
		if n := strings.Count(l, `"source"`); n != 1 {
			t.Errorf("record %d has %d source fields: %s", i, n, l)
		}
		if diff := cmp.Diff(want[i], got); diff != "" {
			t.Errorf("record %d mismatch (-want +got):\n%s", i, diff)
		}
	}
}

func TestCopyPostgresCutsOverlongLines(t *testing.T) {
	var out bytes.Buffer
	CopyPostgres(strings.NewReader(strings.Repeat("x", 3*maxLine)+"\nnext\n"), New(&out, slog.LevelInfo))
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) < 2 || !strings.Contains(lines[0], "[truncated]") || !strings.Contains(lines[len(lines)-1], `"msg":"next"`) {
		t.Fatalf("overlong line not cut as expected: %d records", len(lines))
	}
	for _, l := range lines {
		if len(l) > maxLine+512 {
			t.Fatalf("a record of %d bytes exceeds the bound", len(l))
		}
	}
}
