//go:build !noperator

package cli

import (
	"github.com/spf13/cobra"

	"github.com/pgwarden/pgwarden/pkg/operator"
)

// newOperatorCommand returns the operator command. Builds tagged noperator (the instance
// image's binary) leave the operator and controller-runtime out: Go runs every linked package's
// init in every process, and the operator's dependencies would cost the instance manager, PID 1
// of every Postgres Pod, resident memory it never uses.
func newOperatorCommand() *cobra.Command { return operator.NewCommand() }
