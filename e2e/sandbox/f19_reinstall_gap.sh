#!/usr/bin/env bash
# F19: when dockerd (restarted) or anything else put a jump above ours, the next `up` (every
# test session starts with one) runs firewall.ensure_first -> install(): it FLUSHES
# ZTR-E2E-FORWARD, appends the rules again one iptables call at a time, deletes our jump and
# inserts it again. Until then the chain is empty (or not jumped to), and a running pod's
# packets fall through to the FORWARD policy: on a machine without dockerd's DROP policy,
# off the machine. Reproduced in e2e/sandbox/sandbox.sh with the harness's rules: a pod sending
# to an outside address every ms while ensure_first() restores the order once.
# Exit 0 = nothing reached the outside; 1 = packets leaked during the re-install.
source "$(dirname "$0")/prologue.bash"
sim_cgroup zt-review-sim
e2e/sandbox/sandbox.sh env PY="$PY" CG="$CG" bash -uo pipefail -c '
  export ZT_RELAY_E2E_STATE=$(mktemp -d /tmp/review-f19-state.XXXX)
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
firewall.install_all(layout, \"$CG\", \"$CG\"); network.setup_safety(layout); network.setup_node_address(layout)"
  ip link add ztr-cni0 type bridge; ip addr add 10.244.0.1/24 dev ztr-cni0; ip link set ztr-cni0 up
  ip netns add pod1; ip link add vethpod1 type veth peer name eth0 netns pod1
  ip link set vethpod1 master ztr-cni0 up
  ip -n pod1 addr add 10.244.0.5/24 dev eth0; ip -n pod1 link set eth0 up; ip -n pod1 route add default via 10.244.0.1
  ip netns exec pod1 $PY -c "
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
while True:
    s.sendto(b\"x\", (\"198.18.99.1\", 9)); time.sleep(0.001)" & sender=$!
  dropped_more 50 || { kill $sender; exit 2; }; echo "arrived outside, rules in place: $(arrived)"
  # dockerd restarted: its DOCKER-USER jump goes on top (harmless in itself).
  iptables -N DOCKER-USER; iptables -A DOCKER-USER -j RETURN; iptables -I FORWARD 1 -j DOCKER-USER
  dropped_more 50 || { kill $sender; exit 2; }; echo "arrived outside, docker jump on top: $(arrived)"
  $PY -c "
from e2e.cluster import firewall, health
layout = health.current_layout()
firewall.ensure_first(layout, \"$CG\", \"$CG\")
assert all(firewall.first_in_hook(c) for c in firewall.chains(layout, \"$CG\", \"$CG\")), \"not first again\"" || { kill $sender; echo "FAIL: ensure_first did not put our jumps first again"; exit 1; }
  dropped_more 50 || { kill $sender; exit 2; }; n=$(arrived); echo "arrived outside after the next up'"'"'s ensure_first: $n"
  kill $sender; ip netns del pod1; rm -rf $ZT_RELAY_E2E_STATE
  [ "$n" = 0 ] && { echo PASS; exit 0; }
  echo "FAIL: re-installing our chain opened a gap: $n packets of a pod left the machine"; exit 1
'
