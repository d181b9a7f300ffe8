// Package readme keeps README.md true: it finds the quick start's commands and the reference
// tables in the Markdown.
//
// The unit tests (go test ./e2e/readme/) check that the PostgresCluster reference lists every
// field of api/v1 and of the CRD in deploy/crd, with the CRD's defaults and bounds, and that the
// quick start has the steps a user relies on. TestQuickStart (build tag "readme", run by
// `make readme-check` through e2e/testbed/with-node.sh) runs the quick start's commands on the
// node test bed, one block after another in one shell, and fails when one fails.
package readme
