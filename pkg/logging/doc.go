// Package logging sets up the process-wide JSON log stream and re-emits
// PostgreSQL's own stderr through it.
//
// Every line pgwarden writes on stdout is one JSON object with at least the
// fields time, level, msg and source. source is "pgwarden" for the manager's
// own records and "postgres" for lines PostgreSQL wrote; the latter also carry
// pg_severity and pid when the line had the standard prefix. The package never
// logs secrets: callers must not pass them, and nothing here reads the
// environment.
package logging
