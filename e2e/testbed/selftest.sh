#!/usr/bin/env bash
# `make testbed-selftest`: checks the node level end to end (selftest_test.go). If the node is not
# up, it brings it up, and afterwards down again and checks that the host is as it was before.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TB=${TESTBED_DIR:-$ROOT/.testbed}

brought_up=0
snapshot=$(mktemp)
finish() {
  local rc=$?
  if [ $brought_up = 1 ]; then
    "$HERE/node.sh" down || rc=1
    "$HERE/hostcheck.sh" compare "$snapshot" || rc=1
  fi
  rm -f "$snapshot"
  if [ $rc = 0 ]; then echo "testbed-selftest: PASS"; else echo "testbed-selftest: FAIL"; fi
  exit $rc
}
trap finish EXIT

if [ -f "$TB/up.done" ]; then
  echo "testbed-selftest: using the running node (it stays up)"
else
  "$HERE/hostcheck.sh" snapshot "$snapshot"
  brought_up=1
  "$HERE/node.sh" up
fi
cd "$ROOT"
go test -tags testbed -run Selftest -count=1 -v ./e2e/testbed/
