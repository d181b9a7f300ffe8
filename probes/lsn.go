package probes

import "github.com/pgwarden/pgwarden/pkg/postgres"

// LSN is a PostgreSQL write-ahead log location; the one type is shared with
// package postgres so the manager compares positions without conversions.
type LSN = postgres.LSN

// ParseLSN parses the PostgreSQL text form of a pg_lsn, "16/B374D848".
func ParseLSN(s string) (LSN, error) { return postgres.ParseLSN(s) }
