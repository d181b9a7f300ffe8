#!/usr/bin/env bash
# make demo / make demo-down: pgwarden on this machine, in a few minutes.
#
#   demo.sh up     build, start the node test bed (e2e/testbed/node.sh), build and import the images,
#                  deploy the operator (e2e/demo/deploy = deploy/default for the test bed), create the
#                  3-instance PostgresCluster "demo" in namespace "default", wait until it is Healthy,
#                  check a connection through demo-rw, and print what to try next. Idempotent.
#   demo.sh down   delete the cluster and the operator, stop the node and restore the host.
#   demo.sh env    print the exports that make `kubectl` and `kubectl pgwarden` reach the demo:
#                  eval "$(e2e/demo/demo.sh env)"
#
# Needs root (the node test bed runs containerd and a kubelet on this host). Each step's output goes
# to a log file; a failed step is named, with the end of its log and of the logs that explain it
# (operator, pod events and logs, kubelet). The superuser password is never printed.
#
# Environment: TESTBED_DIR (the node's state, default <checkout>/.testbed), DEMO_TIMEOUT (seconds to
# wait for Healthy, default 300), PGWARDEN_NODE_WAIT (seconds to wait for another checkout's test on
# the node test bed to finish, default 0).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TB=${TESTBED_DIR:-$ROOT/.testbed}
export TESTBED_DIR=$TB
CLUSTER=demo
NS=default
OPNS=pgwarden-system
OPNAME=pgwarden-operator
INSTANCES=3
TIMEOUT=${DEMO_TIMEOUT:-300}
QUEUE=${TESTBED_QUEUE_FILE:-/run/pgwarden-testbed.queue}

KUBECTL_DIR=$("$ROOT/e2e/testbed/build.sh" --print-dir kubectl)
KUBECTL=$KUBECTL_DIR/kubectl
k() { "$KUBECTL" --kubeconfig "$TB/kubeconfig" "$@"; }

# --- steps, logs, failure reports ----------------------------------------------------------------

LOGDIR=""
STEP=""
STEP_TEXT=""
STEPS=0
DIAG=none
WHAT="make demo"
T0=$SECONDS

say() { printf '%s\n' "$*"; }
# step N TEXT DIAG: announce a step; DIAG names what to show if it fails.
step() {
  STEP=$1 STEP_TEXT=$2 DIAG=$3
  printf '[%s/%s] %s…\n' "$STEP" "$STEPS" "$STEP_TEXT"
}
# quietly CMD...: run CMD with its output in the step's log.
quietly() { "$@" >>"$LOGDIR/step-$STEP.log" 2>&1; }

# tail_of TITLE CMD...: a titled, indented excerpt for the failure report.
tail_of() {
  local title=$1
  shift
  printf '\n--- %s ---\n' "$title"
  "$@" 2>&1 | sed 's/^/    /' || true
}

diag_operator() {
  tail_of "operator pods ($OPNS)" k -n "$OPNS" get pods -o wide
  tail_of "last events in $OPNS" bash -c "'$KUBECTL' --kubeconfig '$TB/kubeconfig' -n $OPNS get events --sort-by=.lastTimestamp | tail -n 15"
  tail_of "last 40 lines of the operator's log" k -n "$OPNS" logs "deploy/$OPNAME" --tail=40 --all-containers
}

diag_cluster() {
  tail_of "PostgresCluster $CLUSTER" k -n "$NS" get pgc "$CLUSTER" \
    -o 'jsonpath={.status.phase}: {.status.phaseReason}{"\n"}{range .status.instancesStatus[*]}{.name}: role={.role} ready={.ready} {.message}{"\n"}{end}'
  tail_of "pods of $CLUSTER" k -n "$NS" get pods -l "pgwarden.io/cluster=$CLUSTER" -o wide
  tail_of "PVCs of $CLUSTER" k -n "$NS" get pvc -l "pgwarden.io/cluster=$CLUSTER"
  tail_of "last events in $NS" bash -c "'$KUBECTL' --kubeconfig '$TB/kubeconfig' -n $NS get events --sort-by=.lastTimestamp | tail -n 20"
  local p
  for p in $(k -n "$NS" get pods -l "pgwarden.io/cluster=$CLUSTER" -o name 2>/dev/null); do
    tail_of "last 15 lines of ${p#pod/}'s log" k -n "$NS" logs "$p" --tail=15
  done
  diag_operator
  [ -f "$TB/logs/kubelet.log" ] && tail_of "last 15 lines of the kubelet's log ($TB/logs/kubelet.log)" tail -n 15 "$TB/logs/kubelet.log"
  return 0
}

on_exit() {
  local rc=$?
  trap - EXIT
  if [ $rc -ne 0 ] && [ -n "$STEP" ]; then
    printf '\n%s: FAILED at step [%s/%s] %s (exit code %s)\n' "$WHAT" "$STEP" "$STEPS" "$STEP_TEXT" "$rc" >&2
    if [ -s "$LOGDIR/step-$STEP.log" ]; then
      printf -- '--- last 30 lines of this step'"'"'s log (%s) ---\n' "$LOGDIR/step-$STEP.log" >&2
      tail -n 30 "$LOGDIR/step-$STEP.log" | sed 's/^/    /' >&2
    fi
    case $DIAG in
      operator) diag_operator >&2 ;;
      cluster) diag_cluster >&2 ;;
    esac
    printf '\nAll of this run'"'"'s logs: %s. Start over with: make demo-down && make demo\n' "$LOGDIR" >&2
  elif [ -n "$LOGDIR" ]; then
    rm -rf "$LOGDIR"
  fi
  exit $rc
}

fail() { say "  $*" >&2; exit 1; }

node_up() { [ -f "$TB/up.done" ] && [ -s "$TB/kubeconfig" ] && k get --raw /readyz >/dev/null 2>&1; }

# image_digest REF: the digest of a tag in the node's containerd, empty if absent.
image_digest() {
  ctr --address "$TB/containerd/containerd.sock" -n k8s.io images ls "name==$1" 2>/dev/null | awk 'NR == 2 {print $3}'
}

conf() { sed -n "s/^$1=//p" "$ROOT/e2e/testbed/images.conf"; }

# --- up ------------------------------------------------------------------------------------------

up() {
  STEPS=7
  [ "$(id -u)" = 0 ] || { say "make demo needs root: the node test bed runs containerd and a kubelet on this host" >&2; exit 1; }
  LOGDIR=$(mktemp -d /tmp/pgwarden-demo.XXXXXX)
  trap on_exit EXIT

  step 1 "building pgwarden (bin/pgwarden, bin/kubectl-pgwarden) and the test bed's Kubernetes binaries" none
  quietly make -C "$ROOT" build build-instance
  if ! "$ROOT/e2e/testbed/build.sh" node >>"$LOGDIR/step-1.log" 2>&1; then
    fail "cannot build the test bed's binaries (from the Go module proxy into ~/.cache/pgwarden; ~12 minutes cold)"
  fi

  step 2 "starting the node test bed (containerd, kubelet, API server on this host)" none
  if node_up; then
    say "  already up ($TB)"
  else
    # One node test bed per host: wait in the same queue as the tests of other checkouts.
    exec 9>"$QUEUE"
    flock -w "${PGWARDEN_NODE_WAIT:-0}" 9 ||
      fail "another checkout's test is using the node test bed; wait for it (PGWARDEN_NODE_WAIT=SECONDS) or stop it"
    quietly "$ROOT/e2e/testbed/node.sh" up 9>&-
    exec 9>&-
  fi

  step 3 "building the instance and operator images and importing them into the node" none
  local opimg instimg before_op before_inst
  opimg=$(conf OPERATOR_IMAGE)
  instimg=$(conf INSTANCE_IMAGE)
  before_op=$(image_digest "$opimg")
  before_inst=$(image_digest "$instimg")
  quietly "$ROOT/e2e/testbed/images.sh" pgwarden
  say "  $instimg, $opimg"

  step 4 "deploying the operator (kubectl apply -k e2e/demo/deploy: deploy/default, 1 replica)" operator
  quietly k apply -k "$HERE/deploy"
  quietly k wait --for condition=established crd/postgresclusters.pgwarden.io --timeout=60s
  if [ -n "$before_op" ] && [ "$before_op" != "$(image_digest "$opimg")" ]; then
    say "  the operator image changed: restarting the operator"
    quietly k -n "$OPNS" rollout restart "deploy/$OPNAME"
  fi
  quietly k -n "$OPNS" rollout status "deploy/$OPNAME" --timeout=120s

  step 5 "creating PostgresCluster $CLUSTER ($INSTANCES instances) in namespace $NS" cluster
  quietly k apply -f "$HERE/cluster.yaml"
  if [ -n "$before_inst" ] && [ "$before_inst" != "$(image_digest "$instimg")" ]; then
    say "  note: the instance image changed; running instance pods keep the old one until they are recreated"
  fi

  step 6 "waiting until $CLUSTER is Healthy (at most ${TIMEOUT}s)" cluster
  local deadline=$((SECONDS + TIMEOUT)) last="" now
  while :; do
    now=$(k -n "$NS" get pgc "$CLUSTER" -o 'jsonpath={.status.phase}|{.status.readyInstances}|{.metadata.generation}|{.status.observedGeneration}|{.status.phaseReason}' 2>>"$LOGDIR/step-6.log" || true)
    IFS='|' read -r phase readyn gen obs reason <<<"$now"
    if [ "$phase" = Healthy ] && [ "$readyn" = "$INSTANCES" ] && [ "$gen" = "$obs" ]; then
      say "  Healthy: $reason"
      break
    fi
    if [ "${phase:-none}: $reason" != "$last" ]; then
      last="${phase:-none}: $reason"
      say "  $(printf '%3ss' $((SECONDS - T0))) phase ${phase:-(none yet)}${reason:+: $reason}"
    fi
    [ $SECONDS -lt $deadline ] || fail "not Healthy within ${TIMEOUT}s (DEMO_TIMEOUT)"
    sleep 2
  done

  step 7 "connecting through Service $CLUSTER-rw (psql, the generated superuser password)" cluster
  if ! command -v psql >/dev/null; then
    say "  psql is not installed here (apt-get install postgresql-client, or make deps); skipped"
  else
    local ip answer=""
    ip=$(k -n "$NS" get svc "$CLUSTER-rw" -o 'jsonpath={.spec.clusterIP}')
    deadline=$((SECONDS + 60))
    # The password goes from the Secret into psql's environment only: never a command line or a log.
    until answer=$(PGPASSWORD=$(k -n "$NS" get secret "$CLUSTER-superuser" -o 'jsonpath={.data.password}' | base64 -d) \
      PGCONNECT_TIMEOUT=5 psql -h "$ip" -U postgres -d postgres -XAtc 'select pg_is_in_recovery()' 2>>"$LOGDIR/step-7.log") &&
      [ "$answer" = f ]; do
      [ $SECONDS -lt $deadline ] || fail "no writable primary behind $CLUSTER-rw ($ip:5432) within 60s"
      sleep 1
    done
    say "  $ip:5432 is the primary (pg_is_in_recovery = false)"
  fi

  next_steps
}

next_steps() {
  local primary replica
  primary=$(k -n "$NS" get pgc "$CLUSTER" -o 'jsonpath={.status.currentPrimary}')
  replica=$(k -n "$NS" get pods -l "pgwarden.io/cluster=$CLUSTER,pgwarden.io/instance-role=replica" \
    -o 'jsonpath={.items[0].metadata.name}' 2>/dev/null || true)
  replica=${replica:-$CLUSTER-2}
  cat <<EOF

PostgresCluster $CLUSTER is Healthy: primary $primary, $((INSTANCES - 1)) replicas ($((SECONDS - T0))s).

Try it (this shell needs the demo's KUBECONFIG, kubectl and kubectl-pgwarden on PATH):

  eval "\$(make -s demo-env)"
  kubectl get pgc
  kubectl pgwarden status $CLUSTER

  # psql through the primary's Service; the password goes from the Secret into psql's environment only
  export PGHOST=\$(kubectl get svc $CLUSTER-rw -o jsonpath='{.spec.clusterIP}') PGUSER=postgres PGDATABASE=postgres
  PGPASSWORD=\$(kubectl get secret $CLUSTER-superuser -o jsonpath='{.data.password}' | base64 -d) psql

  # switchover: the plugin annotates a replica and follows the switchover step by step ...
  kubectl pgwarden promote $CLUSTER $replica
  # ... or annotate the replica yourself
  kubectl annotate pod $replica pgwarden.io/role=primary --overwrite

  # failover: delete the primary's pod and watch another instance take over
  kubectl delete pod \$(kubectl get pgc $CLUSTER -o jsonpath='{.status.currentPrimary}')
  kubectl get pgc $CLUSTER -w

When you are done: make demo-down (deletes the cluster and the operator, stops the node, restores the host).
EOF
}

# --- down ----------------------------------------------------------------------------------------

down() {
  STEPS=3 WHAT="make demo-down"
  [ "$(id -u)" = 0 ] || { say "make demo-down needs root" >&2; exit 1; }
  LOGDIR=$(mktemp -d /tmp/pgwarden-demo.XXXXXX)
  trap on_exit EXIT
  local up=0
  node_up && up=1

  step 1 "deleting PostgresCluster $CLUSTER (its pods stop within stopDelay, then their volumes go)" cluster
  if [ $up = 0 ]; then
    say "  the node test bed is not up; nothing to delete"
  elif ! k get crd postgresclusters.pgwarden.io >/dev/null 2>&1; then
    say "  no PostgresCluster CRD; nothing to delete"
  else
    # Foreground: returns when the pods, PVCs, Services, Secrets it owns are gone.
    quietly k -n "$NS" delete pgc "$CLUSTER" --ignore-not-found --cascade=foreground --wait=true --timeout=180s
    local deadline=$((SECONDS + 120)) left
    while left=$(k get pv -o "jsonpath={range .items[?(@.spec.claimRef.namespace==\"$NS\")]}{.spec.claimRef.name}{\"\\n\"}{end}" 2>>"$LOGDIR/step-1.log" |
      grep "^$CLUSTER-[0-9]*$" || true); [ -n "$left" ]; do
      [ $SECONDS -lt $deadline ] || fail "volumes of $CLUSTER not released within 120s: $left"
      sleep 1
    done
  fi

  step 2 "removing the operator (kubectl delete -k e2e/demo/deploy)" operator
  if [ $up = 1 ]; then
    quietly k delete -k "$HERE/deploy" --ignore-not-found --wait=true --timeout=120s
  else
    say "  the node test bed is not up; nothing to remove"
  fi

  step 3 "stopping the node test bed and restoring the host" none
  if [ -d "$TB" ]; then
    quietly "$ROOT/e2e/testbed/node.sh" down
  else
    say "  not up"
  fi
  say "demo down ($((SECONDS - T0))s)"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  env)
    printf 'export KUBECONFIG=%q\n' "$TB/kubeconfig"
    printf 'export PATH=%q:%q:"$PATH"\n' "$ROOT/bin" "$KUBECTL_DIR"
    ;;
  *) sed -n '2,18p' "$0"; exit 2 ;;
esac
