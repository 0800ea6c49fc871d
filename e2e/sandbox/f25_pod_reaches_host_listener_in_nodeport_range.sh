#!/usr/bin/env bash
# F25: ZTR-E2E-INPUT lets pods and test hosts reach ANY listener of the machine, on ANY of its
# addresses, whose port is in the NodePort range 30000-32767 (`-p tcp --dport 30000:32767 -j
# RETURN`, no -d): a proxy of the machine's owner there (a SOCKS/HTTP proxy, Plex on 32400, an
# ssh -D on 0.0.0.0) forwards the pod's traffic off the machine. A real NodePort never needs
# that rule to name another address: kube-proxy DNATs it in PREROUTING (to a pod: FORWARD), and
# a hostNetwork endpoint is DNATed to its own port: INPUT never needs the range.
# Harness rules (firewall.install_all + network.setup_safety) in e2e/sandbox/sandbox.sh; a "pod"
# netns behind ztr-cni0 connects to a TCP listener on 0.0.0.0:32400 at the machine's eth0
# address and at the node IP. Exit 0 = not reached; 1 = the listener accepted the pod's connection.
source "$(dirname "$0")/prologue.bash"
sim_cgroup zt-review-sim25
e2e/sandbox/sandbox.sh env PY="$PY" CG="$CG" bash -euo pipefail -c '
  export ZT_RELAY_E2E_STATE=$(mktemp -d /tmp/review-f25-state.XXXX); trap "rm -rf $ZT_RELAY_E2E_STATE" EXIT
  $PY -c "
from e2e.cluster import firewall, health, network
layout = health.current_layout()
firewall.install_all(layout, \"$CG\", \"$CG\")
network.setup_safety(layout)
network.setup_node_address(layout)
"
  ip link add ztr-cni0 type bridge; ip addr add 10.244.0.1/24 dev ztr-cni0; ip link set ztr-cni0 up
  ip netns add pod1
  ip link add vethpod1 type veth peer name eth0 netns pod1
  ip link set vethpod1 master ztr-cni0 up
  ip -n pod1 addr add 10.244.0.5/24 dev eth0; ip -n pod1 link set eth0 up; ip -n pod1 link set lo up
  ip -n pod1 route add default via 10.244.0.1
  # The owner'"'"'s proxy on every address, in the NodePort range. Listening before the pod dials:
  # the kernel completes the handshake from the backlog, so "reached" = connect() succeeded.
  $PY -c "
import socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((\"0.0.0.0\", 32400)); s.listen()
time.sleep(30)
" &
  listener=$!
  for _ in $(seq 200); do ss -ltn | grep -q ":32400 " && break; sleep 0.05; done  # until it listens
  ss -ltn | grep -q ":32400 " || { echo "setup: no listener"; exit 2; }
  verdict=$(ip netns exec pod1 $PY -c "
import socket
for address in (\"198.18.5.2\", \"10.252.0.1\"):  # the machine'"'"'s eth0 address, the node IP
    try:
        socket.create_connection((address, 32400), timeout=2).close(); print(address, \"REACHED\")
    except OSError as exc:
        print(address, \"not reached:\", exc)
")
  kill $listener
  echo "pod -> machine :32400: $verdict"
  case "$verdict" in *REACHED*) echo "FAIL: a pod reached a listener of the machine in the NodePort range"; exit 1;; esac
  echo PASS
'
