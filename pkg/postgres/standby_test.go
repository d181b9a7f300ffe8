package postgres

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestStandbySettings(t *testing.T) {
	c := StandbyConfig{PrimaryHost: "pod-0.svc", PrimaryPort: 5432, User: "pgwarden_replication",
		Passfile: "/run/pgwarden/pgpass", ApplicationName: "pod-1", SlotName: "pod_1"}
	got, err := c.Settings()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"primary_conninfo": "host='pod-0.svc' port=5432 user='pgwarden_replication' passfile='/run/pgwarden/pgpass' " +
			"connect_timeout=10 application_name='pod-1'",
		"recovery_target_timeline": "latest",
		"primary_slot_name":        "pod_1",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Settings (-want +got):\n%s", diff)
	}
	// They must be acceptable to WriteConfig.
	if _, err := renderConfig(Config{Port: 5432, SocketDir: "/tmp", Managed: got}); err != nil {
		t.Errorf("renderConfig refuses the settings: %v", err)
	}

	for _, bad := range []StandbyConfig{
		{PrimaryPort: 5432, User: "u", Passfile: "/p"},
		{PrimaryHost: "h", User: "u", Passfile: "/p"},
		{PrimaryHost: "h", PrimaryPort: 5432, Passfile: "/p"},
		{PrimaryHost: "h", PrimaryPort: 5432, User: "u", Passfile: "relative"},
		{PrimaryHost: "h", PrimaryPort: 5432, User: "u", Passfile: "/p", ApplicationName: "pöd"},
		{PrimaryHost: "h", PrimaryPort: 5432, User: "u", Passfile: "/p", SlotName: "Bad-Slot"},
	} {
		if _, err := bad.Settings(); err == nil {
			t.Errorf("Settings(%+v) succeeded, want an error", bad)
		}
	}
}

func TestStandbySignal(t *testing.T) {
	dir := t.TempDir()
	if has, err := HasStandbySignal(dir); err != nil || has {
		t.Fatalf("HasStandbySignal = %v, %v; want false", has, err)
	}
	for range 2 { // idempotent
		if err := WriteStandbySignal(dir, nil); err != nil {
			t.Fatal(err)
		}
	}
	fi, err := os.Stat(filepath.Join(dir, StandbySignalFile))
	if err != nil || fi.Size() != 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("standby.signal: %v, %v", fi, err)
	}
	if has, err := HasStandbySignal(dir); err != nil || !has {
		t.Fatalf("HasStandbySignal = %v, %v; want true", has, err)
	}
	for range 2 {
		if err := RemoveStandbySignal(dir); err != nil {
			t.Fatal(err)
		}
	}
	if has, _ := HasStandbySignal(dir); has {
		t.Fatal("standby.signal still there")
	}
	if err := WriteStandbySignal(filepath.Join(dir, "missing"), nil); err == nil {
		t.Error("WriteStandbySignal into a missing directory succeeded")
	}
}

func TestStandbyPassfile(t *testing.T) {
	const password = `pa:ss\word 'x' `
	dir := filepath.Join(t.TempDir(), "private")
	path := filepath.Join(dir, "pgpass")
	if err := WritePassfile(path, "", 0, "repl:user", password, nil); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("passfile directory: %v, %v; want mode 0700", fi, err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("passfile: %v, %v; want mode 0600", fi, err)
	}
	data, _ := os.ReadFile(path)
	if want := `*:*:*:repl\:user:pa\:ss\\word 'x' ` + "\n"; string(data) != want {
		t.Errorf("passfile = %q, want %q", data, want)
	}
	for _, tt := range []struct {
		host, user string
		want       string
	}{
		{"any", "repl:user", password},
		{"/run/sock", "repl:user", password},
		{"any", "other", ""},
	} {
		got, err := passfileLookup(path, tt.host, 5432, "replication", tt.user)
		if err != nil || got != tt.want {
			t.Errorf("passfileLookup(%q, %q) = %q, %v; want %q", tt.host, tt.user, got, err, tt.want)
		}
	}

	// A specific host and port; a socket directory also matches "localhost".
	if err := WritePassfile(path, "db:1", 6432, "u", "pw", nil); err != nil {
		t.Fatal(err)
	}
	if got, _ := passfileLookup(path, "db:1", 6432, "postgres", "u"); got != "pw" {
		t.Errorf("escaped host not found: %q", got)
	}
	if got, _ := passfileLookup(path, "db:1", 5432, "postgres", "u"); got != "" {
		t.Errorf("other port matched: %q", got)
	}
	writeFile(t, path, "# comment\nlocalhost:*:*:u:sockpw\n", 0o600)
	if got, _ := passfileLookup(path, "/run/sock", 5432, "replication", "u"); got != "sockpw" {
		t.Errorf("socket directory did not match localhost: %q", got)
	}

	for _, bad := range []struct{ path, user, password string }{
		{"relative/pgpass", "u", "pw"},
		{path, "", "pw"},
		{path, "u", ""},
		{path, "u", "two\nlines"},
	} {
		err := WritePassfile(bad.path, "", 0, bad.user, bad.password, nil)
		if err == nil {
			t.Errorf("WritePassfile(%q, %q) succeeded", bad.path, bad.user)
		} else if bad.password != "" && strings.Contains(err.Error(), bad.password) {
			t.Errorf("error %q holds the password", err)
		}
	}
}
