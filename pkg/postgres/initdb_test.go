package postgres

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/pgwarden/pgwarden/pkg/reaper"
)

func TestReadPassword(t *testing.T) {
	dir := t.TempDir()
	file := func(name, content string) string {
		p := filepath.Join(dir, name)
		writeFile(t, p, content, 0o600)
		return p
	}
	tests := []struct {
		name      string
		file      string
		want      string
		wantInErr string
		secret    string // must not appear in the error
	}{
		{name: "plain", file: file("plain", "s3cret"), want: "s3cret"},
		{name: "one newline trimmed", file: file("nl", "s3cret\n"), want: "s3cret"},
		{name: "CRLF trimmed", file: file("crlf", "s3cret\r\n"), want: "s3cret"},
		{name: "spaces kept", file: file("spaces", " s3 cret \n"), want: " s3 cret "},
		{name: "quotes and backslash", file: file("quotes", `a'b"c\d`), want: `a'b"c\d`},
		{name: "no file given", file: "", wantInErr: "no password file"},
		{name: "missing", file: filepath.Join(dir, "missing"), wantInErr: "no such file"},
		{name: "a directory", file: dir, wantInErr: "is a directory"},
		{name: "empty", file: file("empty", ""), wantInErr: "is empty"},
		{name: "only a newline", file: file("newline", "\n"), wantInErr: "is empty"},
		{name: "two lines", file: file("two", "first-line\nsecond-line\n"), wantInErr: "one line", secret: "first-line"},
		{name: "too large", file: file("large", strings.Repeat("x", maxPasswordFileSize+1)), wantInErr: "larger than", secret: "xxxx"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ReadPassword(tt.file)
			if tt.wantInErr == "" {
				if err != nil || got != tt.want {
					t.Fatalf("ReadPassword = %q, %v; want %q", got, err, tt.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("ReadPassword = %q, want an error", got)
			}
			if !strings.Contains(err.Error(), tt.wantInErr) || !strings.Contains(err.Error(), tt.file) {
				t.Errorf("error %q, want it to name %q and say %q", err, tt.file, tt.wantInErr)
			}
			if tt.secret != "" && strings.Contains(err.Error(), tt.secret) {
				t.Errorf("error %q contains the file's content", err)
			}
		})
	}
}

// Bad input is refused before anything is created or changed.
func TestInitDBRefusesBadInput(t *testing.T) {
	bin := realBin(t)
	u := runAs(t)
	root := pgTempDir(t)
	const secret = "do-not-show-me"
	pw := filepath.Join(root, "pw")
	writeFile(t, pw, secret+"\n", 0o600)
	multi := filepath.Join(root, "multi")
	writeFile(t, multi, secret+"\nline2\n", 0o600)
	empty := filepath.Join(root, "empty")
	writeFile(t, empty, "", 0o600)
	nonEmpty := filepath.Join(root, "nonempty")
	if err := os.Mkdir(nonEmpty, 0o700); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(nonEmpty, "file"), "x", 0o600)
	existing := filepath.Join(root, "existing")
	copyDataDir(t, existing, u)

	newDir := filepath.Join(root, "new", "pgdata")
	tests := []struct {
		name      string
		opts      InitOptions
		wantInErr string
		wantType  any
	}{
		{name: "no password file", opts: InitOptions{DataDir: newDir, RunAs: u}, wantInErr: "no password file"},
		{name: "missing password file", opts: InitOptions{DataDir: newDir, PasswordFile: filepath.Join(root, "nope"), RunAs: u}, wantInErr: "no such file"},
		{name: "password file is a directory", opts: InitOptions{DataDir: newDir, PasswordFile: root, RunAs: u}, wantInErr: "is a directory"},
		{name: "empty password file", opts: InitOptions{DataDir: newDir, PasswordFile: empty, RunAs: u}, wantInErr: "is empty"},
		{name: "multi-line password file", opts: InitOptions{DataDir: newDir, PasswordFile: multi, RunAs: u}, wantInErr: "one line"},
		{name: "no data dir", opts: InitOptions{PasswordFile: pw, RunAs: u}, wantInErr: "no data directory"},
		{name: "reserved superuser", opts: InitOptions{DataDir: newDir, PasswordFile: pw, RunAs: u, Superuser: "pg_admin"}, wantInErr: "not allowed"},
		{name: "temp dir inside data dir", opts: InitOptions{DataDir: newDir, PasswordFile: pw, RunAs: u, TempDir: filepath.Join(newDir, "tmp")}, wantInErr: "inside the data directory"},
		{name: "non-empty dir", opts: InitOptions{DataDir: nonEmpty, PasswordFile: pw, RunAs: u}, wantType: new(*NotDataDirError)},
		{name: "already initialized", opts: InitOptions{DataDir: existing, PasswordFile: pw, RunAs: u}, wantType: new(*AlreadyInitializedError)},
	}
	if u != nil {
		tests = append(tests, struct {
			name      string
			opts      InitOptions
			wantInErr string
			wantType  any
		}{name: "root without RunAs", opts: InitOptions{DataDir: newDir, PasswordFile: pw}, wantInErr: "cannot run as root"})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := snapshot(t, root)
			err := InitDB(context.Background(), bin, tt.opts)
			if err == nil {
				t.Fatal("InitDB succeeded, want an error")
			}
			if tt.wantInErr != "" && !strings.Contains(err.Error(), tt.wantInErr) {
				t.Errorf("error %q, want it to say %q", err, tt.wantInErr)
			}
			if tt.wantType != nil && !errors.As(err, tt.wantType) {
				t.Errorf("error %T (%v), want %T", err, err, tt.wantType)
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("error %q contains the password", err)
			}
			if diff := cmp.Diff(before, snapshot(t, root)); diff != "" {
				t.Errorf("InitDB changed the disk (-before +after):\n%s", diff)
			}
		})
	}
}

// passwordLeak records where the password was found while initdb ran.
type passwordLeak struct {
	mu       sync.Mutex
	checked  bool
	problems []string
	pwFile   string
}

func (l *passwordLeak) addf(format string, args ...any) {
	l.problems = append(l.problems, fmt.Sprintf(format, args...))
}

// inspect looks at the running initdb: its argv and environment as built and
// as the kernel shows them, and the password file it was given.
func (l *passwordLeak) inspect(cmd *exec.Cmd, password, dataDir string, u *User) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.checked = true
	for _, a := range append(append([]string{}, cmd.Args...), cmd.Env...) {
		if strings.Contains(a, password) {
			l.addf("argument or environment variable %q holds the password", a)
		}
	}
	pid := cmd.Process.Pid
	// Start returns once exec has closed the close-on-exec pipe, but the kernel
	// sets the new image's argument area a little later: until then cmdline
	// reads empty. Wait for it, bounded.
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err != nil || len(b) > 0 {
			break
		}
	}
	for _, f := range []string{"cmdline", "environ"} {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", pid, f))
		if err != nil {
			l.addf("cannot read /proc/%d/%s: %v", pid, f, err)
			continue
		}
		if len(b) == 0 && f == "cmdline" {
			l.addf("initdb exited before it could be inspected")
		}
		if strings.Contains(string(b), password) {
			l.addf("/proc/%d/%s holds the password", pid, f)
		}
	}
	for _, a := range cmd.Args {
		if v, ok := strings.CutPrefix(a, "--pwfile="); ok {
			l.pwFile = v
		}
	}
	if l.pwFile == "" {
		l.addf("initdb has no --pwfile")
		return
	}
	if within(l.pwFile, dataDir) {
		l.addf("password file %s is inside the data directory", l.pwFile)
	}
	for path, mode := range map[string]os.FileMode{l.pwFile: 0o600, filepath.Dir(l.pwFile): 0o700 | os.ModeDir} {
		fi, err := os.Stat(path)
		if err != nil {
			l.addf("cannot stat %s: %v", path, err)
			continue
		}
		if fi.Mode() != mode {
			l.addf("%s has mode %v, want %v", path, fi.Mode(), mode)
		}
		if !u.owns(fi) {
			l.addf("%s is not owned by the run-as user", path)
		}
	}
	if b, err := os.ReadFile(l.pwFile); err != nil || string(b) != password+"\n" {
		l.addf("password file does not hold the password and a newline (err %v)", err)
	}
}

func TestInitDB(t *testing.T) {
	bin := realBin(t)
	u := runAs(t)
	root := pgTempDir(t)
	password := `it's a "secret" \ with spaces ü`
	pw := filepath.Join(root, "pw")
	writeFile(t, pw, password+"\n", 0o600)
	dataDir := filepath.Join(root, "volume", "pgdata")

	leak := &passwordLeak{}
	testHookInitDBStarted = func(cmd *exec.Cmd) { leak.inspect(cmd, password, dataDir, u) }
	t.Cleanup(func() { testHookInitDBStarted = nil })

	ctx, cancel := context.WithTimeout(context.Background(), initdbTimeout)
	defer cancel()
	if err := InitDB(ctx, bin, InitOptions{DataDir: dataDir, PasswordFile: pw, Superuser: "admin", RunAs: u}); err != nil {
		t.Fatalf("InitDB: %v", err)
	}
	leak.mu.Lock()
	if !leak.checked {
		t.Error("the test hook did not run")
	}
	for _, p := range leak.problems {
		t.Error(p)
	}
	if _, err := os.Stat(filepath.Dir(leak.pwFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("password directory %s still exists after InitDB (err %v)", filepath.Dir(leak.pwFile), err)
	}
	leak.mu.Unlock()

	t.Run("data directory", func(t *testing.T) {
		for path, mode := range map[string]os.FileMode{dataDir: 0o700, filepath.Dir(dataDir): 0o755} {
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != mode {
				t.Errorf("%s has mode %v, want %v", path, fi.Mode().Perm(), mode)
			}
			if !u.owns(fi) {
				t.Errorf("%s is not owned by the run-as user", path)
			}
		}
		if st, err := InspectDataDir(dataDir, bin.Major); err != nil || st != Existing {
			t.Errorf("InspectDataDir = %v, %v; want existing", st, err)
		}
	})

	t.Run("checksums", func(t *testing.T) {
		cmd := exec.Command(bin.Path("pg_controldata"), "-D", dataDir)
		cmd.Env = minimalEnv(bin, u)
		u.SetCredential(cmd)
		out, err := reaper.CombinedOutput(cmd)
		if err != nil {
			t.Fatalf("pg_controldata: %v: %s", err, out)
		}
		if !regexp.MustCompile(`(?m)^Data page checksum version:\s+1$`).Match(out) {
			t.Errorf("pg_controldata does not show data checksums on:\n%s", out)
		}
	})

	t.Run("login with the password over scram", func(t *testing.T) {
		sock := socketDir(t, u)
		if _, err := WriteConfig(dataDir, Config{Port: 5432, SocketDir: sock}, u); err != nil {
			t.Fatal(err)
		}
		srv := startPostgres(t, bin, dataDir, sock, u)
		cfg, err := ConnConfig(sock, 5432, "admin", password)
		if err != nil {
			t.Fatal(err)
		}
		conn := srv.connect(t, cfg)
		ctx := context.Background()
		var user, stored, enc string
		if err := conn.QueryRow(ctx, "SELECT current_user, rolpassword FROM pg_authid WHERE rolname = current_user").Scan(&user, &stored); err != nil {
			t.Fatal(err)
		}
		if user != "admin" || !strings.HasPrefix(stored, "SCRAM-SHA-256$") {
			t.Errorf("current_user %q with stored password %.14q..., want admin with a SCRAM verifier", user, stored)
		}
		if err := conn.QueryRow(ctx, "SHOW server_encoding").Scan(&enc); err != nil || enc != "UTF8" {
			t.Errorf("server_encoding = %q, %v; want UTF8", enc, err)
		}

		bad, _ := ConnConfig(sock, 5432, "admin", "wrong password")
		c, err := pgxConnect(bad)
		if err == nil {
			c.Close(ctx)
			t.Fatal("logged in with a wrong password")
		}
		if !strings.Contains(err.Error(), "password authentication failed") {
			t.Errorf("wrong password: %v, want password authentication failed", err)
		}
	})
}

// TestInitDBFailure makes initdb itself fail (an unknown locale passes every
// check before it): the error carries initdb's output, not the password, and
// what InitDB created is gone.
func TestInitDBFailure(t *testing.T) {
	bin := realBin(t)
	u := runAs(t)
	root := pgTempDir(t)
	const password = "failure-secret-42"
	pw := filepath.Join(root, "pw")
	writeFile(t, pw, password, 0o600)
	existingEmpty := filepath.Join(root, "mountpoint")
	if err := os.Mkdir(existingEmpty, 0o755); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		dataDir string
		// wantLeft is what must exist afterwards (relative to root) besides the password file.
		wantLeft []string
	}{
		{name: "created", dataDir: filepath.Join(root, "a", "b", "pgdata"), wantLeft: []string{"mountpoint"}},
		{name: "existed empty", dataDir: existingEmpty, wantLeft: []string{"mountpoint"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := InitDB(context.Background(), bin, InitOptions{DataDir: tt.dataDir, PasswordFile: pw, RunAs: u, Locale: "xx_NOPE.bogus"})
			var ce *CommandError
			if !errors.As(err, &ce) {
				t.Fatalf("InitDB error %T (%v), want a *CommandError", err, err)
			}
			var exit *reaper.ExitError
			if !errors.As(err, &exit) {
				t.Errorf("error %v does not wrap the exit status", err)
			}
			if !strings.Contains(ce.Output, "xx_NOPE.bogus") {
				t.Errorf("error output %q, want initdb's complaint about the locale", ce.Output)
			}
			if strings.Contains(err.Error(), password) {
				t.Errorf("error %q contains the password", err)
			}
			entries, _ := os.ReadDir(root)
			var left []string
			for _, e := range entries {
				if e.Name() != "pw" {
					left = append(left, e.Name())
				}
			}
			if diff := cmp.Diff(tt.wantLeft, left); diff != "" {
				t.Errorf("left behind (-want +got):\n%s", diff)
			}
			if inner, _ := os.ReadDir(existingEmpty); len(inner) != 0 {
				t.Errorf("%s is not empty after the failure: %v", existingEmpty, inner)
			}
		})
	}
}

// TestInitDBCancelled: cancelling the context stops initdb and cleans up.
func TestInitDBCancelled(t *testing.T) {
	bin := realBin(t)
	u := runAs(t)
	root := pgTempDir(t)
	pw := filepath.Join(root, "pw")
	writeFile(t, pw, "cancel-secret", 0o600)
	dataDir := filepath.Join(root, "pgdata")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	testHookInitDBStarted = func(*exec.Cmd) { cancel() }
	t.Cleanup(func() { testHookInitDBStarted = nil })
	err := InitDB(ctx, bin, InitOptions{DataDir: dataDir, PasswordFile: pw, RunAs: u})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("InitDB = %v, want context.Canceled", err)
	}
	if _, err := os.Stat(dataDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s exists after a cancelled InitDB (err %v)", dataDir, err)
	}
}
