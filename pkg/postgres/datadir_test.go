package postgres

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// snapshot lists every path under dir with its type, mode, size and mtime, to
// prove an inspection changed nothing.
func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	snap := map[string]string{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) && path == dir {
			return fs.SkipAll
		}
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		snap[path] = fmt.Sprintf("%v %d %s", info.Mode(), info.Size(), info.ModTime().Format(time.RFC3339Nano))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return snap
}

func TestInspectDataDir(t *testing.T) {
	bin := realBin(t)
	root := t.TempDir()
	mk := func(name string, setup func(dir string)) string {
		dir := filepath.Join(root, name)
		setup(dir)
		return dir
	}
	mkdir := func(dir string) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	copyTemplate := func(dir string) { copyDataDir(t, dir, nil) }

	tests := []struct {
		name      string
		dir       string
		want      State
		wantErr   any    // pointer to the error type wanted
		wantInErr string // substring of the message
	}{
		{name: "missing", dir: filepath.Join(root, "missing", "pgdata"), want: Empty},
		{name: "empty", dir: mk("empty", mkdir), want: Empty},
		{name: "existing", dir: mk("existing", copyTemplate), want: Existing},
		{
			name: "lost+found only",
			dir: mk("volume", func(d string) {
				mkdir(filepath.Join(d, "lost+found"))
			}),
			wantErr: new(*NotDataDirError), wantInErr: "use a subdirectory",
		},
		{
			name: "other files",
			dir: mk("other", func(d string) {
				mkdir(d)
				writeFile(t, filepath.Join(d, "notes.txt"), "x", 0o600)
			}),
			wantErr: new(*NotDataDirError), wantInErr: "not a PostgreSQL data directory",
		},
		{
			name: "a file",
			dir: mk("file", func(d string) {
				writeFile(t, d, "x", 0o600)
			}),
			wantErr: new(*NotDataDirError), wantInErr: "not a directory",
		},
		{
			name: "PG_VERSION missing",
			dir: mk("noversion", func(d string) {
				copyTemplate(d)
				os.Remove(filepath.Join(d, "PG_VERSION"))
			}),
			wantErr: new(*NotDataDirError), wantInErr: "no PG_VERSION",
		},
		{
			name: "other major",
			dir: mk("pg14", func(d string) {
				copyTemplate(d)
				writeFile(t, filepath.Join(d, "PG_VERSION"), "14\n", 0o600)
			}),
			wantErr: new(*VersionMismatchError), wantInErr: fmt.Sprintf("belongs to PostgreSQL 14, this is PostgreSQL %d", bin.Major),
		},
		{
			name: "garbled PG_VERSION",
			dir: mk("garbled-version", func(d string) {
				copyTemplate(d)
				writeFile(t, filepath.Join(d, "PG_VERSION"), "\x00\x01junk", 0o600)
			}),
			wantErr: new(*CorruptDataDirError), wantInErr: "PG_VERSION",
		},
		{
			name: "empty PG_VERSION",
			dir: mk("empty-version", func(d string) {
				copyTemplate(d)
				writeFile(t, filepath.Join(d, "PG_VERSION"), "", 0o600)
			}),
			wantErr: new(*CorruptDataDirError), wantInErr: "PG_VERSION",
		},
		{
			name: "pg_control missing",
			dir: mk("no-control", func(d string) {
				copyTemplate(d)
				os.Remove(filepath.Join(d, "global", "pg_control"))
			}),
			wantErr: new(*CorruptDataDirError), wantInErr: "global/pg_control: missing",
		},
		{
			name: "pg_control truncated",
			dir: mk("short-control", func(d string) {
				copyTemplate(d)
				os.Truncate(filepath.Join(d, "global", "pg_control"), 100)
			}),
			wantErr: new(*CorruptDataDirError), wantInErr: "size is 100 bytes",
		},
		{
			name: "pg_control garbled",
			dir: mk("bad-control", func(d string) {
				copyTemplate(d)
				p := filepath.Join(d, "global", "pg_control")
				b, err := os.ReadFile(p)
				if err != nil {
					t.Fatal(err)
				}
				b[40] ^= 0xff // inside the checkpoint data, covered by the CRC
				writeFile(t, p, string(b), 0o600)
			}),
			wantErr: new(*CorruptDataDirError), wantInErr: "CRC check failed",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := snapshot(t, tt.dir)
			got, err := InspectDataDir(tt.dir, bin.Major)
			if diff := cmp.Diff(before, snapshot(t, tt.dir)); diff != "" {
				t.Errorf("InspectDataDir changed the directory (-before +after):\n%s", diff)
			}
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("InspectDataDir(%s): %v", tt.dir, err)
				}
				if got != tt.want {
					t.Fatalf("InspectDataDir(%s) = %v, want %v", tt.dir, got, tt.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("InspectDataDir(%s) = %v, want an error", tt.dir, got)
			}
			if !errors.As(err, tt.wantErr) {
				t.Errorf("InspectDataDir(%s) error %T (%v), want %T", tt.dir, err, err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantInErr) || !strings.Contains(err.Error(), tt.dir) {
				t.Errorf("InspectDataDir(%s) error %q, want it to name the directory and say %q", tt.dir, err, tt.wantInErr)
			}
		})
	}
}

// The control file check must accept what every supported version writes:
// the CRC position follows the struct's size. Check it against the real file.
func TestCheckPGControlReal(t *testing.T) {
	p := filepath.Join(templateDataDir(t), "global", "pg_control")
	if reason := checkPGControl(p); reason != "" {
		t.Fatalf("checkPGControl(%s) = %q, want it sane", p, reason)
	}
}
