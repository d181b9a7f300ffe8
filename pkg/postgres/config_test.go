package postgres

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func countLines(s, line string) int {
	n := 0
	for _, l := range strings.Split(s, "\n") {
		if strings.TrimSpace(l) == line {
			n++
		}
	}
	return n
}

func TestWriteConfig(t *testing.T) {
	dir := t.TempDir()
	main := filepath.Join(dir, MainConfFile)
	// A postgresql.conf with the include block in the middle, twice: it ends up once, last.
	writeFile(t, main, "max_connections = 100\n"+strings.Join(includeLines, "\n")+"\nwork_mem = 1MB\ninclude 'pgwarden.conf'\n", 0o644)
	cfg := Config{
		Port:            5433,
		ListenAddresses: "*",
		SocketDir:       "/run/pgwarden",
		Parameters:      map[string]string{"shared_buffers": "256MB", "max_wal_senders": "20", "x.quote": `it's \ here`},
		Managed:         map[string]string{"primary_conninfo": "host=pod-0 user=replicator", "max_replication_slots": "32"},
	}

	changed, err := WriteConfig(dir, cfg, nil)
	if err != nil || !changed {
		t.Fatalf("first WriteConfig = %v, %v; want changed", changed, err)
	}

	t.Run("postgresql.conf includes once, last", func(t *testing.T) {
		got := readFile(t, main)
		want := "max_connections = 100\nwork_mem = 1MB\n\n" + strings.Join(includeLines, "\n") + "\n"
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("postgresql.conf (-want +got):\n%s", diff)
		}
	})
	t.Run("pgwarden.conf", func(t *testing.T) {
		got := readFile(t, filepath.Join(dir, ManagerConfFile))
		for _, line := range []string{
			"listen_addresses = '*'",
			"port = '5433'",
			"unix_socket_directories = '/run/pgwarden'",
			"password_encryption = 'scram-sha-256'",
			"wal_level = 'replica'",
			"hot_standby = 'on'",
			"wal_log_hints = 'on'",
			"logging_collector = 'off'",
			"log_destination = 'stderr'",
			"log_line_prefix = '%m [%p] '",
			"primary_conninfo = 'host=pod-0 user=replicator'",
			"max_replication_slots = '32'", // managed overrides the default
		} {
			if countLines(got, line) != 1 {
				t.Errorf("pgwarden.conf lacks %q:\n%s", line, got)
			}
		}
		// The user set max_wal_senders: the manager's default must not override it.
		if strings.Contains(got, "max_wal_senders") {
			t.Errorf("pgwarden.conf sets max_wal_senders, which the user set:\n%s", got)
		}
	})
	t.Run("pgwarden-user.conf", func(t *testing.T) {
		got := readFile(t, filepath.Join(dir, UserConfFile))
		want := generatedHeader + "# The user's parameters. Included before pgwarden.conf.\n" +
			"max_wal_senders = '20'\nshared_buffers = '256MB'\nx.quote = 'it''s \\\\ here'\n"
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("pgwarden-user.conf (-want +got):\n%s", diff)
		}
	})
	t.Run("pg_hba.conf", func(t *testing.T) {
		got := readFile(t, filepath.Join(dir, HBAFile))
		if strings.Contains(got, "trust") {
			t.Errorf("pg_hba.conf has a trust entry:\n%s", got)
		}
		for _, kind := range []string{"local all", "local replication", "host all", "host replication"} {
			found := false
			for _, l := range strings.Split(got, "\n") {
				f := strings.Fields(l)
				if len(f) >= 3 && f[0]+" "+f[1] == kind && f[len(f)-1] == "scram-sha-256" {
					found = true
				}
			}
			if !found {
				t.Errorf("pg_hba.conf has no scram-sha-256 %q entry:\n%s", kind, got)
			}
		}
	})
	t.Run("files are 0600", func(t *testing.T) {
		for _, f := range []string{MainConfFile, ManagerConfFile, UserConfFile, HBAFile} {
			fi, err := os.Stat(filepath.Join(dir, f))
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != 0o600 {
				t.Errorf("%s has mode %v, want 0600", f, fi.Mode().Perm())
			}
		}
	})
	t.Run("idempotent", func(t *testing.T) {
		before := snapshot(t, dir)
		changed, err := WriteConfig(dir, cfg, nil)
		if err != nil || changed {
			t.Fatalf("second WriteConfig = %v, %v; want unchanged", changed, err)
		}
		if diff := cmp.Diff(before, snapshot(t, dir)); diff != "" {
			t.Errorf("second WriteConfig touched files (-before +after):\n%s", diff)
		}
	})
	t.Run("a change is written", func(t *testing.T) {
		cfg2 := cfg
		cfg2.Managed = map[string]string{"primary_conninfo": "host=pod-1 user=replicator"}
		changed, err := WriteConfig(dir, cfg2, nil)
		if err != nil || !changed {
			t.Fatalf("WriteConfig = %v, %v; want changed", changed, err)
		}
		if got := readFile(t, filepath.Join(dir, ManagerConfFile)); !strings.Contains(got, "host=pod-1") {
			t.Errorf("pgwarden.conf not updated:\n%s", got)
		}
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if strings.Contains(e.Name(), ".tmp-") {
				t.Errorf("temporary file %s left behind", e.Name())
			}
		}
	})
}

func TestWriteConfigCreatesPostgresqlConf(t *testing.T) {
	dir := t.TempDir()
	if _, err := WriteConfig(dir, Config{Port: 5432, SocketDir: "/tmp"}, nil); err != nil {
		t.Fatal(err)
	}
	want := strings.Join(includeLines, "\n") + "\n"
	if diff := cmp.Diff(want, readFile(t, filepath.Join(dir, MainConfFile))); diff != "" {
		t.Errorf("postgresql.conf (-want +got):\n%s", diff)
	}
}

// Bad input is refused and nothing is written.
func TestWriteConfigRejects(t *testing.T) {
	good := Config{Port: 5432, SocketDir: "/run/pgwarden"}
	tests := []struct {
		name   string
		modify func(c *Config)
		want   string
	}{
		{name: "managed parameter in user file", modify: func(c *Config) { c.Parameters = map[string]string{"work_mem": "1MB", "port": "1"} }, want: "port is set by pgwarden"},
		{name: "synchronous_standby_names by the user", modify: func(c *Config) { c.Parameters = map[string]string{"synchronous_standby_names": "*"} }, want: "synchronous_standby_names"},
		{name: "wal_level minimal", modify: func(c *Config) { c.Parameters = map[string]string{"wal_level": "minimal"} }, want: "wal_level"},
		{name: "bad user name", modify: func(c *Config) { c.Parameters = map[string]string{"bad name": "1"} }, want: "not a valid parameter name"},
		{name: "managed port", modify: func(c *Config) { c.Managed = map[string]string{"port": "1"} }, want: "Config's own field"},
		{name: "managed bad name", modify: func(c *Config) { c.Managed = map[string]string{"x;y": "1"} }, want: "not a valid parameter name"},
		{name: "port zero", modify: func(c *Config) { c.Port = 0 }, want: "port 0"},
		{name: "relative socket dir", modify: func(c *Config) { c.SocketDir = "run" }, want: "not an absolute path"},
		{name: "NUL in value", modify: func(c *Config) { c.Parameters = map[string]string{"x.y": "a\x00b"} }, want: "NUL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			writeFile(t, filepath.Join(dir, MainConfFile), "# original\n", 0o600)
			before := snapshot(t, dir)
			cfg := good
			tt.modify(&cfg)
			changed, err := WriteConfig(dir, cfg, nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("WriteConfig = %v, %v; want an error saying %q", changed, err, tt.want)
			}
			if diff := cmp.Diff(before, snapshot(t, dir)); diff != "" {
				t.Errorf("WriteConfig wrote despite the error (-before +after):\n%s", diff)
			}
		})
	}
}

// TestWriteConfigPostgres runs a real postgres on the rendered configuration.
func TestWriteConfigPostgres(t *testing.T) {
	bin := realBin(t)
	u := runAs(t)
	root := pgTempDir(t)
	dataDir := filepath.Join(root, "pgdata")
	copyDataDir(t, dataDir, u)
	sock := socketDir(t, u)

	// A setting left in postgresql.conf (say, from an earlier life) must lose to pgwarden.conf.
	main := filepath.Join(dataDir, MainConfFile)
	writeFile(t, main, readFile(t, main)+"\nport = 6543\nlog_line_prefix = 'other '\n", 0o600)

	tricky := `it's a \ test with 'quotes' and \\ two`
	cfg := Config{
		Port:      5432,
		SocketDir: sock,
		Parameters: map[string]string{
			"pgwarden_test.value": tricky,
			"work_mem":            "8MB",
			"max_wal_senders":     "7",
			"search_path":         `"$user", public`,
		},
		Managed: map[string]string{"primary_conninfo": "host=pod-0 application_name='pod 1'"},
	}
	if _, err := WriteConfig(dataDir, cfg, u); err != nil {
		t.Fatal(err)
	}
	// The environment must not steer the manager's connection elsewhere.
	for k, v := range map[string]string{"PGHOST": "/nonexistent", "PGPORT": "1", "PGPASSWORD": "wrong", "PGDATABASE": "nope",
		"PGSSLMODE": "require", "PGOPTIONS": "-c work_mem=1MB", "PGTARGETSESSIONATTRS": "standby", "PGUSER": "nobody"} {
		t.Setenv(k, v)
	}
	srv := startPostgres(t, bin, dataDir, sock, u)
	cfgConn, err := ConnConfig(sock, 5432, "postgres", templatePassword)
	if err != nil {
		t.Fatal(err)
	}
	conn := srv.connect(t, cfgConn)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	show := func(name string) string {
		t.Helper()
		var v string
		if err := conn.QueryRow(ctx, "SELECT current_setting($1)", name).Scan(&v); err != nil {
			t.Fatalf("SHOW %s: %v", name, err)
		}
		return v
	}
	for name, want := range map[string]string{
		"pgwarden_test.value":     tricky,
		"work_mem":                "8MB",
		"max_wal_senders":         "7",
		"search_path":             `"$user", public`,
		"port":                    "5432",
		"log_line_prefix":         LogLinePrefix,
		"wal_level":               "replica",
		"hot_standby":             "on",
		"wal_log_hints":           "on",
		"logging_collector":       "off",
		"password_encryption":     "scram-sha-256",
		"data_checksums":          "on",
		"unix_socket_directories": sock,
		"primary_conninfo":        "host=pod-0 application_name='pod 1'",
		"application_name":        ApplicationName,
	} {
		if got := show(name); got != want {
			t.Errorf("SHOW %s = %q, want %q", name, got, want)
		}
	}

	t.Run("no configuration file errors", func(t *testing.T) {
		errs, err := ConfigFileErrors(ctx, conn)
		if err != nil {
			t.Fatal(err)
		}
		if len(errs) != 0 {
			t.Errorf("ConfigFileErrors = %+v, want none", errs)
		}
	})
	t.Run("checkpoint", func(t *testing.T) {
		if err := Checkpoint(ctx, conn); err != nil {
			t.Error(err)
		}
	})
	t.Run("not in recovery", func(t *testing.T) {
		if r, err := IsInRecovery(ctx, conn); err != nil || r {
			t.Errorf("IsInRecovery = %v, %v; want false", r, err)
		}
	})
	t.Run("reload and pending restart", func(t *testing.T) {
		cfg2 := cfg
		cfg2.Parameters = maps(cfg.Parameters, map[string]string{"work_mem": "16MB", "max_connections": "42"})
		changed, err := WriteConfig(dataDir, cfg2, u)
		if err != nil || !changed {
			t.Fatalf("WriteConfig = %v, %v; want changed", changed, err)
		}
		if err := Reload(ctx, conn); err != nil {
			t.Fatal(err)
		}
		// The reload is asynchronous: wait until a reloadable change shows.
		waitFor(t, "work_mem to become 16MB", func() bool { return show("work_mem") == "16MB" })
		got, err := PendingRestart(ctx, conn)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff([]string{"max_connections"}, got); diff != "" {
			t.Errorf("PendingRestart (-want +got):\n%s", diff)
		}
	})
	t.Run("bad value reported before reload", func(t *testing.T) {
		cfg3 := cfg
		cfg3.Parameters = maps(cfg.Parameters, map[string]string{"shared_buffers": "lots"})
		if _, err := WriteConfig(dataDir, cfg3, u); err != nil {
			t.Fatal(err)
		}
		errs, err := ConfigFileErrors(ctx, conn)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(errs, func(e ConfigFileError) bool {
			return e.Name == "shared_buffers" && strings.HasSuffix(e.File, UserConfFile)
		}) {
			t.Errorf("ConfigFileErrors = %+v, want shared_buffers in %s", errs, UserConfFile)
		}
	})
	t.Run("ALTER SYSTEM overrides", func(t *testing.T) {
		for _, q := range []string{"ALTER SYSTEM SET port = 5555", "ALTER SYSTEM SET work_mem = '2MB'", "ALTER SYSTEM SET primary_conninfo = 'host=elsewhere'"} {
			if _, err := conn.Exec(ctx, q); err != nil {
				t.Fatal(err)
			}
		}
		got, err := AutoConfOverrides(dataDir, cfg.Managed)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff([]string{"port", "primary_conninfo"}, got); diff != "" {
			t.Errorf("AutoConfOverrides (-want +got):\n%s", diff)
		}
	})
}

// maps returns a copy of base with over applied.
func maps(base, over map[string]string) map[string]string {
	m := make(map[string]string, len(base)+len(over))
	for k, v := range base {
		m[k] = v
	}
	for k, v := range over {
		m[k] = v
	}
	return m
}

// waitFor polls cond until it holds or a deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(30 * time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline.C:
			t.Fatalf("timed out waiting for %s", what)
		case <-tick.C:
		}
	}
}
