package postgres

import (
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestRunAsUser(t *testing.T) {
	if os.Geteuid() == 0 {
		pg, err := user.Lookup("postgres")
		if err != nil {
			t.Skip("no postgres user on this machine")
		}
		uid, _ := strconv.Atoi(pg.Uid)
		gid, _ := strconv.Atoi(pg.Gid)
		got, err := RunAsUser("postgres")
		if err != nil {
			t.Fatal(err)
		}
		want := &User{Name: "postgres", UID: uint32(uid), GID: uint32(gid), Home: pg.HomeDir}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("RunAsUser(postgres) (-want +got):\n%s", diff)
		}
		if _, err := RunAsUser("no-such-user-pgwarden"); err == nil || !strings.Contains(err.Error(), "no-such-user-pgwarden") {
			t.Errorf("RunAsUser(missing) error %v, want one naming the user", err)
		}
		if _, err := RunAsUser("root"); err == nil {
			t.Error("RunAsUser(root) succeeded, want an error")
		}
	}

	// Not root: run as ourselves, whatever the name.
	old := geteuid
	geteuid = func() int { return 1000 }
	t.Cleanup(func() { geteuid = old })
	for _, name := range []string{"postgres", "no-such-user-pgwarden", ""} {
		if u, err := RunAsUser(name); u != nil || err != nil {
			t.Errorf("RunAsUser(%q) when not root = %+v, %v; want nil, nil", name, u, err)
		}
	}
}

func TestUserHelpers(t *testing.T) {
	var none *User
	cmd := exec.Command("true")
	none.SetCredential(cmd)
	if cmd.SysProcAttr != nil {
		t.Errorf("nil User set SysProcAttr %+v", cmd.SysProcAttr)
	}
	path := filepath.Join(t.TempDir(), "f")
	writeFile(t, path, "", 0o600)
	if err := none.Chown(path); err != nil {
		t.Errorf("nil User Chown: %v", err)
	}

	u := &User{Name: "x", UID: 4242, GID: 4343}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	u.SetCredential(cmd)
	want := &syscall.SysProcAttr{Setpgid: true, Credential: &syscall.Credential{Uid: 4242, Gid: 4343, Groups: []uint32{4343}}}
	if diff := cmp.Diff(want, cmd.SysProcAttr); diff != "" {
		t.Errorf("SetCredential (-want +got):\n%s", diff)
	}
	if os.Geteuid() == 0 {
		if err := u.Chown(path); err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if !u.owns(fi) {
			t.Errorf("%s not owned by %d:%d after Chown", path, u.UID, u.GID)
		}
	}
}
