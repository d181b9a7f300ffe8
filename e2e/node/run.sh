#!/usr/bin/env bash
# The node end-to-end test (node_test.go, build tag "node"): the operator and a 3-instance
# PostgresCluster in real pods, a switchover and a failover — on the running node test bed, or on
# one brought up and down around it (e2e/testbed/with-node.sh). Extra arguments go to `go test`.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
exec "$HERE/../testbed/with-node.sh" e2e-node go test -tags node -run TestNode -count=1 -v -timeout 15m ./e2e/node/ "$@"
