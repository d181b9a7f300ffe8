#!/usr/bin/env bash
# Installs what pgwarden's tests need on a fresh Debian 12 machine. Idempotent and quiet when
# everything is already there. Everything comes from Debian's packages; Go modules come from
# the module proxy through `go` itself.
set -euo pipefail

need=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
# iptables: e2e/roles cuts replication links with it (node.sh installs the rest it needs).
for p in postgresql-15 postgresql-client-15 util-linux iproute2 procps iptables; do
  have_pkg "$p" || need+=("$p")
done
for p in ${EXTRA_DEBS:-}; do have_pkg "$p" || need+=("$p"); done

if [ ${#need[@]} -gt 0 ]; then
  echo "deps: installing ${need[*]}"
  if [ "$(id -u)" != 0 ]; then SUDO=sudo; else SUDO=; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  # Debian's postgresql-common would create and start a cluster "main" on install; we do not want one.
  $SUDO mkdir -p /etc/postgresql-common/createcluster.d
  echo 'create_main_cluster = false' | $SUDO tee /etc/postgresql-common/createcluster.d/pgwarden.conf >/dev/null
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
