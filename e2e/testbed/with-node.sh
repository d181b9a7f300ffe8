#!/usr/bin/env bash
# with-node.sh NAME COMMAND...: runs COMMAND (from the checkout's root) on the node test bed.
# If the node is not up, it brings it up, and afterwards down again and checks that the host is as
# it was before; a node that was already up is used and stays up. Prints "NAME: PASS" or
# "NAME: FAIL" last. Used by make testbed-selftest and make e2e-node.
set -euo pipefail

[ $# -ge 2 ] || { echo "usage: with-node.sh NAME COMMAND..." >&2; exit 2; }
name=$1
shift
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
  if [ $rc = 0 ]; then echo "$name: PASS"; else echo "$name: FAIL"; fi
  exit $rc
}
trap finish EXIT

if [ -f "$TB/up.done" ]; then
  echo "$name: using the running node (it stays up)"
else
  "$HERE/hostcheck.sh" snapshot "$snapshot"
  brought_up=1
  "$HERE/node.sh" up
fi
cd "$ROOT"
"$@"
