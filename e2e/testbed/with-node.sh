#!/usr/bin/env bash
# with-node.sh NAME COMMAND...: runs COMMAND (from the checkout's root) on the node test bed.
# If the node is not up, it brings it up, and afterwards down again and checks that the host is as
# it was before; a node that was already up is used and stays up. Prints "NAME: PASS" or
# "NAME: FAIL" last. Used by make testbed-selftest and make e2e-node.
#
# One node test bed per host: runs from several checkouts queue on a host-wide lock. With
# PGWARDEN_NODE_WAIT=SECONDS (default 0: fail at once) a run waits that long for the lock and for
# a node that another checkout brought up by hand (make testbed-up, make demo) to go down. A node
# left behind by a run that was killed (none of its processes runs) is torn down instead of waited for.
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
    "$HERE/node.sh" down 9>&- || rc=1
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
  wait_s=${PGWARDEN_NODE_WAIT:-0}
  deadline=$((SECONDS + wait_s))
  exec 9>"${TESTBED_QUEUE_FILE:-/run/pgwarden-testbed.queue}"
  if ! flock -w "$wait_s" 9; then
    echo "$name: another checkout's test is using the node test bed (waited ${wait_s}s; set PGWARDEN_NODE_WAIT to wait longer)" >&2
    exit 1
  fi
  owner_file=${TESTBED_OWNER_FILE:-/run/pgwarden-testbed.owner}
  held() { o=$(cat "$owner_file" 2>/dev/null || true); [ -n "$o" ] && [ "$o" != "$TB" ] && [ -d "$o" ]; }
  while held; do
    # A test bed whose run was killed before its down holds the host with nothing running: free it.
    "$HERE/node.sh" reclaim 9>&-
    held || break
    if [ $SECONDS -ge $deadline ]; then
      echo "$name: the node test bed of $o holds this host (waited ${wait_s}s; set PGWARDEN_NODE_WAIT to wait longer)" >&2
      exit 1
    fi
    sleep 5
  done
  "$HERE/hostcheck.sh" snapshot "$snapshot"
  brought_up=1
  "$HERE/node.sh" up 9>&-
fi
cd "$ROOT"
"$@" 9>&-
