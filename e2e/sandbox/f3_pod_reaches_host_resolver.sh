#!/usr/bin/env bash
# F3: "the machine's resolvers are unreachable from the cluster" (README) holds only for resolvers
# reached by FORWARD. A resolver (or any proxy) that runs ON the machine and listens on a
# non-loopback address - dnsmasq on docker0/virbr0, unbound/bind on 0.0.0.0:53, a squid - is local
# delivery (INPUT), which no rule of ours covers: a pod sends it a query and it forwards it out.
# Reproduced on a copy of the harness's own rule set (firewall.install_all + network.setup_safety)
# inside e2e/sandbox/sandbox.sh: a "pod" netns behind ztr-cni0 queries a UDP listener bound to 0.0.0.0:53
# in the "machine" netns. Exit 0 = the query was dropped; 1 = the host resolver got it.
source "$(dirname "$0")/prologue.bash"
sim_cgroup zt-review-sim
# Unique per run (/tmp is the machine's, not the sandbox's).
log=$(mktemp -t review-f3.XXXXXX)
on_exit 'rm -f "$log"'
e2e/sandbox/sandbox.sh env PY="$PY" CG="$CG" bash -euo pipefail -c '
  export ZT_RELAY_E2E_STATE=$(mktemp -d /tmp/review-f3-state.XXXX)
  resolver_out=$(mktemp /tmp/review-f3-resolver.XXXXXX)
  $PY -c "
from e2e.cluster import firewall, health, network
layout = health.current_layout()
firewall.install_all(layout, \"$CG\", \"$CG\")
network.setup_safety(layout)
network.setup_node_address(layout)
"
  # The CNI bridge and one pod, as the bridge plugin makes them.
  ip link add ztr-cni0 type bridge; ip addr add 10.244.0.1/24 dev ztr-cni0; ip link set ztr-cni0 up
  ip netns add pod1
  ip link add vethpod1 type veth peer name eth0 netns pod1
  ip link set vethpod1 master ztr-cni0 up
  ip -n pod1 addr add 10.244.0.5/24 dev eth0; ip -n pod1 link set eth0 up; ip -n pod1 link set lo up
  ip -n pod1 route add default via 10.244.0.1
  # The machine'"'"'s own resolver, listening on every address (dnsmasq, unbound, ...).
  $PY -c "
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((\"0.0.0.0\", 53)); s.settimeout(3)
print(\"listening\", flush=True)
try:
    data, peer = s.recvfrom(512); print(\"HOST RESOLVER GOT A QUERY FROM\", peer[0], flush=True)
except TimeoutError:
    print(\"host resolver: nothing arrived\", flush=True)
" > "$resolver_out" &
  # Until it is bound (a query sent before that would be lost and prove nothing).
  for _ in $(seq 400); do [ -n "$(ss -Hlun "sport = :53")" ] && break; sleep 0.05; done
  [ -n "$(ss -Hlun "sport = :53")" ] || { echo "the host listener never bound port 53"; exit 2; }
  # (not the node IP: its port 53 is our CoreDNS, which could not bind beside a 0.0.0.0:53 resolver)
  for target in 198.18.5.2 10.244.0.1; do
    ip netns exec pod1 $PY -c "
import socket, sys
q = b\"\\x12\\x34\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x07example\\x03com\\x00\\x00\\x01\\x00\\x01\"
socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(q, (sys.argv[1], 53))
" $target
  done
  wait
  cat "$resolver_out"; rm -f "$resolver_out"; rm -rf $ZT_RELAY_E2E_STATE
  echo "--- the harness'"'"'s INPUT chain:"; iptables -S INPUT
  grep -q "HOST RESOLVER GOT" <<<"$(cat /dev/null)" || true
' | tee "$log"
if grep -q "HOST RESOLVER GOT" "$log"; then echo "FAIL: a pod reached a resolver on the machine (it would forward the query off the machine)"; exit 1; fi
echo PASS
