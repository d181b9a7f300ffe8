#!/usr/bin/env bash
# Builds the test bed's container images from the working tree as single-layer Docker archives
# and imports them into the running test bed's containerd (`ctr -n k8s.io images import`).
# What goes into them is listed in images.conf (the top-level Dockerfile follows the same list).
#
#   images.sh testbed            pause and app images (tbapp); node.sh up runs this
#   images.sh pgwarden           `make build`, then the instance and operator images
#   images.sh --no-import WHICH  only write the archives to $TESTBED_DIR/images
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TB=${TESTBED_DIR:-$ROOT/.testbed}
OUT=$TB/images
SOCK=$TB/containerd/containerd.sock

log() { printf 'testbed-images: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

import=1
if [ "${1:-}" = --no-import ]; then import=0; shift; fi
[ $# -gt 0 ] || { sed -n '2,10p' "$0"; exit 2; }
mkdir -p "$OUT" "$TB/bin"

cd "$ROOT"
export CGO_ENABLED=0 GOWORK=off
go build -trimpath -o "$TB/bin/tbimage" ./e2e/testbed/cmd/tbimage || die "cannot build tbimage"

archives=()
for which in "$@"; do
  case "$which" in
    testbed)
      go build -trimpath -ldflags '-s -w' -o "$TB/bin/tbapp" ./e2e/testbed/cmd/tbapp || die "cannot build tbapp"
      for img in pause app; do
        "$TB/bin/tbimage" -spec "$HERE/images.conf" -image "$img" -tbapp "$TB/bin/tbapp" -o "$OUT/$img.tar" ||
          die "cannot build the $img image"
        archives+=("$OUT/$img.tar")
      done
      ;;
    pgwarden)
      make -s -C "$ROOT" build build-instance ||
        die "make build build-instance failed; the pgwarden images need bin/pgwarden and bin/pgwarden-instance"
      for img in instance operator; do
        # The instance image carries the build without the operator (smaller PID 1), as the Dockerfile does.
        bin="$ROOT/bin/pgwarden"
        [ "$img" = instance ] && bin="$ROOT/bin/pgwarden-instance"
        "$TB/bin/tbimage" -spec "$HERE/images.conf" -image "$img" -pgwarden "$bin" -o "$OUT/$img.tar" ||
          die "cannot build the $img image"
        archives+=("$OUT/$img.tar")
      done
      ;;
    *) die "unknown image set '$which' (want testbed or pgwarden)" ;;
  esac
done

[ $import = 1 ] || exit 0
[ -S "$SOCK" ] || die "the test bed is not running (no $SOCK); run make testbed-up"
for a in "${archives[@]}"; do
  ctr --address "$SOCK" -n k8s.io images import --snapshotter overlayfs "$a" >/dev/null ||
    die "cannot import $a"
done
log "imported: $(for a in "${archives[@]}"; do basename "$a" .tar; done | tr '\n' ' ')"
