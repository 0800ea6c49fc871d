#!/usr/bin/env bash
# F16: the harness's marker for "our links" is the prefix `ztr` (iptables `ztr+`, inventory,
# check_disjoint). ZeroTier names its Linux taps "zt" + 8 base32 characters of the network id
# (osdep/LinuxEthernetTap.cpp), so about 1 network in 32 gets an interface `ztr...` - on the
# workstations of exactly this project's developers. Network 5dfbd3d12c4a3698, for example, is
# `ztrtlztz5u` (and Earth, 8056c2e21c000001, is `ztmjfmfyq5`, as ZeroTier users know it).
# With such an interface:
#  - FORWARD: `-i ztr+ ! -o ztr+` and `-s <pods> ! -o ztr+` both exempt it: a pod's packets to the
#    ZeroTier network are forwarded off the machine, over the VPN (FORWARD policy ACCEPT, i.e. no
#    dockerd); OUTPUT likewise lets the harness's own processes send by `-o ztr+`;
#  - inventory counts it as our leftover, so `down` says "left behind" and exits 1 forever
#    (.ci/run runs `down` first under `set -e`).
# Reproduced in e2e/sandbox/sandbox.sh with the harness's rules; a veth named like the ZeroTier tap
# leads to a "ZeroTier peer" namespace that counts. Exit 0 = not forwarded and down clean; 1 = bug.
source "$(dirname "$0")/prologue.bash"
sim_cgroup zt-review-sim
e2e/sandbox/sandbox.sh env PY="$PY" CG="$CG" bash -uo pipefail -c '
  export ZT_RELAY_E2E_STATE=$(mktemp -d /tmp/review-f16-state.XXXX)
  tap=$($PY -c "
B = \"abcdefghijklmnopqrstuvwxyz234567\"
nwid = 0x5dfbd3d12c4a3698
bits = (nwid ^ (nwid >> 24)) & ((1 << 40) - 1)
print(\"zt\" + \"\".join(B[(bits >> (35 - 5 * i)) & 31] for i in range(8)))")
  echo "ZeroTier network 5dfbd3d12c4a3698 -> interface $tap"
  ip netns add ztpeer
  ip link add $tap type veth peer name zt0 netns ztpeer
  ip addr add 10.147.17.5/24 dev $tap; ip link set $tap up
  ip -n ztpeer addr add 10.147.17.9/24 dev zt0; ip -n ztpeer link set zt0 up
  ip netns exec ztpeer iptables -t raw -A PREROUTING -d 10.147.17.9 -j DROP
  $PY -c "
from e2e.cluster import firewall, health, network
layout = health.current_layout()
firewall.install_all(layout, \"$CG\", \"$CG\")
network.setup_safety(layout); network.setup_node_address(layout)" || exit 2
  ip link add ztr-cni0 type bridge; ip addr add 10.244.0.1/24 dev ztr-cni0; ip link set ztr-cni0 up
  ip netns add pod1; ip link add vethpod1 type veth peer name eth0 netns pod1
  ip link set vethpod1 master ztr-cni0 up
  ip -n pod1 addr add 10.244.0.5/24 dev eth0; ip -n pod1 link set eth0 up; ip -n pod1 route add default via 10.244.0.1
  ip netns exec pod1 $PY -c "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b\"x\", (\"10.147.17.9\", 9))"
  # Until the datagram is accounted for: dropped by the harness (its security-table guard,
  # where every drop of ours counts) or arrived at the peer (the bug).
  guard() { iptables -t security -L ZTR-E2E-FORWARD -v -x -n | awk "/DROP/ {n += \$1} END {print n + 0}"; }
  peer() { ip netns exec ztpeer iptables -t raw -L PREROUTING -v -x -n | awk "/DROP/ {print \$1}"; }
  # A deadline, not a number of tries (a loaded machine, see f3b). Neither is no proof: a
  # datagram lost before the forwarding decision reaches no peer even with the guard gone.
  # (ZTR_SANDBOX_PROOF_DEADLINE: shorter where no datagram is sent at all, e2e/test_harness_sandbox.py.)
  deadline=$((SECONDS + ${ZTR_SANDBOX_PROOF_DEADLINE:-30}))
  until [ "$(guard)" -gt 0 ] || [ "$(peer)" -gt 0 ] || [ $SECONDS -ge $deadline ]; do sleep 0.05; done
  dropped=$(guard)
  echo "dropped by the harness: $dropped"
  got=$(peer)
  echo "packets from a pod that reached the ZeroTier peer: $got"
  ip netns del pod1; ip link del ztr-cni0
  down_out=$(mktemp /tmp/review-f16-down.XXXXXX)  # unique per run (/tmp is shared with the machine)
  $PY -m e2e.cluster down > "$down_out" 2>&1; rc=$?
  listed=no; grep -q "\"$tap\"" "$down_out" && listed=yes
  echo "down lists the ZeroTier interface as our leftover: $listed (exit $rc; a temporary state dir also lists the real cluster, ignore that)"
  rm -rf $ZT_RELAY_E2E_STATE "$down_out"
  [ "$got" = 0 ] && [ "$dropped" = 0 ] && { echo "FAIL: the pod'"'"'s datagram was neither dropped by the harness nor received: no proof either way"; exit 2; }
  [ "$got" = 0 ] && [ $listed = no ] && { echo PASS; exit 0; }
  echo "FAIL: a ZeroTier interface named ztr* is treated as the harness'"'"'s own"; exit 1
'
