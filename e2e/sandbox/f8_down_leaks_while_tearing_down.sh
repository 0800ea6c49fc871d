#!/usr/bin/env bash
# F8: `down` removes the firewall (firewall.remove) BEFORE it deletes the test-host namespaces
# and turns ip_forward back off (network.teardown, sysctls.restore come after). Whatever still
# runs in a test host (a crashed run's client, a peer) is forwarded off the machine, unfiltered,
# for the rest of the teardown. On a machine whose FORWARD policy is ACCEPT (no dockerd - the
# case the shared notes say hides gaps) the packets leave by the default route.
# Reproduced in e2e/sandbox/sandbox.sh: the harness's own rules and test host, a sender in the host
# namespace, `python -m e2e.cluster down`, and a counter in an "outside" namespace at the far end
# of the fake eth0. Exit 0 = nothing reached the outside; 1 = packets leaked during `down`.
source "$(dirname "$0")/prologue.bash"
sim_cgroup zt-review-sim
e2e/sandbox/sandbox.sh env PY="$PY" CG="$CG" bash -euo pipefail -c '
  export ZT_RELAY_E2E_STATE=$(mktemp -d /tmp/review-f8-state.XXXX)
  echo 2 > $ZT_RELAY_E2E_STATE/generation
  # The outside world at the far end of eth0, counting what arrives.
  ip netns add outside; ip link set eth0peer netns outside
  ip -n outside addr add 198.18.5.1/24 dev eth0peer; ip -n outside link set eth0peer up
  ip netns exec outside iptables -t raw -A PREROUTING -d 198.18.99.1 -j DROP
  arrived() { ip netns exec outside iptables -t raw -L PREROUTING -v -x -n | awk "/DROP/ {print \$1}"; }
  # Every drop of ours is counted in the security table. Waiting until N more datagrams of the
  # sender are dropped there (not a fixed time) shows that it runs and that its packets got as
  # far as the rules of the harness since the last step (a re-install restarts the counter at 0).
  guard() { iptables -t security -L ZTR-E2E-FORWARD -v -x -n | awk "/DROP/ {n += \$1} END {print n + 0}"; }
  dropped_more() {
    local before now deadline=$((SECONDS + 30)); before=$(guard)
    until now=$(guard); [ "$now" -ge $((before + $1)) ] || { [ "$now" -lt "$before" ] && [ "$now" -ge "$1" ]; }; do
      [ $SECONDS -lt $deadline ] || { echo "the harness dropped no $1 more of the sender'"'"'s datagrams in 30 s"; return 1; }; sleep 0.05; done
  }
  $PY -c "
from e2e.cluster import firewall, health, network
layout = health.current_layout()
firewall.install_all(layout, \"$CG\", \"$CG\")
network.setup_safety(layout)
network.setup_node_address(layout)
host = network.create_test_host(layout, \"leftover\")
print(\"test host\", host.netns, host.address)
"
  ip netns exec ztr-h-leftover $PY -c "
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
while True:
    s.sendto(b\"leak?\", (\"198.18.99.1\", 9)); time.sleep(0.001)
" &
  dropped_more 50 || exit 2
  echo "arrived outside with the cluster'"'"'s rules in place: $(arrived)"
  [ "$(arrived)" = 0 ] || { echo "unexpected: leaks even before down"; exit 2; }
  $PY -m e2e.cluster down 2>&1 | tail -25 || true
  wait || true
  n=$(arrived); echo "arrived outside during down: $n"
  rm -rf $ZT_RELAY_E2E_STATE
  [ "$n" = 0 ] && { echo PASS; exit 0; }
  echo "FAIL: down let $n packets of a test host leave the machine (rules removed before the namespaces)"; exit 1
'
