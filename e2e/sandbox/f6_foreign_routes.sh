#!/usr/bin/env bash
# F6: routes are not marked. A developer who reaches a remote/dev cluster's Services through a
# VPN has e.g. `10.96.0.0/16 via <vpn gw>` (10.96/12 is kubeadm's default service range,
# 10.244/16 flannel's pod range). check_disjoint() looks at interface addresses only, so `up`
# accepts the plan, setup_safety() `ip route replace`s the route into our sink (their traffic to
# those Services is now swallowed), and `down` - run first by .ci/run, even when no cluster of
# ours ever ran - deletes whatever route has that prefix (`ip route del CIDR`, no dev/via).
# Runs in e2e/sandbox/sandbox.sh. Exit 0 = their route untouched (`up` may refuse, naming it);
# 1 = replaced/deleted.
source "$(dirname "$0")/prologue.bash"
e2e/sandbox/sandbox.sh env PY="$PY" bash -euo pipefail -c '
  export ZT_RELAY_E2E_STATE=$(mktemp -d /tmp/review-f6-state.XXXX); trap "rm -rf $ZT_RELAY_E2E_STATE" EXIT
  ip link add vpn0 type veth peer name vpn0peer; ip addr add 198.18.6.2/24 dev vpn0; ip link set vpn0 up; ip link set vpn0peer up
  theirs="10.96.0.0/16 via 198.18.6.1 dev vpn0"
  ip route add $theirs
  echo "their route: $(ip route show 10.96.0.0/16)"
  echo "--- python -m e2e.cluster down (first thing .ci/run does; no cluster of ours exists)"
  $PY -m e2e.cluster down 2>&1 | tail -1 || true
  after_down=$(ip route show 10.96.0.0/16); echo "after down: ${after_down:-<deleted>}"
  ip route replace $theirs
  echo "--- up: check_disjoint(layout, machine_networks()) then network.setup_safety(layout)"
  $PY -c "
from e2e.cluster import health, layout as L, network
layout = health.current_layout()
L.check_disjoint(layout, network.machine_networks(), network.machine_routes()); print(\"check_disjoint: no objection\")
network.setup_safety(layout)" || echo "up refused (the traceback above names the route)"
  after_up=$(ip route show 10.96.0.0/16); echo "after up: $after_up"
  [ "$after_down" = "10.96.0.0/16 via 198.18.6.1 dev vpn0 " ] || [ "$after_down" = "10.96.0.0/16 via 198.18.6.1 dev vpn0" ] || { echo "FAIL: down deleted a route it never made"; exit 1; }
  case "$after_up" in *vpn0*) echo PASS;; *) echo "FAIL: up hijacked a route of the machine into the sink"; exit 1;; esac
'
