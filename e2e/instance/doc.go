// Package instance holds the integration tests (tier 2) of `pgwarden instance run`:
// the real binary, built by the tests, as PID 1 in its own PID namespace or as a
// child subreaper, supervising a real PostgreSQL from Debian's packages.
//
// They need root (postgres runs as the `postgres` OS user, PID namespaces need
// CAP_SYS_ADMIN) and PostgreSQL 15's binaries; `make test` installs them.
package instance
