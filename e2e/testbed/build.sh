#!/usr/bin/env bash
# Builds the Kubernetes test bed's binaries from the Go module proxy and caches them outside the
# checkout, one directory per component and version:
#
#   ${PGWARDEN_CACHE:-$HOME/.cache/pgwarden}/<component>-<version>/<component>
#
# Usage: build.sh [api|node|all|<component>...]      (default: api)
#   api   etcd, kube-apiserver, kubectl
#   node  api + kube-controller-manager, kube-scheduler, kube-proxy, kubelet, coredns,
#         local-path-provisioner
# Prints nothing but progress on stderr; `build.sh --print-dir <component>` prints a cached dir.
#
# Only missing components are built; a warm cache returns in well under a second.
# Cold: about 4 minutes for the api level, about 10 for the node level on 2 cores.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.36.3}
ETCD_VERSION=${ETCD_VERSION:-v3.6.6}
COREDNS_VERSION=${COREDNS_VERSION:-v1.14.7}
LPP_VERSION=${LPP_VERSION:-v0.0.30}
CACHE=${PGWARDEN_CACHE:-$HOME/.cache/pgwarden}

K8S_COMPONENTS=(kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubelet kubectl)
API_COMPONENTS=(etcd kube-apiserver kubectl)
NODE_COMPONENTS=(etcd kube-apiserver kubectl kube-controller-manager kube-scheduler kube-proxy kubelet
  coredns local-path-provisioner)

log() { printf 'testbed-build: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

version_of() {
  case "$1" in
    etcd) echo "$ETCD_VERSION" ;;
    coredns) echo "$COREDNS_VERSION" ;;
    local-path-provisioner) echo "$LPP_VERSION" ;;
    kube-*|kubelet|kubectl) echo "$K8S_VERSION" ;;
    *) die "unknown component '$1' (want one of: ${NODE_COMPONENTS[*]})" ;;
  esac
}
dir_of() { echo "$CACHE/$1-$(version_of "$1")"; }
have() { [ -x "$(dir_of "$1")/$1" ]; }

if [ "${1:-}" = "--print-dir" ]; then
  dir_of "${2:?component}"
  exit 0
fi

# Expand the arguments into a list of components.
want=()
[ $# -eq 0 ] && set -- api
for a in "$@"; do
  case "$a" in
    api) want+=("${API_COMPONENTS[@]}") ;;
    node|all) want+=("${NODE_COMPONENTS[@]}") ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) version_of "$a" >/dev/null; want+=("$a") ;;
  esac
done

missing() {
  local c m=()
  for c in "${want[@]}"; do have "$c" || m+=("$c"); done
  [ ${#m[@]} -gt 0 ] && printf '%s\n' "${m[@]}" | sort -u
  return 0
}

[ -z "$(missing)" ] && exit 0

command -v go >/dev/null || die "go is not on PATH"
mkdir -p "$CACHE"
# One builder at a time: parallel test packages may all find the cache empty at once.
exec 9>"$CACHE/.build.lock"
if ! flock -n 9; then
  log "another build holds $CACHE/.build.lock; waiting for it"
  flock 9
fi
mapfile -t todo < <(missing)
[ ${#todo[@]} -eq 0 ] && exit 0
log "building ${todo[*]} into $CACHE (cold builds take minutes: kube-apiserver ~4 min, all ~10 min)"

export GOWORK=off GOFLAGS=-mod=mod CGO_ENABLED=0
unset GOOS GOARCH

# install_into <component> <built-binary>: atomically place a binary in its cache dir.
install_into() {
  local c=$1 src=$2 d
  d=$(dir_of "$c")
  mkdir -p "$d"
  install -m 0755 "$src" "$d/.$c.tmp"
  mv -f "$d/.$c.tmp" "$d/$c"
  log "  $c $(version_of "$c") -> $d/$c"
}

# --- Kubernetes: a wrapper module (see k8s-testbed.md); kept in the cache, never in the repo.
build_k8s() {
  local comps=("$@") src="$CACHE/src/kubernetes-$K8S_VERSION" stage pkgs=() c gomod minor major
  mkdir -p "$src"
  if [ ! -f "$src/.ready" ]; then
    log "preparing wrapper module for k8s.io/kubernetes $K8S_VERSION in $src"
    rm -f "$src/go.mod" "$src/go.sum"
    gomod=$(cd "$src" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')
    [ -f "$gomod" ] || die "cannot download k8s.io/kubernetes@$K8S_VERSION's go.mod"
    {
      echo "module pgwarden.local/testbed-kubernetes"
      echo
      echo "go $(go env GOVERSION | sed 's/^go//; s/^\([0-9]*\.[0-9]*\).*/\1/')"
      echo
      echo "require k8s.io/kubernetes $K8S_VERSION"
      echo
      # every staging module k8s.io/kubernetes replaces with ./staging/... comes from the proxy
      sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#replace \1 => \1 v0.'"${K8S_VERSION#v1.}"'#p' "$gomod"
    } >"$src/go.mod"
    grep -q '^replace' "$src/go.mod" || die "found no staging replacements in $gomod"
    {
      echo "//go:build tools"
      echo
      echo "package tools"
      echo
      echo "import ("
      for c in "${K8S_COMPONENTS[@]}"; do echo "	_ \"k8s.io/kubernetes/cmd/$c\""; done
      echo ")"
    } >"$src/tools.go"
    (cd "$src" && go mod tidy) || die "go mod tidy failed in $src"
    touch "$src/.ready"
  fi
  major=${K8S_VERSION#v}; major=${major%%.*}
  minor=${K8S_VERSION#v*.}; minor=${minor%%.*}
  local ld="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=$major -X $p.gitMinor=$minor"
    ld+=" -X $p.gitTreeState=clean -X $p.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  done
  for c in "${comps[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
  stage=$(mktemp -d "$CACHE/.stage.XXXXXX")
  log "go build ${comps[*]} (k8s $K8S_VERSION)"
  (cd "$src" && go build -trimpath -tags tools -ldflags "$ld" -o "$stage/" "${pkgs[@]}") ||
    { rm -rf "$stage"; die "building ${comps[*]} failed"; }
  for c in "${comps[@]}"; do install_into "$c" "$stage/$c"; done
  rm -rf "$stage"
}

build_etcd() {
  local src="$CACHE/src/etcd-$ETCD_VERSION" stage
  mkdir -p "$src"
  if [ ! -f "$src/.ready" ]; then
    log "preparing wrapper module for etcd $ETCD_VERSION in $src"
    cat >"$src/go.mod" <<MOD
module pgwarden.local/testbed-etcd

go $(go env GOVERSION | sed 's/^go//; s/^\([0-9]*\.[0-9]*\).*/\1/')

require go.etcd.io/etcd/server/v3 $ETCD_VERSION
MOD
    cat >"$src/main.go" <<'GO'
// Command etcd is etcd's own main, built through a wrapper module for pgwarden's test bed.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
    rm -f "$src/go.sum"
    (cd "$src" && go mod tidy) || die "go mod tidy failed in $src"
    touch "$src/.ready"
  fi
  stage=$(mktemp -d "$CACHE/.stage.XXXXXX")
  log "go build etcd $ETCD_VERSION"
  (cd "$src" && go build -trimpath -ldflags "-s -w" -o "$stage/etcd" .) ||
    { rm -rf "$stage"; die "building etcd failed"; }
  install_into etcd "$stage/etcd"
  rm -rf "$stage"
}

build_go_install() { # component module-path
  local c=$1 mod=$2 stage
  stage=$(mktemp -d "$CACHE/.stage.XXXXXX")
  log "go install $mod@$(version_of "$c")"
  (cd "$stage" && GOBIN="$stage/bin" go install -trimpath -ldflags "-s -w" "$mod@$(version_of "$c")") ||
    { rm -rf "$stage"; die "building $c failed"; }
  install_into "$c" "$stage/bin/$(basename "$mod")"
  rm -rf "$stage"
}

start=$(date +%s)
k8s=()
for c in "${todo[@]}"; do
  case "$c" in
    etcd) build_etcd ;;
    coredns) build_go_install coredns github.com/coredns/coredns ;;
    local-path-provisioner) build_go_install local-path-provisioner github.com/rancher/local-path-provisioner ;;
    *) k8s+=("$c") ;;
  esac
done
[ ${#k8s[@]} -gt 0 ] && build_k8s "${k8s[@]}"
log "done in $(( $(date +%s) - start ))s"
