#!/usr/bin/env bash
# `make testbed-selftest`: checks the node level end to end (selftest_test.go), on the running node
# or on one brought up and down around it (with-node.sh).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
exec "$HERE/with-node.sh" testbed-selftest go test -tags testbed -run Selftest -count=1 -v ./e2e/testbed/
