#!/usr/bin/env bash
# Records the host state the node level touches, and compares it later:
#
#   hostcheck.sh snapshot FILE   write the state to FILE
#   hostcheck.sh compare FILE    fail if the test bed left anything behind since FILE
#
# It fails only on what is the test bed's (its iptables chains, bridge, veths, mounts, cgroups,
# sysctls, host paths, processes); other differences (other tests share this machine) are listed.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TB=${TESTBED_DIR:-$ROOT/.testbed}

state() {
  echo "## sysctl"
  sysctl -a 2>/dev/null | grep -E '^(net\.ipv4\.ip_forward|net\.ipv4\.conf\.(all|default)\.|net\.bridge\.|vm\.overcommit|vm\.panic|kernel\.panic|kernel\.keys\.root|net\.netfilter\.nf_conntrack_(max|tcp_timeout_established|tcp_timeout_close_wait)|net\.ipv6\.conf\.all\.forwarding)' | sort
  echo "## iptables"
  for t in filter nat mangle raw; do
    iptables -w -t "$t" -S 2>/dev/null | sed "s/^/$t /" || true
    ip6tables -w -t "$t" -S 2>/dev/null | sed "s/^/v6 $t /" || true
  done
  echo "## nft"
  nft list tables 2>/dev/null || true
  echo "## links"
  ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | sort
  echo "## routes"
  ip route show | sort
  echo "## mounts"
  findmnt -rn -o TARGET | sort
  echo "## cgroups"
  ls -d /sys/fs/cgroup/*/kubepods* 2>/dev/null || true
  echo "## paths"
  for p in /var/log/containers /var/log/pods /var/lib/kubelet /var/lib/cni /etc/cni /opt/cni /run/containerd \
    /var/run/netns /run/netns /var/run/kubernetes /etc/kubernetes /opt/containerd "$TB"; do
    [ -e "$p" ] && echo "exists $p"
  done
  echo "## processes"
  for pid in $(ls /proc | grep -E '^[0-9]+$'); do
    exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || continue
    cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || continue
    # The node level's processes all name $TB in their command line (api-level ones use temp dirs).
    case "$cmd" in
      *"$TB/"*) echo "process $exe ${cmd:0:120}" ;;
    esac
  done | sort
  return 0
}

case "${1:-}" in
  snapshot) state >"${2:?file}" ;;
  compare)
    before=${2:?file}
    now=$(mktemp)
    state >"$now"
    d=$(diff "$before" "$now" || true)
    rm -f "$now"
    if [ -z "$d" ]; then echo "hostcheck: host state is as before"; exit 0; fi
    ours=$(grep -E '^[<>]' <<<"$d" | grep -E 'KUBE-|CNI-|PGWTB-|pgwtb0|veth|kube-proxy|kubepods|process |exists |sysctl|net\.|vm\.|kernel\.|'"$TB" || true)
    echo "hostcheck: differences since the snapshot:"
    echo "$d" | sed 's/^/  /'
    if [ -n "$ours" ]; then echo "hostcheck: FAILED: the test bed left the host changed"; exit 1; fi
    echo "hostcheck: none of them are the test bed's"
    ;;
  *) sed -n '2,8p' "$0"; exit 2 ;;
esac
