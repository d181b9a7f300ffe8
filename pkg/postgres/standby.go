package postgres

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// StandbySignalFile in a data directory makes postgres start as a standby.
const StandbySignalFile = "standby.signal"

// StandbyConfig says where a standby streams from.
type StandbyConfig struct {
	// PrimaryHost is the upstream's host name, address, or socket directory.
	PrimaryHost string
	// PrimaryPort is the upstream's port.
	PrimaryPort int
	// User is the replication role (see EnsureReplicationRole).
	User string
	// Passfile is the absolute path of the pgpass file holding User's
	// password (see WritePassfile); the walreceiver, running as the run-as
	// user, reads it at each connection.
	Passfile string
	// ApplicationName is how the standby shows in the upstream's
	// pg_stat_replication and what synchronous_standby_names names (the
	// pod's name); optional.
	ApplicationName string
	// SlotName is a physical replication slot on the upstream to stream
	// from; optional. The upstream must have the slot.
	SlotName string
}

// standbyConnectTimeout bounds the walreceiver's connection attempt, so an
// upstream that drops packets (a dead pod's address) is given up on quickly
// and the next attempt, perhaps to a new upstream, follows.
const standbyConnectTimeout = 10

var slotNameRE = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)

// Settings returns the settings that make a server (with StandbySignalFile in
// its data directory) stream from the upstream; put them into Config.Managed.
// A primary must have none of them.
//
//   - primary_conninfo holds host, port, user, passfile, application_name and
//     connect_timeout, and never a password: libpq reads it from the passfile;
//   - recovery_target_timeline = 'latest', so the standby follows the upstream
//     across promotions (new timelines);
//   - primary_slot_name when SlotName is set.
//
// Since PostgreSQL 13 both primary_conninfo and primary_slot_name take
// effect on a reload: the startup process then restarts the walreceiver,
// which reconnects with the new values, without restarting the server.
// Changing recovery_target_timeline needs a restart, but it is always 'latest'.
func (c StandbyConfig) Settings() (map[string]string, error) {
	var problems []string
	if c.PrimaryHost == "" || strings.ContainsAny(c.PrimaryHost, "\x00\n\r") {
		problems = append(problems, fmt.Sprintf("bad primary host %q", c.PrimaryHost))
	}
	if c.PrimaryPort < 1 || c.PrimaryPort > 65535 {
		problems = append(problems, fmt.Sprintf("primary port %d is out of range", c.PrimaryPort))
	}
	if c.User == "" || strings.ContainsAny(c.User, "\x00\n\r") {
		problems = append(problems, fmt.Sprintf("bad replication user %q", c.User))
	}
	if !filepath.IsAbs(c.Passfile) || strings.ContainsAny(c.Passfile, "\x00\n\r") {
		problems = append(problems, fmt.Sprintf("passfile %q is not an absolute path", c.Passfile))
	}
	for _, r := range c.ApplicationName {
		// postgres replaces anything else with '?', and synchronous_standby_names would no longer match.
		if r < 32 || r > 126 {
			problems = append(problems, fmt.Sprintf("application name %q is not printable ASCII", c.ApplicationName))
			break
		}
	}
	if len(c.ApplicationName) > 63 {
		problems = append(problems, fmt.Sprintf("application name %q is longer than 63 bytes", c.ApplicationName))
	}
	if c.SlotName != "" && !slotNameRE.MatchString(c.SlotName) {
		problems = append(problems, fmt.Sprintf("slot name %q is not 1-63 of a-z, 0-9 and _", c.SlotName))
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("invalid standby configuration: %s", strings.Join(problems, "; "))
	}
	s := map[string]string{
		"primary_conninfo":         c.conninfo(),
		"recovery_target_timeline": "latest",
	}
	if c.SlotName != "" {
		s["primary_slot_name"] = c.SlotName
	}
	return s, nil
}

func (c StandbyConfig) conninfo() string {
	parts := []string{
		"host=" + quoteDSN(c.PrimaryHost),
		"port=" + strconv.Itoa(c.PrimaryPort),
		"user=" + quoteDSN(c.User),
		"passfile=" + quoteDSN(c.Passfile),
		"connect_timeout=" + strconv.Itoa(standbyConnectTimeout),
	}
	if c.ApplicationName != "" {
		parts = append(parts, "application_name="+quoteDSN(c.ApplicationName))
	}
	return strings.Join(parts, " ")
}

// WriteStandbySignal creates standby.signal (empty, 0600, owned by owner) in
// dataDir, so the next start of postgres is as a standby. An existing file is
// kept (its mode and owner corrected).
func WriteStandbySignal(dataDir string, owner *User) error {
	st, err := os.Stat(dataDir)
	if err != nil {
		return fmt.Errorf("cannot write %s: %w", StandbySignalFile, err)
	}
	if !st.IsDir() {
		return fmt.Errorf("cannot write %s: %s is not a directory", StandbySignalFile, dataDir)
	}
	if _, err := writeFileAtomic(filepath.Join(dataDir, StandbySignalFile), nil, owner); err != nil {
		return fmt.Errorf("cannot write %s: %w", StandbySignalFile, err)
	}
	return nil
}

// RemoveStandbySignal removes standby.signal from dataDir, if it is there, so
// the next start of postgres is as a primary. (A running standby is promoted
// with Promote, which removes the file itself.)
func RemoveStandbySignal(dataDir string) error {
	err := os.Remove(filepath.Join(dataDir, StandbySignalFile))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("cannot remove %s: %w", StandbySignalFile, err)
	}
	return nil
}

// HasStandbySignal reports whether dataDir holds standby.signal.
func HasStandbySignal(dataDir string) (bool, error) {
	_, err := os.Lstat(filepath.Join(dataDir, StandbySignalFile))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("cannot look for %s: %w", StandbySignalFile, err)
	}
	return true, nil
}

// WritePassfile writes a pgpass file at path with one entry:
//
//	host:port:*:user:password
//
// (host "" and port 0 are written as "*", any; ':' and '\' are escaped), mode
// 0600 and owned by owner, replacing the file atomically. The database field
// is "*" so the one entry serves replication connections (walreceiver,
// pg_basebackup) and pg_rewind's connection to the database postgres alike.
// For a socket directory as host, libpq matches the directory's path, while
// pgx matches "localhost": "" (any host) suits both.
//
// Keep the file outside PGDATA (pg_basebackup and pg_rewind copy everything in
// PGDATA to other instances). Its directory is created (0700, owned by owner)
// when missing; its parent must exist. The password must be one line; it
// appears in no error.
func WritePassfile(path, host string, port int, user, password string, owner *User) error {
	if !filepath.IsAbs(path) {
		return fmt.Errorf("cannot write passfile: %q is not an absolute path", path)
	}
	if port < 0 || port > 65535 {
		return fmt.Errorf("cannot write passfile %s: port %d is out of range", path, port)
	}
	if user == "" || strings.ContainsAny(user, "\x00\n\r") || strings.ContainsAny(host, "\x00\n\r") {
		return fmt.Errorf("cannot write passfile %s: bad user or host", path)
	}
	if password == "" || strings.ContainsAny(password, "\x00\n\r") {
		return fmt.Errorf("cannot write passfile %s: the password must be one non-empty line", path)
	}
	hostField, portField := "*", "*"
	if host != "" {
		hostField = escapePassfile(host)
	}
	if port != 0 {
		portField = strconv.Itoa(port)
	}
	line := hostField + ":" + portField + ":*:" + escapePassfile(user) + ":" + escapePassfile(password) + "\n"

	dir := filepath.Dir(path)
	if err := os.Mkdir(dir, 0o700); err == nil {
		if err := owner.Chown(dir); err != nil {
			return fmt.Errorf("cannot write passfile %s: %w", path, err)
		}
	} else if !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("cannot write passfile %s: %w", path, err)
	}
	if _, err := writeFileAtomic(path, []byte(line), owner); err != nil {
		return fmt.Errorf("cannot write passfile %s: %w", path, err)
	}
	return nil
}

// escapePassfile escapes a pgpass field: '\' and ':' take a backslash.
func escapePassfile(s string) string {
	return strings.NewReplacer(`\`, `\\`, `:`, `\:`).Replace(s)
}

// passfileLookup finds the password for a connection in a pgpass file as
// libpq does: the first line whose fields match (each literally, after
// unescaping, or "*"); for a socket directory as host, also "localhost" (which
// libpq uses for its default socket directory only). No match gives "". The
// file's content appears in no error.
func passfileLookup(path, host string, port int, database, user string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("cannot read passfile: %w", err) // an *fs.PathError names the file only
	}
	hosts := []string{host}
	if filepath.IsAbs(host) {
		hosts = append(hosts, "localhost")
	}
	for _, h := range hosts {
		want := []string{h, strconv.Itoa(port), database, user}
		for _, line := range strings.Split(string(data), "\n") {
			line = strings.TrimSuffix(line, "\r")
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			fields := splitPassfileLine(line)
			if len(fields) != 5 {
				continue
			}
			match := true
			for i, w := range want {
				if fields[i] != "*" && fields[i] != w {
					match = false
					break
				}
			}
			if match {
				return fields[4], nil
			}
		}
	}
	return "", nil
}

// splitPassfileLine splits a pgpass line at unescaped colons into at most 5
// unescaped fields; the fifth (the password) is the rest of the line.
func splitPassfileLine(line string) []string {
	var (
		fields []string
		cur    strings.Builder
	)
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case c == '\\' && i+1 < len(line):
			i++
			cur.WriteByte(line[i])
		case c == ':' && len(fields) < 4:
			fields = append(fields, cur.String())
			cur.Reset()
		default:
			cur.WriteByte(c)
		}
	}
	return append(fields, cur.String())
}
