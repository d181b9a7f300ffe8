package postgres

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// LogLinePrefix is postgres' log_line_prefix: a timestamp with milliseconds and
// the process ID. The log re-emitter parses it; keep the two in step.
const LogLinePrefix = "%m [%p] "

// Names of the files WriteConfig keeps in the data directory.
const (
	ManagerConfFile = "pgwarden.conf"      // the manager's settings, included last
	UserConfFile    = "pgwarden-user.conf" // the user's parameters, included first
	HBAFile         = "pg_hba.conf"
	MainConfFile    = "postgresql.conf"
)

// Defaults of pgwarden.conf that the user may override in their parameters
// (within the limits ValidateParameters sets); pgwarden.conf then leaves them
// out, since it is included last and would win.
var overridableDefaults = map[string]string{
	"wal_level":             "replica",
	"max_wal_senders":       "10",
	"max_replication_slots": "10",
}

// Config is what WriteConfig renders.
type Config struct {
	// Port postgres listens on (TCP and the socket's name), 1-65535.
	Port int
	// ListenAddresses is listen_addresses; "" means no TCP at all (only the socket).
	ListenAddresses string
	// SocketDir is the absolute directory of the unix socket the manager connects through.
	SocketDir string
	// Parameters are the user's (see ParseParameters); they go to pgwarden-user.conf.
	Parameters map[string]string
	// Managed are further settings of the manager (primary_conninfo,
	// synchronous_standby_names, ...). They go to pgwarden.conf and may override
	// its defaults, but not Port, ListenAddresses or SocketDir.
	Managed map[string]string
}

// WriteConfig writes, in dataDir, pgwarden.conf (the manager's settings and
// cfg.Managed), pgwarden-user.conf (cfg.Parameters), pg_hba.conf (scram-sha-256
// everywhere, replication included), and makes postgresql.conf end with
//
//	include 'pgwarden-user.conf'
//	include 'pgwarden.conf'
//
// exactly once, so the manager's settings win over the user's. Each file is
// replaced atomically, mode 0600 and owned by owner (nil: the current user),
// and only when its content differs; changed reports whether any content did.
// Invalid input is refused before anything is written.
//
// Settings made with ALTER SYSTEM (postgresql.auto.conf) still win over all of
// these: see AutoConfOverrides.
func WriteConfig(dataDir string, cfg Config, owner *User) (changed bool, err error) {
	files, err := renderConfig(cfg)
	if err != nil {
		return false, fmt.Errorf("cannot write configuration: %w", err)
	}
	st, err := os.Stat(dataDir)
	if err != nil {
		return false, fmt.Errorf("cannot write configuration: %w", err)
	}
	if !st.IsDir() {
		return false, fmt.Errorf("cannot write configuration: %s is not a directory", dataDir)
	}
	main := filepath.Join(dataDir, MainConfFile)
	old, err := os.ReadFile(main)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("cannot write configuration: %w", err)
	}
	// The included files first: postgresql.conf must never name a missing file.
	for _, f := range []struct {
		name string
		data []byte
	}{
		{UserConfFile, files.user},
		{ManagerConfFile, files.manager},
		{HBAFile, files.hba},
		{MainConfFile, withIncludes(old)},
	} {
		c, err := writeFileAtomic(filepath.Join(dataDir, f.name), f.data, owner)
		if err != nil {
			return changed, fmt.Errorf("cannot write configuration: %w", err)
		}
		changed = changed || c
	}
	return changed, nil
}

type renderedConfig struct {
	manager, user, hba []byte
}

const generatedHeader = "# Written by pgwarden; do not edit: it is rewritten whenever the instance manager starts or reconfigures.\n"

func renderConfig(cfg Config) (renderedConfig, error) {
	if cfg.Port < 1 || cfg.Port > 65535 {
		return renderedConfig{}, fmt.Errorf("port %d is out of range", cfg.Port)
	}
	if !filepath.IsAbs(cfg.SocketDir) {
		return renderedConfig{}, fmt.Errorf("socket directory %q is not an absolute path", cfg.SocketDir)
	}
	if strings.ContainsAny(cfg.SocketDir, ",\x00") {
		return renderedConfig{}, fmt.Errorf("socket directory %q must not contain a comma", cfg.SocketDir)
	}
	if strings.IndexByte(cfg.ListenAddresses, 0) >= 0 {
		return renderedConfig{}, fmt.Errorf("listen addresses contain a NUL byte")
	}
	if err := ValidateParameters(cfg.Parameters); err != nil {
		return renderedConfig{}, err
	}

	settings := map[string]string{
		"listen_addresses":        cfg.ListenAddresses,
		"port":                    strconv.Itoa(cfg.Port),
		"unix_socket_directories": cfg.SocketDir,
		"password_encryption":     "scram-sha-256",
		"hot_standby":             "on",
		"wal_log_hints":           "on",
		"logging_collector":       "off",
		"log_destination":         "stderr",
		"log_line_prefix":         LogLinePrefix,
	}
	fromConfig := map[string]bool{"listen_addresses": true, "port": true, "unix_socket_directories": true}
	for name, value := range overridableDefaults {
		if _, set := cfg.Parameters[name]; !set {
			settings[name] = value
		}
	}
	var problems []string
	for name, value := range cfg.Managed {
		switch {
		case !validName(name) || name != strings.ToLower(name):
			problems = append(problems, fmt.Sprintf("%q is not a valid parameter name", name))
		case fromConfig[name]:
			problems = append(problems, fmt.Sprintf("%s is set from Config's own field", name))
		case strings.IndexByte(value, 0) >= 0:
			problems = append(problems, fmt.Sprintf("%s: value contains a NUL byte", name))
		default:
			settings[name] = value
		}
	}
	if len(problems) > 0 {
		sort.Strings(problems)
		return renderedConfig{}, fmt.Errorf("invalid managed parameters: %s", strings.Join(problems, "; "))
	}
	return renderedConfig{
		manager: renderSettings(generatedHeader+"# The instance manager's settings. Included last in postgresql.conf, so they win.\n", settings),
		user:    renderSettings(generatedHeader+"# The user's parameters. Included before pgwarden.conf.\n", cfg.Parameters),
		hba:     []byte(hbaConf),
	}, nil
}

// renderSettings writes one `name = 'value'` line per setting, sorted by name.
func renderSettings(header string, settings map[string]string) []byte {
	names := make([]string, 0, len(settings))
	for n := range settings {
		names = append(names, n)
	}
	sort.Strings(names)
	var b bytes.Buffer
	b.WriteString(header)
	for _, n := range names {
		fmt.Fprintf(&b, "%s = %s\n", n, quoteValue(settings[n]))
	}
	return b.Bytes()
}

// hbaConf: every connection authenticates with SCRAM; there is no trust entry.
const hbaConf = generatedHeader + `# TYPE  DATABASE     USER  ADDRESS    METHOD
local   all          all              scram-sha-256
local   replication  all              scram-sha-256
host    all          all   0.0.0.0/0  scram-sha-256
host    all          all   ::/0       scram-sha-256
host    replication  all   0.0.0.0/0  scram-sha-256
host    replication  all   ::/0       scram-sha-256
`

const includeMarker = "# pgwarden: the user's parameters, then the manager's settings. Keep these lines last."

var includeLines = []string{
	includeMarker,
	"include '" + UserConfFile + "'",
	"include '" + ManagerConfFile + "'",
}

// withIncludes returns postgresql.conf with pgwarden's include block removed
// wherever it was and appended at the end, so it appears once and nothing follows it.
func withIncludes(conf []byte) []byte {
	var out bytes.Buffer
	lines := strings.SplitAfter(string(conf), "\n")
	for _, l := range lines {
		t := strings.TrimSpace(l)
		if t == "" && l == "" {
			continue
		}
		if isIncludeLine(t) {
			continue
		}
		out.WriteString(l)
	}
	s := strings.TrimRight(out.String(), "\n")
	out.Reset()
	if s != "" {
		out.WriteString(s)
		out.WriteString("\n\n")
	}
	for _, l := range includeLines {
		out.WriteString(l)
		out.WriteByte('\n')
	}
	return out.Bytes()
}

func isIncludeLine(t string) bool {
	for _, l := range includeLines {
		if t == l {
			return true
		}
	}
	return false
}

// writeFileAtomic replaces path with data (mode 0600, owned by owner) through a
// temporary file and a rename, unless it already holds data. It reports
// whether the content changed. Mode and owner are corrected either way.
func writeFileAtomic(path string, data []byte, owner *User) (bool, error) {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		fi, err := os.Lstat(path)
		if err != nil {
			return false, err
		}
		if fi.Mode().Perm() != 0o600 {
			if err := os.Chmod(path, 0o600); err != nil {
				return false, err
			}
		}
		if !owner.owns(fi) {
			if err := owner.Chown(path); err != nil {
				return false, err
			}
		}
		return false, nil
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, err
	}
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return false, err
	}
	tmpName := tmp.Name()
	defer os.Remove(tmpName) // fails harmlessly after the rename
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return false, err
	}
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return false, err
	}
	if owner != nil {
		if err := tmp.Chown(int(owner.UID), int(owner.GID)); err != nil {
			tmp.Close()
			return false, err
		}
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return false, err
	}
	if err := tmp.Close(); err != nil {
		return false, err
	}
	if err := os.Rename(tmpName, path); err != nil {
		return false, err
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync() // make the rename durable; best effort
		d.Close()
	}
	return true, nil
}

// AutoConfOverrides returns, sorted, the parameters set with ALTER SYSTEM in
// dataDir/postgresql.auto.conf that pgwarden owns (see OwnedParameters) or sets
// in Config.Managed: postgres reads that file last, so they silently override
// the manager (pg_basebackup -R, for one, writes primary_conninfo there).
// A missing file gives none. It only reads.
func AutoConfOverrides(dataDir string, managed map[string]string) ([]string, error) {
	data, err := os.ReadFile(filepath.Join(dataDir, "postgresql.auto.conf"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("cannot read ALTER SYSTEM settings: %w", err)
	}
	seen := map[string]bool{}
	for _, line := range strings.Split(string(data), "\n") {
		name, _, ok, err := parseLine(line)
		if err != nil || !ok {
			continue
		}
		name = strings.ToLower(name)
		_, owned := ownedParameters[name]
		_, isManaged := managed[name]
		if owned || isManaged || strings.HasPrefix(name, "recovery_target") {
			seen[name] = true
		}
	}
	var names []string
	for n := range seen {
		names = append(names, n)
	}
	sort.Strings(names)
	return names, nil
}
