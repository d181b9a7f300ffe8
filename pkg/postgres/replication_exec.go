package postgres

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pgwarden/pgwarden/pkg/reaper"
)

// toolGrace is how long pg_basebackup or pg_rewind may take to exit after
// SIGTERM on cancellation before it is killed.
const toolGrace = 10 * time.Second

// toolConnectTimeout bounds each connection attempt of pg_basebackup and
// pg_rewind, so an unreachable upstream fails fast and the caller can move on.
const toolConnectTimeout = 10

// runTool runs a PostgreSQL client program as runAs with the package's minimal
// environment, in its own process group (pg_basebackup forks a WAL streamer,
// pg_rewind may run postgres --single): on cancellation the whole group gets
// SIGTERM. A failure is a *CommandError with the program's output.
func runTool(ctx context.Context, bin Bin, runAs *User, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, bin.Path(name), args...)
	cmd.Env = Env(bin, runAs)
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	runAs.SetCredential(cmd)
	// The group exists while its leader is unreaped, which it is until
	// WaitCommand returns, so the signal cannot reach anyone else's group.
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) }
	cmd.WaitDelay = toolGrace
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := reaper.StartCommand(cmd)
	if err == nil {
		var st reaper.Status
		st, err = reaper.WaitCommand(cmd)
		if err == nil && !st.Success() {
			err = &reaper.ExitError{Status: st}
		}
	}
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", ctx.Err(), err)
		}
		return out.String(), &CommandError{Command: name, Err: err, Output: trimOutput(out.Bytes())}
	}
	return out.String(), nil
}

// libpqConninfo renders a keyword/value connection string for libpq. It never
// holds a password: passfile names the file libpq reads it from.
func libpqConninfo(host string, port int, user, passfile, dbname, appName string) string {
	parts := []string{
		"host=" + quoteDSN(host),
		"port=" + strconv.Itoa(port),
		"user=" + quoteDSN(user),
		"passfile=" + quoteDSN(passfile),
		"connect_timeout=" + strconv.Itoa(toolConnectTimeout),
	}
	if dbname != "" {
		parts = append(parts, "dbname="+quoteDSN(dbname))
	}
	if appName != "" {
		parts = append(parts, "application_name="+quoteDSN(appName))
	}
	return strings.Join(parts, " ")
}

// minReplicationMajor is the oldest PostgreSQL whose replication mechanics
// this package relies on: primary_conninfo applied on reload, pg_rewind
// finishing crash recovery itself, pg_basebackup --no-manifest.
const minReplicationMajor = 13

func checkReplicationMajor(bin Bin) error {
	if bin.Major < minReplicationMajor {
		return fmt.Errorf("PostgreSQL %d is too old: replication needs %d or later", bin.Major, minReplicationMajor)
	}
	return nil
}

// checkUpstream validates where a client program connects.
func checkUpstream(host string, port int, user, passfile string) error {
	switch {
	case host == "" || strings.ContainsAny(host, "\x00\n\r"):
		return fmt.Errorf("bad host %q", host)
	case port < 1 || port > 65535:
		return fmt.Errorf("port %d is out of range", port)
	case user == "" || strings.ContainsAny(user, "\x00\n\r"):
		return fmt.Errorf("bad user %q", user)
	case passfile == "" || strings.ContainsAny(passfile, "\x00\n\r"):
		return fmt.Errorf("bad passfile %q", passfile)
	}
	return nil
}
