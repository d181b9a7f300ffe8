#!/usr/bin/env bash
# `make testbed-selftest`: checks the node level end to end (selftest_test.go), on the running node
# or on one brought up and down around it (with-node.sh). When no node is up, it first checks that a
# test bed abandoned by a killed run does not block the next one (reclaim-test.sh).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
if [ ! -f "${TESTBED_DIR:-$ROOT/.testbed}/up.done" ]; then
  "$HERE/reclaim-test.sh"
fi
exec "$HERE/with-node.sh" testbed-selftest go test -tags testbed -run Selftest -count=1 -v ./e2e/testbed/
