package postgres

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseParameters(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want map[string]string
	}{
		{name: "empty", in: "", want: map[string]string{}},
		{name: "comments and blanks", in: "# a comment\n\n   \t# indented\n", want: map[string]string{}},
		{name: "name = value", in: "shared_buffers = 128MB\n", want: map[string]string{"shared_buffers": "128MB"}},
		{name: "no equal sign", in: "work_mem 4MB", want: map[string]string{"work_mem": "4MB"}},
		{name: "no blanks", in: "work_mem=4MB", want: map[string]string{"work_mem": "4MB"}},
		{name: "trailing comment", in: "log_statement = 'all'   # log everything\n", want: map[string]string{"log_statement": "all"}},
		{name: "comment right after value", in: "log_statement = all#x", want: map[string]string{"log_statement": "all"}},
		{name: "upper case name", in: "Shared_Buffers = 1GB", want: map[string]string{"shared_buffers": "1GB"}},
		{name: "custom parameter", in: "auto_explain.log_min_duration = 100ms", want: map[string]string{"auto_explain.log_min_duration": "100ms"}},
		{name: "quoted with comma and hash", in: `search_path = '"$user", public # not a comment'`, want: map[string]string{"search_path": `"$user", public # not a comment`}},
		{name: "doubled quote", in: `application_name = 'it''s'`, want: map[string]string{"application_name": "it's"}},
		{name: "backslash escapes", in: `x.y = 'a\\b\'c\n\t\101'`, want: map[string]string{"x.y": "a\\b'c\n\tA"}},
		{name: "empty quoted", in: `x.y = ''`, want: map[string]string{"x.y": ""}},
		{name: "later line wins", in: "max_connections = 100\nmax_connections = 200\n", want: map[string]string{"max_connections": "200"}},
		{name: "numbers and paths", in: "a.b = -1\nc.d = 0.5\ne.f = /var/lib/x\ng.h = on\ni.j = 1e3\n",
			want: map[string]string{"a.b": "-1", "c.d": "0.5", "e.f": "/var/lib/x", "g.h": "on", "i.j": "1e3"}},
		{name: "CRLF line ends", in: "work_mem = 4MB\r\nmax_connections = 10\r\n", want: map[string]string{"work_mem": "4MB", "max_connections": "10"}},
		{name: "wal_level logical", in: "wal_level = logical", want: map[string]string{"wal_level": "logical"}},
		{name: "full_page_writes on", in: "full_page_writes = true", want: map[string]string{"full_page_writes": "true"}},
		{name: "archiving allowed", in: "archive_mode = on\narchive_command = 'cp %p /archive/%f'\nrestore_command = 'cp /archive/%f %p'",
			want: map[string]string{"archive_mode": "on", "archive_command": "cp %p /archive/%f", "restore_command": "cp /archive/%f %p"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseParameters(strings.NewReader(tt.in))
			if err != nil {
				t.Fatalf("ParseParameters(%q): %v", tt.in, err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("ParseParameters(%q) (-want +got):\n%s", tt.in, diff)
			}
		})
	}
}

func TestParseParametersRejects(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []string // each must appear in the error
	}{
		{name: "owned", in: "port = 5433", want: []string{"line 1", "port is set by pgwarden"}},
		{name: "owned in upper case", in: "Listen_Addresses = '*'", want: []string{"listen_addresses is set by pgwarden"}},
		{name: "wal_level minimal", in: "wal_level = minimal", want: []string{"wal_level = 'minimal' is refused"}},
		{name: "full_page_writes off", in: "full_page_writes = off", want: []string{"full_page_writes = 'off' is refused"}},
		{name: "max_wal_senders zero", in: "max_wal_senders = 0", want: []string{"max_wal_senders"}},
		{name: "recovery target", in: "recovery_target_time = '2024-01-01'", want: []string{"recovery_target_time is set by pgwarden"}},
		{name: "include", in: "include 'other.conf'", want: []string{"include directives are not supported"}},
		{name: "include_dir", in: "include_dir 'conf.d'", want: []string{"include_dir directives"}},
		{name: "missing value", in: "shared_buffers", want: []string{"shared_buffers: missing value"}},
		{name: "missing value after equal", in: "shared_buffers = # nothing", want: []string{"missing value"}},
		{name: "unterminated quote", in: "x.y = 'abc", want: []string{"unterminated"}},
		{name: "two values", in: "work_mem = 4MB 8MB", want: []string{"after the value"}},
		{name: "unquoted comma", in: "search_path = a,b", want: []string{"after the value"}},
		{name: "bad name", in: "1abc = 1", want: []string{"expected a parameter name"}},
		{name: "dash in name", in: "work-mem = 1", want: []string{"expected = or a blank"}},
		{name: "too many dots", in: "a.b.c = 1", want: []string{"expected a parameter name"}},
		{name: "several problems, all listed", in: "port = 1\nwork_mem = 4MB\nhot_standby = off\nsynchronous_standby_names = '*'\n",
			want: []string{"line 1: port", "line 3: hot_standby", "line 4: synchronous_standby_names"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseParameters(strings.NewReader(tt.in))
			if err == nil {
				t.Fatalf("ParseParameters(%q) = %v, want an error", tt.in, got)
			}
			if got != nil {
				t.Errorf("ParseParameters(%q) returned parameters %v with its error", tt.in, got)
			}
			var pe *ParameterError
			if !errors.As(err, &pe) {
				t.Errorf("error %T, want *ParameterError", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q, want it to say %q", err, w)
				}
			}
		})
	}
}

func TestReadParametersFile(t *testing.T) {
	dir := t.TempDir()
	good := dir + "/good.conf"
	writeFile(t, good, "work_mem = 4MB\n", 0o600)
	bad := dir + "/bad.conf"
	writeFile(t, bad, "work_mem = 4MB\nport = 1\n", 0o600)

	got, err := ReadParametersFile(good)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string]string{"work_mem": "4MB"}, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	if _, err := ReadParametersFile(bad); err == nil || !strings.Contains(err.Error(), bad) || !strings.Contains(err.Error(), "line 2: port") {
		t.Errorf("ReadParametersFile(bad) error %v, want it to name the file and the line", err)
	}
	if _, err := ReadParametersFile(dir + "/missing.conf"); err == nil || !strings.Contains(err.Error(), "missing.conf") {
		t.Errorf("ReadParametersFile(missing) error %v, want it to name the file", err)
	}
}

// Every value survives rendering and parsing back.
func TestQuoteValueRoundTrip(t *testing.T) {
	values := []string{"", "plain", "it's", `back\slash`, `\'`, "''", "new\nline", "cr\r", "tab\there",
		"\b\f", "ünïcode", `\101`, "# not a comment", "a,b c", "'quoted'", `"$user", public`}
	for _, v := range values {
		line := "x.y = " + quoteValue(v)
		if strings.Contains(line, "\n") {
			t.Errorf("quoteValue(%q) = %q spans lines", v, line)
		}
		got, err := ParseParameters(strings.NewReader(line))
		if err != nil {
			t.Errorf("ParseParameters(%q): %v", line, err)
			continue
		}
		if got["x.y"] != v {
			t.Errorf("round trip of %q through %q gave %q", v, line, got["x.y"])
		}
	}
}

func TestParseBool(t *testing.T) {
	tests := []struct {
		in      string
		val, ok bool
	}{
		{"on", true, true}, {"ON", true, true}, {"off", false, true}, {"of", false, true}, {"o", false, false},
		{"t", true, true}, {"tru", true, true}, {"true", true, true}, {"truex", false, false},
		{"yes", true, true}, {"y", true, true}, {"no", false, true}, {"n", false, true},
		{"1", true, true}, {"0", false, true}, {"f", false, true}, {"", false, false}, {"2", false, false},
	}
	for _, tt := range tests {
		val, ok := parseBool(tt.in)
		if val != tt.val || ok != tt.ok {
			t.Errorf("parseBool(%q) = %v, %v; want %v, %v", tt.in, val, ok, tt.val, tt.ok)
		}
	}
}

func TestOwnedParameters(t *testing.T) {
	for _, name := range OwnedParameters() {
		if err := ValidateParameters(map[string]string{name: "x"}); err == nil {
			t.Errorf("ValidateParameters accepts owned parameter %s", name)
		}
	}
}

func TestReadSynchronousStandbyNames(t *testing.T) {
	dir := t.TempDir()
	for _, tt := range []struct {
		name, content, want string
		ok                  bool
	}{
		{"any", "ANY 1 (\"demo-1\", \"demo-2\")\n", `ANY 1 ("demo-1", "demo-2")`, true},
		{"empty means asynchronous", "\n", "", true},
		{"two lines", "ANY 1 (a)\nFIRST 1 (b)\n", "", false},
		{"nul", "ANY 1 (a\x00)", "", false},
		{"too long", strings.Repeat("x", maxSyncNamesSize+1), "", false},
	} {
		p := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "_"))
		if err := os.WriteFile(p, []byte(tt.content), 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := ReadSynchronousStandbyNames(p)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("%s: got %q, %v; want %q, ok %v", tt.name, got, err, tt.want, tt.ok)
		}
	}
	if _, err := ReadSynchronousStandbyNames(filepath.Join(dir, "missing")); err == nil {
		t.Error("a missing file gave no error")
	}
}
