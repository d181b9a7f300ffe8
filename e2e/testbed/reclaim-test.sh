#!/usr/bin/env bash
# reclaim-test.sh: a test bed whose run was killed (every process of it SIGKILLed, so no `down` ran)
# must not block the next run: with-node.sh from another state directory tears it down and goes on,
# and afterwards the host is as it was before the abandoned test bed came up. Run by
# `make testbed-selftest` when the node is not up already.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
A=$ROOT/.testbed-abandoned
B=$ROOT/.testbed-reclaimer
OWNER=${TESTBED_OWNER_FILE:-/run/pgwarden-testbed.owner}
say() { echo "reclaim-test: $*" >&2; }

exec 9>"${TESTBED_QUEUE_FILE:-/run/pgwarden-testbed.queue}"
flock -w "${PGWARDEN_NODE_WAIT:-0}" 9 || { say "another checkout's test is using the node test bed"; exit 1; }
snapshot=$(mktemp)
trap 'rm -f "$snapshot"' EXIT
"$HERE/hostcheck.sh" snapshot "$snapshot"

TESTBED_DIR=$A "$HERE/node.sh" up 9>&-
# Abandon it the way a killed CI job does: every process at once, nothing cleaned up.
pids=()
for f in "$A"/pids/*.pid; do read -r pid _ <"$f"; pids+=("-$pid"); done
for pid in $(pgrep -f "containerd-shim.*$A/containerd" || true); do pids+=("$pid"); done
for f in /sys/fs/cgroup/kubepods /sys/fs/cgroup/*/kubepods; do
  [ -d "$f" ] || continue
  while read -r pid; do [ -n "$pid" ] && pids+=("$pid"); done < <(find "$f" -name cgroup.procs -exec cat {} + 2>/dev/null)
done
kill -KILL -- "${pids[@]}" 2>/dev/null || true
for p in "${pids[@]}"; do
  for _ in $(seq 100); do [ -e "/proc/${p#-}" ] || break; sleep 0.1; done
done
[ "$(cat "$OWNER")" = "$A" ] || { say "FAIL: the abandoned test bed does not hold the host"; exit 1; }
touch -d '-2 minutes' "$OWNER" # reclaim leaves alone an up that began less than a minute ago

queue=$(mktemp) # this script holds the host-wide queue; the reclaiming run must not wait for it
out=$(TESTBED_DIR=$B TESTBED_QUEUE_FILE=$queue "$HERE/with-node.sh" reclaimer true 9>&- 2>&1) || {
  echo "$out" >&2
  rm -f "$queue"
  say "FAIL: the next run did not get the node"
  exit 1
}
rm -f "$queue"
grep -q "none of its processes runs" <<<"$out" || { echo "$out" >&2; say "FAIL: no reclaim was logged"; exit 1; }
[ ! -e "$A" ] || { say "FAIL: $A is still there"; exit 1; }
[ ! -e "$OWNER" ] || { say "FAIL: $OWNER is still there: $(cat "$OWNER")"; exit 1; }
"$HERE/hostcheck.sh" compare "$snapshot" || { say "FAIL: the host is not as it was"; exit 1; }
say "PASS"
