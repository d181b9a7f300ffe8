package postgres

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// fakeBinDir makes dir/<major>/bin with scripts standing in for the programs
// FindBin checks, postgres printing the given version.
func fakeBinDir(t *testing.T, root, version string, programs ...string) string {
	t.Helper()
	dir := filepath.Join(root, strings.SplitN(version, ".", 2)[0], "bin")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, p := range programs {
		script := "#!/bin/sh\nexit 0\n"
		if p == "postgres" {
			script = "#!/bin/sh\necho 'postgres (PostgreSQL) " + version + " (Fake)'\n"
		}
		writeFile(t, filepath.Join(dir, p), script, 0o755)
	}
	return dir
}

var allPrograms = []string{"postgres", "initdb", "pg_controldata"}

func TestFindBinFlag(t *testing.T) {
	real := realBin(t)
	root := t.TempDir()
	noInitdb := fakeBinDir(t, root, "16.1", "postgres", "pg_controldata")
	fake16 := fakeBinDir(t, filepath.Join(root, "ok"), "16.1", allPrograms...)
	notExec := fakeBinDir(t, filepath.Join(root, "noexec"), "16.1", allPrograms...)
	if err := os.Chmod(filepath.Join(notExec, "initdb"), 0o644); err != nil {
		t.Fatal(err)
	}
	badVersion := filepath.Join(root, "badversion")
	if err := os.Mkdir(badVersion, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, p := range allPrograms {
		writeFile(t, filepath.Join(badVersion, p), "#!/bin/sh\necho 'something else'\n", 0o755)
	}
	aFile := filepath.Join(root, "file")
	writeFile(t, aFile, "", 0o644)

	tests := []struct {
		name    string
		dir     string
		want    Bin
		wantErr string // substring; the directory's name is always required too
	}{
		{name: "real", dir: real.Dir, want: real},
		{name: "real with trailing slash", dir: real.Dir + "/", want: real},
		{name: "fake 16", dir: fake16, want: Bin{Dir: fake16, Major: 16}},
		{name: "missing", dir: filepath.Join(root, "nope"), wantErr: "no such file"},
		{name: "a file", dir: aFile, wantErr: "not a directory"},
		{name: "no initdb", dir: noInitdb, wantErr: "initdb not found"},
		{name: "initdb not executable", dir: notExec, wantErr: "not an executable"},
		{name: "unparsable version", dir: badVersion, wantErr: "cannot parse version"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := FindBin(tt.dir)
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("FindBin(%q) = %+v, want an error", tt.dir, got)
				}
				want := filepath.Clean(tt.dir)
				if !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("FindBin(%q) error %q, want it to name the directory and say %q", tt.dir, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("FindBin(%q): %v", tt.dir, err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("FindBin(%q) (-want +got):\n%s", tt.dir, diff)
			}
		})
	}
}

func TestFindBinDefault(t *testing.T) {
	real := realBin(t)
	root := t.TempDir()

	// A symlink on PATH resolves to the real directory.
	linkDir := filepath.Join(root, "path")
	if err := os.Mkdir(linkDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(real.Path("postgres"), filepath.Join(linkDir, "postgres")); err != nil {
		t.Fatal(err)
	}
	// Without postgres on PATH, the newest of the Debian directories, numerically.
	debian := filepath.Join(root, "usr-lib-postgresql")
	for _, v := range []string{"9.6.24", "10.23", "16.4"} {
		fakeBinDir(t, debian, v, allPrograms...)
	}
	if err := os.MkdirAll(filepath.Join(debian, "notaversion", "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	emptyPath := filepath.Join(root, "empty")
	if err := os.Mkdir(emptyPath, 0o755); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		path    string
		glob    string
		want    Bin
		wantErr string
	}{
		{name: "symlink on PATH", path: linkDir, glob: filepath.Join(debian, "*", "bin"), want: real},
		{name: "newest Debian directory", path: emptyPath, glob: filepath.Join(debian, "*", "bin"),
			want: Bin{Dir: filepath.Join(debian, "16", "bin"), Major: 16}},
		{name: "nothing anywhere", path: emptyPath, glob: filepath.Join(emptyPath, "*", "bin"), wantErr: "--pg-bin-dir"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("PATH", tt.path)
			old := debianBinGlob
			debianBinGlob = tt.glob
			t.Cleanup(func() { debianBinGlob = old })

			got, err := FindBin("")
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("FindBin(\"\") = %+v, %v; want error containing %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("FindBin(\"\"): %v", err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("FindBin(\"\") (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseVersion(t *testing.T) {
	tests := []struct {
		out     string
		want    int
		wantErr bool
	}{
		{out: "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n", want: 15},
		{out: "postgres (PostgreSQL) 17beta1\n", want: 17},
		{out: "postgres (PostgreSQL) 10.23\n", want: 10},
		{out: "postgres (PostgreSQL) 9.6.24\n", wantErr: true},
		{out: "bash: postgres: not found\n", wantErr: true},
	}
	for _, tt := range tests {
		got, err := parseVersion(tt.out)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("parseVersion(%q) = %d, %v; want %d, error %v", tt.out, got, err, tt.want, tt.wantErr)
		}
	}
}
