#!/usr/bin/env bash
# F21: `up` refuses any cluster range that overlaps ANY route of the machine (F6's fix), so it
# refuses on ordinary machines whose routes merely CONTAIN our ranges:
#   - Ubuntu desktops (avahi/NetworkManager): `169.254.0.0/16 dev <nic> scope link metric 1000`
#     contains layout.sink_link_cidr 169.254.123.0/30;
#   - a full-tunnel OpenVPN (redirect-gateway def1): 0.0.0.0/1 + 128.0.0.0/1, a default route
#     in two halves, contains every range;
#   - a split-tunnel corporate VPN: `10.0.0.0/8 via <vpn>` contains 10.244/16, 10.96/16, ...
# Our sink routes are more specific: they take only our slice while up, replace nothing, and
# `down` deletes only routes on ztr-sink0. A route INSIDE one of our ranges (F6: a VPN's
# 10.96.0.0/16 to a dev cluster's Services) must still be refused, and their wide routes must
# survive up and down. Runs in e2e/sandbox/sandbox.sh. Exit 0 = behaves; 1 = finding.
source "$(dirname "$0")/prologue.bash"
e2e/sandbox/sandbox.sh env PY="$PY" bash -euo pipefail -c '
  export ZT_RELAY_E2E_STATE=$(mktemp -d /tmp/review-f21-state.XXXX); trap "rm -rf $ZT_RELAY_E2E_STATE" EXIT
  ip link add vpn0 type veth peer name vpn0peer; ip addr add 198.18.6.2/24 dev vpn0; ip link set vpn0 up; ip link set vpn0peer up
  ip route add 169.254.0.0/16 dev eth0 scope link metric 1000
  ip route add 0.0.0.0/1 via 198.18.6.1 dev vpn0
  ip route add 128.0.0.0/1 via 198.18.6.1 dev vpn0
  ip route add 10.0.0.0/8 via 198.18.6.1 dev vpn0
  before=$(ip -4 route show | sort)
  $PY -c "
from e2e.cluster import health, layout as L, network
layout = health.current_layout()
L.check_disjoint(layout, network.machine_networks(), network.machine_routes())
print(\"check_disjoint: no objection\")
network.setup_safety(layout)
" || { echo "FAIL: up refused a machine whose routes only contain our ranges"; exit 1; }
  ip route show 10.244.0.0/16 | grep -q ztr-sink0 || { echo "FAIL: no sink route"; exit 1; }
  $PY -m e2e.cluster down 2>&1 | tail -1
  after=$(ip -4 route show | sort)
  [ "$before" = "$after" ] || { echo "FAIL: routes differ after up+down:"; diff <(echo "$before") <(echo "$after") || true; exit 1; }
  echo "--- a route inside our service range (F6) is still refused"
  ip route add 10.96.0.0/16 via 198.18.6.1 dev vpn0
  if $PY -c "
from e2e.cluster import health, layout as L, network
L.check_disjoint(health.current_layout(), network.machine_networks(), network.machine_routes())
" 2>/dev/null; then echo "FAIL: 10.96.0.0/16 via vpn0 accepted"; exit 1; fi
  echo PASS
'
