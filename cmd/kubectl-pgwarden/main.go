// Command kubectl-pgwarden is the kubectl plugin of pgwarden: `kubectl pgwarden status <cluster>`
// and `kubectl pgwarden promote <cluster> <pod>`.
package main

import (
	"os"

	"github.com/pgwarden/pgwarden/pkg/plugin"
)

func main() {
	os.Exit(plugin.Main(os.Args[1:]))
}
