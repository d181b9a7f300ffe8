package postgres

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/pgwarden/pgwarden/pkg/reaper"
)

// maxPasswordFileSize bounds what ReadPassword reads: a password file is small,
// and a mistaken path (a device, a log) must not be read whole.
const maxPasswordFileSize = 4096

// ReadPassword reads a password from file: the whole content less one trailing
// newline (\n or \r\n). A missing, unreadable, empty, multi-line or oversized
// file is an error that names the file and never contains its content.
func ReadPassword(file string) (string, error) {
	if file == "" {
		return "", errors.New("cannot read password: no password file given")
	}
	f, err := os.Open(file)
	if err != nil {
		return "", fmt.Errorf("cannot read password file: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxPasswordFileSize+1))
	if err != nil {
		return "", fmt.Errorf("cannot read password file: %w", err)
	}
	if len(b) > maxPasswordFileSize {
		return "", fmt.Errorf("cannot read password file %s: larger than %d bytes", file, maxPasswordFileSize)
	}
	s := string(b)
	s = strings.TrimSuffix(s, "\n")
	s = strings.TrimSuffix(s, "\r")
	if s == "" {
		return "", fmt.Errorf("cannot read password file %s: it is empty", file)
	}
	if strings.ContainsAny(s, "\n\r\x00") {
		return "", fmt.Errorf("cannot read password file %s: the password must be one line without NUL bytes", file)
	}
	return s, nil
}

// InitOptions are the inputs of InitDB.
type InitOptions struct {
	// DataDir is the data directory to create; it must be missing or empty.
	DataDir string
	// PasswordFile holds the superuser's password (see ReadPassword).
	PasswordFile string
	// Superuser is the bootstrap superuser's name; default "postgres".
	Superuser string
	// RunAs runs initdb and owns the files; nil runs as the current user,
	// which must then not be root.
	RunAs *User
	// Locale of the cluster; default "C.UTF-8" (byte-order collation, UTF-8
	// character classes, present in every glibc since 2.35).
	Locale string
	// TempDir is where the private directory holding the password file is
	// made; default os.TempDir(). It must be outside DataDir.
	TempDir string
}

// CommandError is a command that failed, with its output. Commands of this
// package never receive a password, so the output holds none.
type CommandError struct {
	Command string // the program's name
	Err     error  // *reaper.ExitError, or why it could not run
	Output  string
}

func (e *CommandError) Error() string {
	out := strings.TrimSpace(e.Output)
	if out == "" {
		return fmt.Sprintf("%s failed: %v", e.Command, e.Err)
	}
	return fmt.Sprintf("%s failed: %v: %s", e.Command, e.Err, out)
}

func (e *CommandError) Unwrap() error { return e.Err }

// AlreadyInitializedError: InitDB was asked to create a data directory that exists.
type AlreadyInitializedError struct{ Dir string }

func (e *AlreadyInitializedError) Error() string {
	return fmt.Sprintf("data directory %s is already initialized", e.Dir)
}

// initdbGrace is how long initdb may clean up after SIGTERM (on cancellation)
// before it is killed; it removes what it created, which takes moments.
const initdbGrace = 10 * time.Second

// testHookInitDBStarted, when set, is called with the running initdb command.
var testHookInitDBStarted func(cmd *exec.Cmd)

// InitDB creates a new data directory with initdb: data checksums, SCRAM
// authentication, UTF-8, and the superuser's password passed through a private
// temporary file (never an argument or an environment variable). Everything
// that can be checked is checked before anything is created. The data
// directory is made 0700 and owned by opts.RunAs, with missing parents. If
// initdb fails, the error is a *CommandError with initdb's output, and what
// InitDB created is removed (a directory that existed empty is left, empty).
func InitDB(ctx context.Context, bin Bin, opts InitOptions) error {
	plan, err := planInitDB(bin, opts)
	if err != nil {
		return fmt.Errorf("cannot initialize data directory: %w", err)
	}
	if err := plan.run(ctx); err != nil {
		return fmt.Errorf("cannot initialize data directory %s: %w", plan.dataDir, err)
	}
	return nil
}

type initPlan struct {
	bin       Bin
	dataDir   string
	superuser string
	password  string
	locale    string
	tempDir   string
	runAs     *User
	// missing are the directories to create, outermost first (the last is dataDir).
	missing []string
}

func planInitDB(bin Bin, opts InitOptions) (*initPlan, error) {
	if opts.DataDir == "" {
		return nil, errors.New("no data directory given")
	}
	dataDir, err := filepath.Abs(opts.DataDir)
	if err != nil {
		return nil, err
	}
	p := &initPlan{
		bin:       bin,
		dataDir:   filepath.Clean(dataDir),
		superuser: opts.Superuser,
		locale:    opts.Locale,
		tempDir:   opts.TempDir,
		runAs:     opts.RunAs,
	}
	if p.superuser == "" {
		p.superuser = "postgres"
	}
	if strings.HasPrefix(strings.ToLower(p.superuser), "pg_") || strings.ContainsAny(p.superuser, "\x00\n\r") || len(p.superuser) > 63 {
		return nil, fmt.Errorf("superuser name %q is not allowed (no pg_ prefix, at most 63 bytes, one line)", p.superuser)
	}
	if p.locale == "" {
		p.locale = "C.UTF-8"
	}
	if p.tempDir == "" {
		p.tempDir = os.TempDir()
	}
	if p.tempDir, err = filepath.Abs(p.tempDir); err != nil {
		return nil, err
	}
	if within(p.tempDir, p.dataDir) {
		return nil, fmt.Errorf("temporary directory %s is inside the data directory %s", p.tempDir, p.dataDir)
	}
	if p.runAs == nil && geteuid() == 0 {
		return nil, errors.New("initdb cannot run as root: give the user to run it as")
	}
	if err := checkExecutable(bin.Path("initdb")); err != nil {
		return nil, err
	}
	if p.password, err = ReadPassword(opts.PasswordFile); err != nil {
		return nil, err
	}
	state, err := InspectDataDir(p.dataDir, bin.Major)
	if err != nil {
		return nil, err
	}
	if state != Empty {
		return nil, &AlreadyInitializedError{Dir: p.dataDir}
	}
	for d := p.dataDir; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err == nil {
			if !fi.IsDir() {
				return nil, fmt.Errorf("%s is not a directory", d)
			}
			break
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		p.missing = append([]string{d}, p.missing...)
	}
	return p, nil
}

// within reports whether path is dir or inside it.
func within(path, dir string) bool {
	rel, err := filepath.Rel(dir, path)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}

func (p *initPlan) run(ctx context.Context) (err error) {
	// On failure, remove what we made: the outermost directory we created, or
	// the content of a data directory that existed empty.
	removeOnFailure, clearOnFailure := "", len(p.missing) == 0
	defer func() {
		switch {
		case err == nil:
		case removeOnFailure != "":
			os.RemoveAll(removeOnFailure)
		case clearOnFailure:
			clearDir(p.dataDir)
		}
	}()
	for i, d := range p.missing {
		mode := os.FileMode(0o755) // parents: others must traverse them
		if i == len(p.missing)-1 {
			mode = 0o700
		}
		if err := os.Mkdir(d, mode); err != nil {
			return err
		}
		if i == 0 {
			removeOnFailure = d
		}
		if err := os.Chmod(d, mode); err != nil { // the umask may have narrowed it
			return err
		}
		if err := p.runAs.Chown(d); err != nil {
			return err
		}
	}
	if len(p.missing) == 0 {
		// An empty directory that exists, often a mount point: initdb makes it 0700.
		if err := p.runAs.Chown(p.dataDir); err != nil {
			return err
		}
	}

	pwDir, err := os.MkdirTemp(p.tempDir, "pgwarden-initdb-")
	if err != nil {
		return fmt.Errorf("cannot make a private directory for the password file: %w", err)
	}
	defer os.RemoveAll(pwDir)
	pwFile, err := p.writePasswordFile(pwDir)
	if err != nil {
		return err
	}

	cmd := exec.CommandContext(ctx, p.bin.Path("initdb"),
		"--pgdata="+p.dataDir,
		"--data-checksums",
		"--auth=scram-sha-256",
		"--encoding=UTF8",
		"--locale="+p.locale,
		"--username="+p.superuser,
		"--pwfile="+pwFile,
		"--no-instructions",
	)
	cmd.Env = minimalEnv(p.bin, p.runAs)
	cmd.Dir = "/"
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = initdbGrace
	p.runAs.SetCredential(cmd)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	runErr := reaper.StartCommand(cmd)
	if runErr == nil {
		if testHookInitDBStarted != nil {
			testHookInitDBStarted(cmd)
		}
		var st reaper.Status
		st, runErr = reaper.WaitCommand(cmd)
		if runErr == nil && !st.Success() {
			runErr = &reaper.ExitError{Status: st}
		}
	}
	os.RemoveAll(pwDir) // at once, not when InitDB returns
	if runErr != nil {
		if ctx.Err() != nil {
			runErr = fmt.Errorf("%w (%v)", ctx.Err(), runErr)
		}
		return &CommandError{Command: "initdb", Err: runErr, Output: redact(out.String(), p.password)}
	}
	state, err := InspectDataDir(p.dataDir, p.bin.Major)
	if err != nil {
		return fmt.Errorf("initdb succeeded but: %w", err)
	}
	if state != Existing {
		return fmt.Errorf("initdb succeeded but the data directory is %s", state)
	}
	return nil
}

// writePasswordFile writes the password into a new 0600 file in the private
// directory dir, both owned by the user initdb runs as.
func (p *initPlan) writePasswordFile(dir string) (string, error) {
	if err := os.Chmod(dir, 0o700); err != nil {
		return "", err
	}
	if err := p.runAs.Chown(dir); err != nil {
		return "", err
	}
	name := filepath.Join(dir, "pwfile")
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", fmt.Errorf("cannot write password file: %w", err)
	}
	_, werr := io.WriteString(f, p.password+"\n")
	cerr := f.Close()
	if err := errors.Join(werr, cerr); err != nil {
		return "", fmt.Errorf("cannot write password file: %w", err)
	}
	if err := p.runAs.Chown(name); err != nil {
		return "", err
	}
	return name, nil
}

// clearDir removes what is inside dir, not dir itself.
func clearDir(dir string) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		os.RemoveAll(filepath.Join(dir, e.Name()))
	}
}

// redact hides password in s. initdb never prints it; this is a second guard.
func redact(s, password string) string {
	if password == "" {
		return s
	}
	return strings.ReplaceAll(s, password, "[REDACTED]")
}
