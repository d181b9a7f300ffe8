package postgres

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Querier is what the SQL helpers need: *pgx.Conn, *pgxpool.Pool and pgx.Tx have it.
type Querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// ConnectTimeout bounds the connection to the local server: it answers at
// once or is not up; probes have their own, shorter deadlines in ctx.
const ConnectTimeout = 5 * time.Second

// ApplicationName is how the manager's connections show in pg_stat_activity.
const ApplicationName = "pgwarden"

// ConnConfig returns a connection configuration for the local server through
// its unix socket in socketDir, to the database postgres, authenticating with
// SCRAM only (require_auth) and without TLS. The password is set on the config
// directly: it is in no connection string, so ConnString() and any error that
// quotes one never show it. PG* environment variables do not change the
// server, user, password, TLS, session attributes or runtime parameters.
func ConnConfig(socketDir string, port int, user, password string) (*pgx.ConnConfig, error) {
	if !filepath.IsAbs(socketDir) {
		return nil, fmt.Errorf("cannot configure connection: socket directory %q is not absolute", socketDir)
	}
	if port < 1 || port > 65535 {
		return nil, fmt.Errorf("cannot configure connection: port %d is out of range", port)
	}
	if user == "" {
		return nil, fmt.Errorf("cannot configure connection: no user")
	}
	dsn := fmt.Sprintf("host=%s port=%d user=%s dbname=postgres sslmode=disable connect_timeout=%d "+
		"target_session_attrs=any require_auth=scram-sha-256 channel_binding=prefer application_name=%s",
		quoteDSN(socketDir), port, quoteDSN(user), int(ConnectTimeout/time.Second), ApplicationName)
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("cannot configure connection: %w", err)
	}
	cfg.Password = password
	cfg.TLSConfig = nil
	cfg.Fallbacks = nil
	cfg.ValidateConnect = nil
	cfg.RuntimeParams = map[string]string{"application_name": ApplicationName}
	return cfg, nil
}

// quoteDSN quotes a keyword/value connection string value.
func quoteDSN(v string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}

// Checkpoint runs CHECKPOINT (before a switchover or shutdown, so the next
// start replays little WAL).
func Checkpoint(ctx context.Context, q Querier) error {
	if _, err := q.Exec(ctx, "CHECKPOINT"); err != nil {
		return fmt.Errorf("cannot checkpoint: %w", err)
	}
	return nil
}

// Reload asks the postmaster to reread its configuration files.
func Reload(ctx context.Context, q Querier) error {
	var ok bool
	if err := q.QueryRow(ctx, "SELECT pg_reload_conf()").Scan(&ok); err != nil {
		return fmt.Errorf("cannot reload configuration: %w", err)
	}
	if !ok {
		return fmt.Errorf("cannot reload configuration: pg_reload_conf returned false")
	}
	return nil
}

// PendingRestart returns, sorted, the parameters whose changed value takes
// effect only after a restart. postgres updates this when it processes a
// reload, so call it after Reload has taken effect.
func PendingRestart(ctx context.Context, q Querier) ([]string, error) {
	rows, err := q.Query(ctx, "SELECT name FROM pg_catalog.pg_settings WHERE pending_restart ORDER BY name")
	if err != nil {
		return nil, fmt.Errorf("cannot list parameters pending restart: %w", err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("cannot list parameters pending restart: %w", err)
	}
	return names, nil
}

// ConfigFileError is a setting postgres could not apply from its configuration files.
type ConfigFileError struct {
	File    string
	Line    int
	Name    string // empty for a syntax error
	Message string
}

// ConfigFileErrors returns the problems postgres finds in its configuration
// files as they are on disk now (pg_file_settings): check it after writing
// and before reloading.
func ConfigFileErrors(ctx context.Context, q Querier) ([]ConfigFileError, error) {
	rows, err := q.Query(ctx, `SELECT coalesce(sourcefile, ''), coalesce(sourceline, 0), coalesce(name, ''), error
		FROM pg_catalog.pg_file_settings WHERE error IS NOT NULL ORDER BY seqno`)
	if err != nil {
		return nil, fmt.Errorf("cannot read configuration file errors: %w", err)
	}
	errs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (ConfigFileError, error) {
		var e ConfigFileError
		err := r.Scan(&e.File, &e.Line, &e.Name, &e.Message)
		return e, err
	})
	if err != nil {
		return nil, fmt.Errorf("cannot read configuration file errors: %w", err)
	}
	return errs, nil
}

// IsInRecovery reports whether the server is a standby (or still recovering).
func IsInRecovery(ctx context.Context, q Querier) (bool, error) {
	var r bool
	if err := q.QueryRow(ctx, "SELECT pg_catalog.pg_is_in_recovery()").Scan(&r); err != nil {
		return false, fmt.Errorf("cannot tell whether the server is in recovery: %w", err)
	}
	return r, nil
}
