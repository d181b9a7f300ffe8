#!/usr/bin/env bash
# The node end-to-end test (node_test.go, build tag "node"): the operator and a 3-instance
# PostgresCluster in real pods, a switchover and a failover. If the node test bed is not up, it
# brings it up, and afterwards down again and checks that the host is as it was before (like
# e2e/testbed/selftest.sh). Extra arguments go to `go test` (e.g. -run, -v is always on).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TESTBED=$ROOT/e2e/testbed
TB=${TESTBED_DIR:-$ROOT/.testbed}

brought_up=0
snapshot=$(mktemp)
finish() {
  local rc=$?
  if [ $brought_up = 1 ]; then
    "$TESTBED/node.sh" down || rc=1
    "$TESTBED/hostcheck.sh" compare "$snapshot" || rc=1
  fi
  rm -f "$snapshot"
  if [ $rc = 0 ]; then echo "e2e-node: PASS"; else echo "e2e-node: FAIL"; fi
  exit $rc
}
trap finish EXIT

if [ -f "$TB/up.done" ]; then
  echo "e2e-node: using the running node (it stays up)"
else
  "$TESTBED/hostcheck.sh" snapshot "$snapshot"
  brought_up=1
  "$TESTBED/node.sh" up
fi
cd "$ROOT"
go test -tags node -run TestNode -count=1 -v -timeout 15m ./e2e/node/ "$@"
