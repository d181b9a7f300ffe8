package postgres

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"time"

	"github.com/pgwarden/pgwarden/pkg/reaper"
)

// Bin is a directory holding the PostgreSQL server binaries of one major version.
type Bin struct {
	Dir   string
	Major int
}

// Path returns the path of the named program in b.Dir.
func (b Bin) Path(name string) string { return filepath.Join(b.Dir, name) }

// requiredPrograms must all exist in a Bin's directory.
var requiredPrograms = []string{"postgres", "initdb", "pg_controldata"}

// debianBinGlob is where Debian installs each major version; a variable for tests.
var debianBinGlob = "/usr/lib/postgresql/*/bin"

// versionTimeout bounds `postgres --version`, which answers at once.
const versionTimeout = 10 * time.Second

// FindBin finds the PostgreSQL binaries. dir comes from --pg-bin-dir; when it
// is empty, the directory of `postgres` on PATH is used (symlinks resolved, so
// /usr/local/bin/postgres -> /usr/lib/postgresql/15/bin/postgres gives the
// latter), else the newest /usr/lib/postgresql/<major>/bin. The directory must
// hold postgres, initdb and pg_controldata; the major version comes from
// `postgres --version`.
func FindBin(dir string) (Bin, error) {
	if dir == "" {
		found, err := defaultBinDir()
		if err != nil {
			return Bin{}, err
		}
		dir = found
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return Bin{}, fmt.Errorf("cannot use PostgreSQL binary directory %q: %w", dir, err)
	}
	dir = abs
	st, err := os.Stat(dir)
	if err != nil {
		return Bin{}, fmt.Errorf("cannot use PostgreSQL binary directory %s: %w", dir, err)
	}
	if !st.IsDir() {
		return Bin{}, fmt.Errorf("cannot use PostgreSQL binary directory %s: not a directory", dir)
	}
	for _, name := range requiredPrograms {
		if err := checkExecutable(filepath.Join(dir, name)); err != nil {
			return Bin{}, fmt.Errorf("cannot use PostgreSQL binary directory %s: %w", dir, err)
		}
	}
	b := Bin{Dir: dir}
	major, err := serverMajor(b)
	if err != nil {
		return Bin{}, fmt.Errorf("cannot use PostgreSQL binary directory %s: %w", dir, err)
	}
	b.Major = major
	return b, nil
}

func defaultBinDir() (string, error) {
	if p, err := exec.LookPath("postgres"); err == nil {
		real, err := filepath.EvalSymlinks(p)
		if err != nil {
			return "", fmt.Errorf("cannot resolve %s: %w", p, err)
		}
		return filepath.Dir(real), nil
	}
	matches, err := filepath.Glob(debianBinGlob)
	if err != nil {
		return "", fmt.Errorf("cannot look for PostgreSQL in %s: %w", debianBinGlob, err)
	}
	type cand struct {
		dir   string
		major int
	}
	var cands []cand
	for _, m := range matches {
		// .../postgresql/<major>/bin
		n, err := strconv.Atoi(filepath.Base(filepath.Dir(m)))
		if err != nil {
			continue // not a version directory
		}
		cands = append(cands, cand{m, n})
	}
	if len(cands) == 0 {
		return "", fmt.Errorf("cannot find PostgreSQL: no postgres on PATH and nothing in %s; set --pg-bin-dir", debianBinGlob)
	}
	sort.Slice(cands, func(i, j int) bool { return cands[i].major > cands[j].major })
	return cands[0].dir, nil
}

func checkExecutable(path string) error {
	st, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s not found", filepath.Base(path))
	}
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("%s is not an executable file", path)
	}
	return nil
}

// versionRE matches "postgres (PostgreSQL) 15.18 (Debian ...)" and "... 17beta1".
var versionRE = regexp.MustCompile(`\(PostgreSQL\) (\d+)(?:\.(\d+))?`)

// parseVersion returns the major version in the output of `postgres --version`.
// Before 10 the major version had two parts (9.6); those are not supported.
func parseVersion(out string) (int, error) {
	m := versionRE.FindStringSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("cannot parse version from %q", out)
	}
	major, err := strconv.Atoi(m[1])
	if err != nil {
		return 0, fmt.Errorf("cannot parse version from %q", out)
	}
	if major < 10 {
		return 0, fmt.Errorf("PostgreSQL %s.%s is not supported", m[1], m[2])
	}
	return major, nil
}

func serverMajor(b Bin) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), versionTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, b.Path("postgres"), "--version")
	cmd.Env = minimalEnv(b, nil)
	out, err := reaper.CombinedOutput(cmd)
	if err != nil {
		return 0, fmt.Errorf("postgres --version failed: %w: %s", err, trimOutput(out))
	}
	return parseVersion(string(out))
}
