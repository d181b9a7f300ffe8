package postgres

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestConnConfig(t *testing.T) {
	const password = "conn-secret-'\\-value"
	for k, v := range map[string]string{"PGHOST": "/elsewhere", "PGPORT": "1", "PGPASSWORD": "env-password", "PGDATABASE": "nope",
		"PGSSLMODE": "require", "PGOPTIONS": "-c work_mem=1MB", "PGTARGETSESSIONATTRS": "standby", "PGAPPNAME": "other"} {
		t.Setenv(k, v)
	}
	cfg, err := ConnConfig("/run/pg sock", 5433, "o'brien", password)
	if err != nil {
		t.Fatal(err)
	}
	got := struct {
		Host, User, Database, Password string
		Port                           uint16
		TLS, Validate                  bool
		Fallbacks                      int
		RuntimeParams                  map[string]string
		Timeout                        time.Duration
		RequireAuth                    string
	}{cfg.Host, cfg.User, cfg.Database, cfg.Password, cfg.Port, cfg.TLSConfig != nil, cfg.ValidateConnect != nil,
		len(cfg.Fallbacks), cfg.RuntimeParams, cfg.ConnectTimeout, cfg.RequireAuth}
	want := got
	want.Host, want.User, want.Database, want.Password, want.Port = "/run/pg sock", "o'brien", "postgres", password, 5433
	want.TLS, want.Validate, want.Fallbacks = false, false, 0
	want.RuntimeParams = map[string]string{"application_name": ApplicationName}
	want.Timeout, want.RequireAuth = ConnectTimeout, "scram-sha-256"
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("ConnConfig (-want +got):\n%s", diff)
	}
	if s := cfg.ConnString(); strings.Contains(s, password) || strings.Contains(s, "password") {
		t.Errorf("ConnString() = %q holds a password", s)
	}

	for _, bad := range []struct {
		sock string
		port int
		user string
	}{{"relative", 5432, "u"}, {"/tmp", 0, "u"}, {"/tmp", 70000, "u"}, {"/tmp", 5432, ""}} {
		if _, err := ConnConfig(bad.sock, bad.port, bad.user, password); err == nil {
			t.Errorf("ConnConfig(%q, %d, %q) succeeded, want an error", bad.sock, bad.port, bad.user)
		} else if strings.Contains(err.Error(), password) {
			t.Errorf("error %q holds the password", err)
		}
	}
}
