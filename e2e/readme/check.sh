#!/usr/bin/env bash
# make readme-check: runs README.md's quick start (TestQuickStart, build tag "readme") on the node
# test bed. It queues for the node like every node test (PGWARDEN_NODE_WAIT), and with-node.sh
# snapshots the host first and compares after: the quick start's own make demo-down must leave it
# as it was. Refuses to run while this checkout's node is up (it would tear down your make demo).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TB=${TESTBED_DIR:-$ROOT/.testbed}
if [ -f "$TB/up.done" ]; then
  echo "readme-check: the node test bed of this checkout is up ($TB); the quick start ends with make demo-down. Run make demo-down first." >&2
  exit 1
fi
exec "$ROOT/e2e/testbed/with-node.sh" readme-check \
  go test -tags readme -run '^TestQuickStart$' -count=1 -v -timeout 15m ./e2e/readme/ "$@"
