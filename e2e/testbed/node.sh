#!/usr/bin/env bash
# The test bed's "node" level: a whole single-node Kubernetes cluster on this machine.
#
#   node.sh up       start it (idempotent); writes the admin kubeconfig to $TESTBED_DIR/kubeconfig
#   node.sh down     stop it and restore the host (processes, mounts, iptables, sysctls, bridge, dirs)
#   node.sh status   say what runs
#   node.sh reclaim  tear down another checkout's test bed that holds the host with no process left
#
# Components: containerd + runc from Debian (own config, socket, root and state dirs), the CNI
# bridge plugin, etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet,
# kube-proxy (iptables), CoreDNS on the host behind the kube-dns Service, local-path-provisioner
# as the default StorageClass. Binaries come from build.sh's cache; images from images.sh.
#
# Addresses live only on the bridge this script makes: pods 10.244.0.0/24 (gateway and node IP
# 10.244.0.1), Services 10.96.0.0/16 (routed to the bridge too). Nothing is routed elsewhere.
#
# Environment: TESTBED_DIR (default <checkout>/.testbed), PGWARDEN_CACHE (binary cache),
# TESTBED_KEEP_ON_FAILURE=1 (leave a failed `up` running for inspection).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TB=${TESTBED_DIR:-$ROOT/.testbed}
# The node level owns host-wide things (fixed ports, the bridge, iptables chains, the kubelet's
# cgroups and directories), so one test bed at a time per host. OWNER names the state directory of
# the one that holds them; a down from any other checkout must leave them alone.
OWNER=${TESTBED_OWNER_FILE:-/run/pgwarden-testbed.owner}
NODE_NAME=pgwarden-testbed
BRIDGE=pgwtb0
BRIDGE_IP=10.244.0.1
POD_SUBNET=10.244.0.0/24
CLUSTER_CIDR=10.244.0.0/16
SERVICE_CIDR=10.96.0.0/16
DNS_IP=10.96.0.10
ETCD_PORT=12379
ETCD_PEER_PORT=12380
API_PORT=6443
COREDNS_HEALTH=127.0.0.1:18080
COREDNS_READY=127.0.0.1:18181

# Host sysctls the test bed (or the kubelet, kube-proxy) may change; saved by up, restored by down.
# Order matters: setting ip_forward also resets every interface's forwarding and accept_redirects.
SYSCTLS=(net.ipv4.ip_forward net.ipv4.conf.all.accept_redirects net.ipv4.conf.default.accept_redirects
  net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables
  vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys
  kernel.keys.root_maxbytes net.netfilter.nf_conntrack_max net.ipv4.conf.all.route_localnet
  net.netfilter.nf_conntrack_tcp_timeout_established net.netfilter.nf_conntrack_tcp_timeout_close_wait)
# Host paths components create in fixed places; removed by down if they did not exist before up.
HOST_PATHS=(/var/log/containers /var/log/pods /var/lib/kubelet /var/lib/cni /etc/cni /opt/cni
  /run/containerd /var/run/netns /run/netns /var/run/kubernetes /etc/kubernetes /opt/containerd)
# Debian packages of the runtime; installed by up when missing.
DEBS=(containerd runc containernetworking-plugins iptables conntrack)

BIN_COMPONENTS=(etcd kube-apiserver kubectl kube-controller-manager kube-scheduler kube-proxy kubelet
  coredns local-path-provisioner)

log() { printf 'testbed: [%3ss] %s\n' "$SECONDS" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

declare -A BIN=()
load_bins() {
  local c
  for c in "${BIN_COMPONENTS[@]}"; do BIN[$c]="$("$HERE/build.sh" --print-dir "$c")/$c"; done
}
kubectl() { "${BIN[kubectl]}" --kubeconfig "$TB/kubeconfig" "$@"; }
ctr_() { ctr --address "$TB/containerd/containerd.sock" -n k8s.io "$@"; }

# --- processes -------------------------------------------------------------------------------

pidfile() { echo "$TB/pids/$1.pid"; }

# alive NAME: the component's recorded PID still runs the binary it was started with.
alive() {
  local f pid exe
  f=$(pidfile "$1")
  [ -f "$f" ] || return 1
  read -r pid exe <"$f" || return 1
  [ -n "$pid" ] && [ -e "/proc/$pid" ] || return 1
  [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$exe" ]
}

# start NAME BINARY ARGS...: run in its own session (process group = PID), output in logs/NAME.log.
start() {
  local name=$1 exe=$2
  shift 2
  [ -x "$exe" ] || die "$name: $exe is missing (run e2e/testbed/build.sh node)"
  log "starting $name"
  # 8<&-: the component must not inherit (and so hold forever) the lock of lock().
  setsid "$exe" "$@" </dev/null >>"$TB/logs/$name.log" 2>&1 8<&- &
  echo "$! $(readlink -f "$exe")" >"$(pidfile "$name")"
}

# fail NAME WHAT: report a component that did not come up, with the tail of its log.
fail() {
  log "ERROR: $1 failed: $2"
  if [ -f "$TB/logs/$1.log" ]; then
    log "--- last 40 lines of $TB/logs/$1.log ---"
    tail -n 40 "$TB/logs/$1.log" >&2 || true
    log "--- end of $1's log ---"
  fi
  exit 1
}

# wait_for NAME SECONDS WHAT CMD...: poll CMD until it succeeds, NAME dies, or the deadline passes.
wait_for() {
  local name=$1 secs=$2 what=$3
  shift 3
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if [ "$name" != - ] && ! alive "$name"; then fail "$name" "it exited while waiting for: $what"; fi
    [ $SECONDS -ge $deadline ] && fail "${name/#-/wait}" "no $what within ${secs}s"
    sleep 0.2
  done
}

# stop NAME [GRACE]: SIGTERM to the process group, SIGKILL after GRACE seconds.
stop() {
  local name=$1 grace=${2:-10} f pid exe
  f=$(pidfile "$name")
  [ -f "$f" ] || return 0
  if alive "$name"; then
    read -r pid exe <"$f"
    log "stopping $name (pid $pid)"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + grace))
    while alive "$name" && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    if alive "$name"; then
      log "$name did not stop in ${grace}s; SIGKILL"
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
      deadline=$((SECONDS + 10))
      while alive "$name" && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    fi
  fi
  rm -f "$f"
}

# --- host state ------------------------------------------------------------------------------

ensure_debs() {
  local missing=() p
  for p in "${DEBS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]} from Debian (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Debian would start a system containerd where policy-rc.d allows it; ours runs on its own socket.
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

save_host_state() {
  mkdir -p "$TB/saved"
  [ -f "$TB/saved/sysctl" ] && return 0 # an earlier, failed up already saved the original state
  local s
  : >"$TB/saved/sysctl.tmp"
  for s in "${SYSCTLS[@]}"; do
    [ -e "/proc/sys/${s//./\/}" ] && echo "$s=$(sysctl -n "$s")" >>"$TB/saved/sysctl.tmp"
  done
  : >"$TB/saved/absent-paths"
  for s in "${HOST_PATHS[@]}"; do [ -e "$s" ] || [ -L "$s" ] || echo "$s" >>"$TB/saved/absent-paths"; done
  mv "$TB/saved/sysctl.tmp" "$TB/saved/sysctl"
}

restore_host_state() {
  local kv p
  if [ -f "$TB/saved/sysctl" ]; then
    while IFS= read -r kv; do
      [ -e "/proc/sys/${kv%%=*}" ] || [ -e "/proc/sys/$(echo "${kv%%=*}" | tr . /)" ] || continue
      sysctl -q -w "$kv" >/dev/null || log "WARNING: cannot restore $kv"
    done <"$TB/saved/sysctl"
  fi
  if [ -f "$TB/saved/absent-paths" ]; then
    while IFS= read -r p; do
      [ -n "$p" ] || continue
      if [ -e "$p" ] || [ -L "$p" ]; then
        if findmnt -rn -o TARGET | grep -q "^$p\(/\|$\)"; then
          log "WARNING: $p still has mounts; leaving it"
        else
          rm -rf "$p"
        fi
      fi
    done <"$TB/saved/absent-paths"
  fi
}

check_addresses() {
  local r
  for r in "$CLUSTER_CIDR" "$SERVICE_CIDR"; do
    if ip -4 route show to match "${r%/*}" | grep -v '^default' | grep -vq "dev $BRIDGE"; then
      die "$r overlaps a route of this machine: $(ip -4 route show to match "${r%/*}" | grep -v '^default')"
    fi
  done
}

# reclaim: the host is held by another checkout's test bed none of whose processes runs — its run
# was killed before it could go down (a CI job cancelled, a session ended, a reboot). Tear that test
# bed down from its own state directory (its saved sysctls and host paths, its mounts), which frees
# the host. A test bed with any component alive, or one whose `up` began less than a minute ago, is
# left alone.
reclaim() {
  local o c age
  o=$(cat "$OWNER" 2>/dev/null || true)
  [ -n "$o" ] && [ "$o" != "$TB" ] && [ -d "$o" ] || return 0
  age=$(($(date +%s) - $(stat -c %Y "$OWNER")))
  [ "$age" -ge 60 ] || return 0
  for c in "${COMPONENTS[@]}"; do
    if (TB=$o && alive "$c"); then return 0; fi
  done
  log "the test bed of $o holds this host but none of its processes runs (its run ended without a down); tearing it down"
  (TB=$o && down) || die "cannot tear down the abandoned test bed of $o"
}

# check_owner: another test bed (another checkout's state directory) holds the host.
check_owner() {
  local o
  reclaim
  o=$(cat "$OWNER" 2>/dev/null || true)
  [ -z "$o" ] || [ "$o" = "$TB" ] || [ ! -d "$o" ] ||
    die "the test bed of $o holds this host; stop it with its own 'make testbed-down' first"
}

# check_ports: on a fresh up, the fixed ports must be free (another cluster or test bed?).
check_ports() {
  local c p busy
  for c in "${COMPONENTS[@]}"; do alive "$c" && return 0; done
  for p in "$API_PORT" "$ETCD_PORT" "$ETCD_PEER_PORT" 10248 10249 10250 10256 10257 10259; do
    busy=$(ss -Hltnp "sport = :$p" 2>/dev/null | head -n 1)
    [ -z "$busy" ] || die "port $p is in use ($busy); is another Kubernetes or test bed running?"
  done
}

setup_network() {
  sysctl -q -w net.ipv4.ip_forward=1
  [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ] || modprobe br_netfilter 2>/dev/null || true
  [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ] ||
    die "net.bridge.bridge-nf-call-iptables is missing (no br_netfilter); Services cannot work"
  sysctl -q -w net.bridge.bridge-nf-call-iptables=1
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
  fi
  ip addr replace "$BRIDGE_IP/${POD_SUBNET#*/}" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  # Service addresses go to the bridge as well: kube-proxy's DNAT sends them to pods or the node.
  ip route replace "$SERVICE_CIDR" dev "$BRIDGE" src "$BRIDGE_IP"
  # Pod addresses never leave this machine: drop anything forwarded between them and another interface.
  iptables -w -N PGWTB-ISOLATE 2>/dev/null || iptables -w -F PGWTB-ISOLATE
  iptables -w -A PGWTB-ISOLATE -s "$CLUSTER_CIDR" ! -o "$BRIDGE" -j DROP
  iptables -w -A PGWTB-ISOLATE -d "$CLUSTER_CIDR" ! -i "$BRIDGE" -j DROP
  iptables -w -A PGWTB-ISOLATE -d "$SERVICE_CIDR" ! -i "$BRIDGE" -j DROP
  iptables -w -C FORWARD -j PGWTB-ISOLATE 2>/dev/null || iptables -w -I FORWARD 1 -j PGWTB-ISOLATE
}

# cleanup_iptables: remove every rule that jumps to, and every chain named, KUBE-*, CNI-* or
# PGWTB-* (kube-proxy's, the kubelet's, the CNI plugins' and ours), in all tables, v4 and v6.
cleanup_iptables() {
  local ipt table line chains
  for ipt in iptables ip6tables; do
    command -v "$ipt" >/dev/null || continue
    for table in filter nat mangle raw; do
      "$ipt" -w -t "$table" -S >/dev/null 2>&1 || continue
      while IFS= read -r line; do
        eval "set -- $line"
        shift # -A
        "$ipt" -w -t "$table" -D "$@" 2>/dev/null || true
      done < <("$ipt" -w -t "$table" -S | grep -E '^-A ' | grep -E -- '-j (KUBE-|CNI-|PGWTB-)|-g (KUBE-|CNI-|PGWTB-)' |
        grep -vE '^-A (KUBE-|CNI-|PGWTB-)')
      chains=$("$ipt" -w -t "$table" -S | awk '$1 == "-N" && $2 ~ /^(KUBE-|CNI-|PGWTB-)/ {print $2}')
      for line in $chains; do "$ipt" -w -t "$table" -F "$line" 2>/dev/null || true; done
      for line in $chains; do "$ipt" -w -t "$table" -X "$line" 2>/dev/null || true; done
    done
  done
  # kube-proxy's nftables tables, should this version create any.
  if command -v nft >/dev/null; then
    nft delete table ip kube-proxy 2>/dev/null || true
    nft delete table ip6 kube-proxy 2>/dev/null || true
  fi
}

# --- configuration -----------------------------------------------------------------------------

write_pki() {
  local d=$TB/pki
  [ -f "$d/.done" ] && return 0
  mkdir -p "$d"
  (
    cd "$d"
    exec 2>openssl.log
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.crt \
      -subj /CN=pgwarden-testbed-ca -days 3650 \
      -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign,digitalSignature
    cert() { # name subject extensions
      openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$1.key" -subj "$2" |
        openssl x509 -req -CA ca.crt -CAkey ca.key -set_serial "0x$(openssl rand -hex 8)" -days 3650 \
          -extfile <(printf '%s\n' "$3") -out "$1.crt"
    }
    cert apiserver /CN=kube-apiserver "$(printf '%s\n' \
      "subjectAltName=DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:$NODE_NAME,IP:127.0.0.1,IP:$BRIDGE_IP,IP:${SERVICE_CIDR%.0/*}.1" \
      "extendedKeyUsage=serverAuth" "keyUsage=critical,digitalSignature,keyEncipherment")"
    cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" \
      "$(printf '%s\n' "extendedKeyUsage=clientAuth" "keyUsage=critical,digitalSignature,keyEncipherment")"
    openssl ecparam -name prime256v1 -genkey -noout -out sa.key
    openssl ec -in sa.key -pubout -out sa.pub
  ) || die "cannot create certificates: $(cat "$d/openssl.log" 2>/dev/null)"
  chmod 600 "$d"/*.key
  touch "$d/.done"
}

# write_kubeconfigs: static tokens, one identity per component.
write_kubeconfigs() {
  local d=$TB/kubeconfigs id user groups tok
  mkdir -p "$d"
  [ -f "$TB/pki/tokens.csv" ] && return 0
  : >"$TB/pki/tokens.csv.tmp"
  while read -r id user groups; do
    tok=$(openssl rand -hex 16)
    echo "$tok,$user,$user,\"$groups\"" >>"$TB/pki/tokens.csv.tmp"
    cat >"$d/$id.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: testbed
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority: $TB/pki/ca.crt
users:
- name: $id
  user:
    token: $tok
contexts:
- name: testbed
  context: {cluster: testbed, user: $id}
current-context: testbed
EOF
    chmod 600 "$d/$id.kubeconfig"
  done <<EOF
admin admin system:masters
kubelet system:node:$NODE_NAME system:nodes
controller-manager system:kube-controller-manager system:kube-controller-manager
scheduler system:kube-scheduler system:kube-scheduler
proxy system:kube-proxy system:node-proxier
coredns testbed:coredns system:masters
local-path testbed:local-path-provisioner system:masters
EOF
  mv "$TB/pki/tokens.csv.tmp" "$TB/pki/tokens.csv"
  cp "$d/admin.kubeconfig" "$TB/kubeconfig"
}

# put FILE: write stdin to FILE only if it differs (kube-proxy exits when its config changes,
# and a repairing `up` rewrites every file).
put() {
  cat >"$1.tmp"
  if cmp -s "$1.tmp" "$1"; then rm -f "$1.tmp"; else mv -f "$1.tmp" "$1"; fi
}

write_configs() {
  mkdir -p "$TB/containerd" "$TB/cni/net.d" "$TB/cni/networks" "$TB/cni/cache" "$TB/kubelet" "$TB/pod-logs" \
    "$TB/local-path/volumes" "$TB/config"
  local pause_image
  pause_image=$(sed -n 's/^PAUSE_IMAGE=//p' "$HERE/images.conf")
  put "$TB/containerd/config.toml" <<EOF
# pgwarden test bed: its own containerd, apart from any system one.
version = 2
root = "$TB/containerd/root"
state = "$TB/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$TB/containerd/containerd.sock"
[ttrpc]
  address = "$TB/containerd/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$TB/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$pause_image"
  # This VM lacks CAP_SYS_RESOURCE: runc cannot set negative OOM scores.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$TB/containerd/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$TB/cni/net.d"
    max_conf_num = 1
EOF
  put "$TB/cni/net.d/10-pgwtb.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "pgwtb",
  "plugins": [{
    "type": "bridge",
    "bridge": "$BRIDGE",
    "isGateway": true,
    "ipMasq": false,
    "hairpinMode": true,
    "ipam": {
      "type": "host-local",
      "dataDir": "$TB/cni/networks",
      "ranges": [[{"subnet": "$POD_SUBNET", "gateway": "$BRIDGE_IP"}]],
      "routes": [{"dst": "0.0.0.0/0"}]
    }
  }]
}
EOF
  put "$TB/config/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $BRIDGE_IP
healthzBindAddress: 127.0.0.1
healthzPort: 10248
readOnlyPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $TB/pki/ca.crt}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://$TB/containerd/containerd.sock
imageServiceEndpoint: unix://$TB/containerd/containerd.sock
# cgroup v1 controllers on this VM; containerd 1.6 has no RuntimeConfig call, so say cgroupfs here.
failCgroupV1: false
cgroupDriver: cgroupfs
failSwapOn: false
clusterDNS: [$DNS_IP]
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
podLogsDir: $TB/pod-logs
# Images cannot be pulled again here: never garbage-collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
serializeImagePulls: false
shutdownGracePeriod: 0s
shutdownGracePeriodCriticalPods: 0s
maxPods: 110
EOF
  put "$TB/config/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $TB/kubeconfigs/proxy.kubeconfig}
mode: iptables
hostnameOverride: $NODE_NAME
clusterCIDR: $CLUSTER_CIDR
detectLocalMode: ClusterCIDR
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: [$BRIDGE_IP/32]
# Leave the host's conntrack settings alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
# minSyncPeriod 1s is kube-proxy's default (0s would also mean 1s): Service changes reach the
# node's rules at most once a second, as on real clusters, so measured failovers include it.
iptables: {localhostNodePorts: false, minSyncPeriod: 1s, syncPeriod: 30s}
EOF
  put "$TB/config/Corefile" <<EOF
.:53 {
    bind $BRIDGE_IP
    errors
    health $COREDNS_HEALTH
    ready $COREDNS_READY
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $TB/kubeconfigs/coredns.kubeconfig
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }
    cache 5
}
EOF
  local app_image
  app_image=$(sed -n 's/^APP_IMAGE=//p' "$HERE/images.conf")
  put "$TB/config/local-path.json" <<EOF
{
  "nodePathMap": [{"node": "DEFAULT_PATH_FOR_NON_LISTED_NODES", "paths": ["$TB/local-path/volumes"]}],
  "setupCommand": "/local-path-helper",
  "teardownCommand": "/local-path-helper"
}
EOF
  put "$TB/config/local-path-helper-pod.yaml" <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: helper-pod
spec:
  priorityClassName: system-node-critical
  tolerations:
  - {key: node.kubernetes.io/disk-pressure, operator: Exists, effect: NoSchedule}
  containers:
  - name: helper-pod
    image: $app_image
    imagePullPolicy: Never
EOF
}

# --- components --------------------------------------------------------------------------------

https_ok() { curl -fsS --max-time 2 --cacert "$TB/pki/ca.crt" -H "Authorization: Bearer $2" "$1"; }
https_insecure_ok() { curl -fsSk --max-time 2 "$1"; }
admin_token() { sed -n 's/^ *token: //p' "$TB/kubeconfigs/admin.kubeconfig"; }

start_etcd() {
  alive etcd && return 0
  start etcd "${BIN[etcd]}" --name=testbed --data-dir="$TB/etcd" \
    --listen-client-urls="http://127.0.0.1:$ETCD_PORT" --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster="testbed=http://127.0.0.1:$ETCD_PEER_PORT" --unsafe-no-fsync=true --log-level=warn
  wait_for etcd 30 "healthy etcd" sh -c "curl -fsS --max-time 2 http://127.0.0.1:$ETCD_PORT/health | grep -q '\"health\":\"true\"'"
}

start_apiserver() {
  alive kube-apiserver && return 0
  start kube-apiserver "${BIN[kube-apiserver]}" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --bind-address=0.0.0.0 --secure-port="$API_PORT" --advertise-address="$BRIDGE_IP" \
    --cert-dir="$TB/pki/apiserver-generated" \
    --tls-cert-file="$TB/pki/apiserver.crt" --tls-private-key-file="$TB/pki/apiserver.key" \
    --client-ca-file="$TB/pki/ca.crt" --token-auth-file="$TB/pki/tokens.csv" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$TB/pki/sa.pub" --service-account-signing-key-file="$TB/pki/sa.key" \
    --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --kubelet-client-certificate="$TB/pki/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$TB/pki/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types=InternalIP,Hostname \
    --allow-privileged=true --profiling=false
  wait_for kube-apiserver 60 "/readyz" https_ok "https://127.0.0.1:$API_PORT/readyz" "$(admin_token)"
}

start_containerd() {
  alive containerd && return 0
  start containerd "$(command -v containerd)" --config "$TB/containerd/config.toml"
  wait_for containerd 30 "containerd answering on its socket" ctr --address "$TB/containerd/containerd.sock" version
}

import_images() {
  log "importing the test bed's images"
  "$HERE/images.sh" testbed || die "cannot build or import the test bed's images (see above)"
}

start_controllers() {
  if ! alive kube-controller-manager; then
    start kube-controller-manager "${BIN[kube-controller-manager]}" \
      --kubeconfig="$TB/kubeconfigs/controller-manager.kubeconfig" \
      --authentication-kubeconfig="$TB/kubeconfigs/controller-manager.kubeconfig" \
      --authorization-kubeconfig="$TB/kubeconfigs/controller-manager.kubeconfig" \
      --leader-elect=false --bind-address=127.0.0.1 --secure-port=10257 \
      --service-account-private-key-file="$TB/pki/sa.key" --root-ca-file="$TB/pki/ca.crt" \
      --use-service-account-credentials=true \
      --cluster-cidr="$CLUSTER_CIDR" --service-cluster-ip-range="$SERVICE_CIDR" \
      --allocate-node-cidrs=false --configure-cloud-routes=false --profiling=false
  fi
  if ! alive kube-scheduler; then
    start kube-scheduler "${BIN[kube-scheduler]}" \
      --kubeconfig="$TB/kubeconfigs/scheduler.kubeconfig" \
      --authentication-kubeconfig="$TB/kubeconfigs/scheduler.kubeconfig" \
      --authorization-kubeconfig="$TB/kubeconfigs/scheduler.kubeconfig" \
      --leader-elect=false --bind-address=127.0.0.1 --secure-port=10259 --profiling=false
  fi
  wait_for kube-controller-manager 60 "/healthz" https_insecure_ok https://127.0.0.1:10257/healthz
  wait_for kube-scheduler 60 "/healthz" https_insecure_ok https://127.0.0.1:10259/healthz
}

node_ready() {
  [ "$(kubectl get node "$NODE_NAME" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

start_kubelet() {
  alive kubelet && return 0
  start kubelet "${BIN[kubelet]}" --config="$TB/config/kubelet.yaml" \
    --kubeconfig="$TB/kubeconfigs/kubelet.kubeconfig" --root-dir="$TB/kubelet" --cert-dir="$TB/kubelet/pki" \
    --hostname-override="$NODE_NAME" --node-ip="$BRIDGE_IP"
  wait_for kubelet 90 "Ready node $NODE_NAME" node_ready
}

start_proxy() {
  alive kube-proxy && return 0
  start kube-proxy "${BIN[kube-proxy]}" --config="$TB/config/kube-proxy.yaml"
  wait_for kube-proxy 60 "/healthz" curl -fsS --max-time 2 http://127.0.0.1:10256/healthz
}

apply_cluster_objects() {
  kubectl apply -f - >/dev/null <<EOF || fail kube-apiserver "cannot create the test bed's objects"
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: {k8s-app: kube-dns, kubernetes.io/name: CoreDNS}
spec:
  clusterIP: $DNS_IP
  ports:
  - {name: dns, port: 53, protocol: UDP, targetPort: 53}
  - {name: dns-tcp, port: 53, protocol: TCP, targetPort: 53}
---
# CoreDNS runs on the host, on the bridge's address: the Service has no selector, this slice
# points at it.
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kube-dns-host
  namespace: kube-system
  labels:
    kubernetes.io/service-name: kube-dns
    endpointslice.kubernetes.io/managed-by: testbed.pgwarden.io
addressType: IPv4
endpoints:
- addresses: [$BRIDGE_IP]
  conditions: {ready: true}
  nodeName: $NODE_NAME
ports:
- {name: dns, port: 53, protocol: UDP}
- {name: dns-tcp, port: 53, protocol: TCP}
---
apiVersion: v1
kind: Namespace
metadata: {name: local-path-storage}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: local-path-provisioner-service-account, namespace: local-path-storage}
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: local-path
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: rancher.io/local-path
volumeBindingMode: WaitForFirstConsumer
reclaimPolicy: Delete
EOF
}

start_coredns() {
  alive coredns && return 0
  start coredns "${BIN[coredns]}" -conf "$TB/config/Corefile"
  wait_for coredns 60 "/ready" curl -fsS --max-time 2 "http://$COREDNS_READY/ready"
}

start_local_path() {
  alive local-path-provisioner && return 0
  start local-path-provisioner "${BIN[local-path-provisioner]}" start \
    --kubeconfig "$TB/kubeconfigs/local-path.kubeconfig" \
    --config "$TB/config/local-path.json" --helper-pod-file "$TB/config/local-path-helper-pod.yaml" \
    --provisioner-name rancher.io/local-path --namespace local-path-storage \
    --service-account-name local-path-provisioner-service-account --configmap-name local-path-config \
    --helper-image "$(sed -n 's/^APP_IMAGE=//p' "$HERE/images.conf")"
  wait_for local-path-provisioner 60 "a started provisioner controller" \
    grep -q 'Started provisioner controller' "$TB/logs/local-path-provisioner.log"
}

default_sa() { kubectl get serviceaccount default -n default >/dev/null 2>&1; }

up() {
  [ "$(id -u)" = 0 ] || die "the node level needs root (containerd, kubelet, iptables, mounts)"
  local t0=$SECONDS
  if [ -f "$TB/up.done" ] && all_alive; then
    log "already up; kubeconfig: $TB/kubeconfig"
    return 0
  fi
  if [ -d "$TB/pids" ] && [ -n "$(ls -A "$TB/pids" 2>/dev/null)" ] && ! [ -f "$TB/up.done" ]; then
    log "an earlier up did not finish; tearing it down first"
    down
  fi
  "$HERE/build.sh" node || die "cannot build the test bed's binaries"
  load_bins
  ensure_debs
  # Preflight before any state exists: a failed check must leave nothing that down would act on.
  check_owner
  check_addresses
  check_ports
  mkdir -p "$TB/logs" "$TB/pids"
  echo "$TB" > "$OWNER"
  save_host_state
  trap on_up_error EXIT
  setup_network
  write_pki
  write_kubeconfigs
  write_configs
  start_etcd
  start_apiserver
  start_containerd
  import_images
  start_controllers
  apply_cluster_objects
  start_kubelet
  start_proxy
  start_coredns
  start_local_path
  wait_for - 60 "ServiceAccount default/default" default_sa
  trap - EXIT
  touch "$TB/up.done"
  log "up in $((SECONDS - t0))s; export KUBECONFIG=$TB/kubeconfig"
}

on_up_error() {
  local rc=$?
  trap - EXIT
  [ $rc -eq 0 ] && return 0
  if [ "${TESTBED_KEEP_ON_FAILURE:-0}" = 1 ]; then
    log "up failed; left running for inspection (TESTBED_KEEP_ON_FAILURE=1); logs in $TB/logs; run make testbed-down"
  else
    log "up failed; tearing down (set TESTBED_KEEP_ON_FAILURE=1 to keep it for inspection)"
    down || true
  fi
  exit $rc
}

COMPONENTS=(etcd kube-apiserver containerd kube-controller-manager kube-scheduler kubelet kube-proxy coredns
  local-path-provisioner)

all_alive() {
  local c
  for c in "${COMPONENTS[@]}"; do alive "$c" || return 1; done
}

status() {
  local c
  for c in "${COMPONENTS[@]}"; do
    if alive "$c"; then printf '%-26s running (pid %s)\n' "$c" "$(cut -d' ' -f1 "$(pidfile "$c")")"
    else printf '%-26s not running\n' "$c"; fi
  done
  [ -f "$TB/up.done" ] && echo "kubeconfig: $TB/kubeconfig"
  return 0
}

# --- down ----------------------------------------------------------------------------------------

# drain_pods: with nothing left to recreate them, delete every pod so the kubelet stops them
# properly (CNI DEL, unmounts), then wait until no container runs.
drain_pods() {
  alive kube-apiserver && alive kubelet && alive containerd || return 0
  log "deleting all pods"
  kubectl delete pods --all --all-namespaces --grace-period=1 --wait=false >/dev/null 2>&1 || true
  local deadline=$((SECONDS + 60))
  while [ $SECONDS -lt $deadline ]; do
    if [ -z "$(kubectl get pods -A -o name 2>/dev/null)" ] && [ -z "$(running_tasks)" ]; then return 0; fi
    sleep 0.3
  done
  log "WARNING: pods did not all stop within 60s; killing their containers"
}

running_tasks() { ctr_ tasks ls 2>/dev/null | awk 'NR > 1 && $3 == "RUNNING" {print $1}'; }

# remove_containers: kill and delete whatever containerd still has (the kubelet is gone by now).
remove_containers() {
  alive containerd || return 0
  local id
  for id in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true; done
  local deadline=$((SECONDS + 15))
  while [ -n "$(running_tasks)" ] && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
  for id in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks delete -f "$id" >/dev/null 2>&1 || true; done
  for id in $(ctr_ containers ls -q 2>/dev/null); do ctr_ containers delete "$id" >/dev/null 2>&1 || true; done
}

# kill_leftovers: containerd shims of our socket, and processes in the kubelet's cgroups.
kill_leftovers() {
  local pid cmd pids=()
  for pid in $(pgrep -f containerd-shim 2>/dev/null || true); do
    cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)
    [[ $cmd == *"$TB/containerd/containerd.sock"* ]] && pids+=("$pid")
  done
  local f
  for f in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/unified/kubepods; do
    [ -d "$f" ] || continue
    while read -r pid; do [ -n "$pid" ] && pids+=("$pid"); done < <(find "$f" -name cgroup.procs -exec cat {} + 2>/dev/null)
  done
  if [ ${#pids[@]} -gt 0 ]; then
    log "killing leftover processes: ${pids[*]}"
    kill -KILL "${pids[@]}" 2>/dev/null || true
    local deadline=$((SECONDS + 10))
    for pid in "${pids[@]}"; do
      while [ -e "/proc/$pid" ] && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    done
  fi
}

unmount_all() {
  local m left
  for _ in 1 2 3; do
    left=$(findmnt -rn -o TARGET | awk -v tb="$TB" 'index($0, tb) == 1' | sort -r)
    [ -z "$left" ] && return 0
    while IFS= read -r m; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done <<<"$left"
  done
  left=$(findmnt -rn -o TARGET | awk -v tb="$TB" 'index($0, tb) == 1')
  [ -z "$left" ] || log "WARNING: still mounted: $left"
}

remove_cgroups() {
  local d
  for d in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/unified/kubepods; do
    [ -d "$d" ] || continue
    find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    [ -d "$d" ] && log "WARNING: cannot remove cgroup $d"
  done
  return 0
}

down() {
  [ "$(id -u)" = 0 ] || die "the node level needs root"
  [ -d "$TB" ] || { log "not up"; return 0; }
  local o
  o=$(cat "$OWNER" 2>/dev/null || true)
  if [ -n "$o" ] && [ "$o" != "$TB" ] && [ -d "$o" ]; then
    # Our up failed before it started anything, or never got the host: the host-wide state
    # belongs to the test bed of $o. Remove only our own directory.
    log "the host belongs to the test bed of $o; removing only $TB"
    rm -rf "$TB"
    return 0
  fi
  local t0=$SECONDS
  [ ${#BIN[@]} -gt 0 ] || load_bins
  rm -f "$TB/up.done"
  # Nothing may recreate or reschedule pods while they go.
  stop kube-controller-manager
  stop kube-scheduler
  stop local-path-provisioner
  drain_pods
  stop kubelet 20
  stop kube-proxy
  stop coredns
  remove_containers
  stop containerd 20
  stop kube-apiserver 20
  stop etcd
  kill_leftovers
  unmount_all
  cleanup_iptables
  ip link delete "$BRIDGE" 2>/dev/null || true
  if command -v conntrack >/dev/null; then
    conntrack -D -s "$CLUSTER_CIDR" >/dev/null 2>&1 || true
    conntrack -D -d "$CLUSTER_CIDR" >/dev/null 2>&1 || true
    conntrack -D -d "$SERVICE_CIDR" >/dev/null 2>&1 || true
  fi
  remove_cgroups
  restore_host_state
  # Everything of the test bed lives under $TB; mounts are gone, so this cannot reach the host.
  if findmnt -rn -o TARGET | awk -v tb="$TB" 'index($0, tb) == 1' | grep -q .; then
    log "WARNING: mounts remain under $TB; not removing it"
    return 1
  fi
  rm -rf "$TB"
  [ "$(cat "$OWNER" 2>/dev/null || true)" != "$TB" ] || rm -f "$OWNER"
  log "down in $((SECONDS - t0))s"
}

# One up or down at a time (the lock is on this script, so it leaves no file behind).
lock() {
  exec 8<"${BASH_SOURCE[0]}"
  if ! flock -n 8; then
    log "another node.sh up/down is running; waiting for it (at most 5 minutes)"
    flock -w 300 8 || die "another node.sh up/down still holds the lock on ${BASH_SOURCE[0]}"
  fi
}

case "${1:-}" in
  up) lock; up ;;
  down) lock; down ;;
  status) status ;;
  reclaim) lock; [ ${#BIN[@]} -gt 0 ] || load_bins; reclaim ;;
  *) sed -n '2,19p' "$0"; exit 2 ;;
esac
