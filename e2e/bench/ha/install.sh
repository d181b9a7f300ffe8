#!/usr/bin/env bash
# Installs what the HA benchmark's Patroni side needs on Debian 12: Debian's patroni (3.0.2) and
# etcd-server (3.4). Idempotent and quiet when both are there. Leaves no service running:
#   - postgresql-common is told not to create a "main" cluster (createcluster.d);
#   - a policy-rc.d that refuses every start is in place during the install (only if none exists),
#     so the packages' maintainer scripts start nothing;
#   - afterwards the etcd and patroni services are stopped and disabled, in case anything started them.
set -euo pipefail

have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
need=()
for p in patroni etcd-server etcd-client; do have_pkg "$p" || need+=("$p"); done
[ ${#need[@]} -eq 0 ] && exit 0

if [ "$(id -u)" != 0 ]; then echo "install.sh: must run as root to install ${need[*]}" >&2; exit 1; fi
export DEBIAN_FRONTEND=noninteractive
echo "bench: installing ${need[*]}" >&2

mkdir -p /etc/postgresql-common/createcluster.d
echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.d/pgwarden.conf

policy=/usr/sbin/policy-rc.d
made_policy=
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\n# temporary, from pgwarden e2e/bench/ha/install.sh: start no service during install\nexit 101\n' > "$policy"
  chmod 755 "$policy"
  made_policy=1
fi
cleanup() { if [ -n "$made_policy" ]; then rm -f "$policy"; fi; }
trap cleanup EXIT

apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null

# Nothing of the system's own may keep running: the benchmark starts its own etcd and patroni.
for svc in etcd patroni; do
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl disable --now "$svc" >/dev/null 2>&1 || true
  fi
  if [ -x "/etc/init.d/$svc" ]; then
    "/etc/init.d/$svc" stop >/dev/null 2>&1 || true
    update-rc.d "$svc" disable >/dev/null 2>&1 || true
  fi
done
