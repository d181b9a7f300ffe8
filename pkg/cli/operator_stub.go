//go:build noperator

package cli

import (
	"errors"

	"github.com/spf13/cobra"
)

// errNoOperator is what the operator command of a noperator build fails with.
var errNoOperator = errors.New("this build of pgwarden has no operator; use the operator image")

// newOperatorCommand returns a stand-in for the operator command in builds tagged noperator (the
// instance image's binary, which does not link the operator): it accepts any arguments and fails
// with a clear error.
func newOperatorCommand() *cobra.Command {
	return &cobra.Command{
		Use:                "operator",
		Short:              "Run the PostgresCluster operator (not in this build: use the operator image)",
		DisableFlagParsing: true,
		RunE:               func(*cobra.Command, []string) error { return errNoOperator },
	}
}
