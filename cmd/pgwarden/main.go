// Command pgwarden is high availability for PostgreSQL on Kubernetes: the
// instance manager (`pgwarden instance run`, PID 1 of every Postgres
// container) and, in later releases, the operator.
package main

import (
	"os"

	"github.com/pgwarden/pgwarden/pkg/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:]))
}
