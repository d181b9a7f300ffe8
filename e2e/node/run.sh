#!/usr/bin/env bash
# The node end-to-end tests (build tag "node"): TestNode (the operator and a 3-instance
# PostgresCluster in real pods, a switchover and a failover) and TestFaults (the fault suite under
# the write checker, see faults_test.go) — on the running node test bed, or on one brought up and
# down around them (e2e/testbed/with-node.sh). Extra arguments go to `go test` after the defaults,
# so `-run '^TestFaults$'` or `-timeout 600m` override them.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
exec "$HERE/../testbed/with-node.sh" e2e-node go test -tags node -run '^(TestNode|TestFaults)$' -count=1 -v -timeout 45m ./e2e/node/ "$@"
