package postgres

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"strings"
	"syscall"
)

// User is the OS user postgres runs as when the manager runs as root.
type User struct {
	Name     string
	UID, GID uint32
	Home     string
}

// geteuid is os.Geteuid; a variable so tests can pretend not to be root.
var geteuid = os.Geteuid

// RunAsUser returns the user postgres must run as. When the current process is
// root it looks up name, which must exist (PostgreSQL refuses to run as root).
// When the current process is not root it returns nil, nil: postgres then runs
// as the current user, and the helpers of *User do nothing.
func RunAsUser(name string) (*User, error) {
	if geteuid() != 0 {
		return nil, nil
	}
	if name == "" {
		return nil, fmt.Errorf("cannot run postgres as root: no user to run it as was given")
	}
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("cannot run postgres as user %q: %w", name, err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("cannot run postgres as user %q: bad uid %q", name, u.Uid)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("cannot run postgres as user %q: bad gid %q", name, u.Gid)
	}
	if uid == 0 {
		return nil, fmt.Errorf("cannot run postgres as user %q: it is root (uid 0), which PostgreSQL refuses", name)
	}
	return &User{Name: u.Username, UID: uint32(uid), GID: uint32(gid), Home: u.HomeDir}, nil
}

// SetCredential makes cmd run as u, with u's primary group as its only group.
// A nil u leaves cmd unchanged (it runs as the current user).
func (u *User) SetCredential(cmd *exec.Cmd) {
	if u == nil {
		return
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Credential = &syscall.Credential{Uid: u.UID, Gid: u.GID, Groups: []uint32{u.GID}}
}

// Chown gives path (not following a final symlink) to u. A nil u does nothing.
func (u *User) Chown(path string) error {
	if u == nil {
		return nil
	}
	return os.Lchown(path, int(u.UID), int(u.GID))
}

// owns reports whether st belongs to u (for a nil u: to the current user).
func (u *User) owns(fi os.FileInfo) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return true
	}
	if u == nil {
		return st.Uid == uint32(os.Geteuid())
	}
	return st.Uid == u.UID && st.Gid == u.GID
}

// home is the HOME given to commands run as u.
func (u *User) home() string {
	if u == nil {
		return os.Getenv("HOME")
	}
	if u.Home == "" {
		return "/"
	}
	return u.Home
}

// minimalEnv is the whole environment of the commands this package runs: the
// manager's own environment may hold secrets and PG* variables, none of which
// must reach initdb or postgres.
func minimalEnv(b Bin, u *User) []string {
	env := []string{
		"PATH=" + b.Dir + ":/usr/local/bin:/usr/bin:/bin",
		"HOME=" + u.home(),
		"LC_ALL=C.UTF-8",
	}
	if tz, ok := os.LookupEnv("TZ"); ok {
		env = append(env, "TZ="+tz)
	}
	return env
}

// trimOutput shortens a command's output for an error message.
func trimOutput(out []byte) string {
	const max = 4096
	s := strings.TrimSpace(string(out))
	if len(s) > max {
		s = "..." + s[len(s)-max:]
	}
	return s
}
