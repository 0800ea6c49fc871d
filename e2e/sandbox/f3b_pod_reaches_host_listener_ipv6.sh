#!/usr/bin/env bash
# F3 (IPv6): ZTR-E2E-IN6 lets link-local through (needed for ND), so a pod reaches every
# service the machine offers on [::] at the CNI bridge's link-local address - a resolver or
# proxy on the machine, by IPv6. Same sandbox as f3. Exit 0 = dropped; 1 = the host listener got it.
source "$(dirname "$0")/prologue.bash"
sim_cgroup zt-review-sim
log=$(mktemp -t review-f3b.XXXXXX)  # not a fixed path: two runs on one machine
on_exit 'rm -f "$log"'
e2e/sandbox/sandbox.sh env PY="$PY" CG="$CG" bash -uo pipefail -c '
  export ZT_RELAY_E2E_STATE=$(mktemp -d /tmp/review-f3b-state.XXXX)
  $PY -c "
from e2e.cluster import firewall, health, network
layout = health.current_layout()
firewall.install_all(layout, \"$CG\", \"$CG\"); network.setup_safety(layout); network.setup_node_address(layout)"
  ip link add ztr-cni0 type bridge; ip addr add 10.244.0.1/24 dev ztr-cni0
  ip addr add fe80::1/64 dev ztr-cni0 nodad; ip link set ztr-cni0 up
  ip netns add pod1; ip link add vethpod1 type veth peer name eth0 netns pod1
  ip link set vethpod1 master ztr-cni0 up
  ip -n pod1 addr add 10.244.0.5/24 dev eth0; ip -n pod1 addr add fe80::5/64 dev eth0 nodad
  ip -n pod1 link set eth0 up; ip -n pod1 link set lo up
  # Until the path is up (a datagram sent before would be lost and prove nothing): the bridge
  # and the pod end with carrier, the bridge port forwarding, fe80::1 past DAD (nodad: at once).
  path_up() {
    # The state column (operstate), not the flags, and not /sys/class/net: that sysfs is the
    # host netns'"'"'s (its ztr-cni0 is the real cluster'"'"'s, there or not).
    [ "$(ip -br link show dev ztr-cni0 | awk "{print \$2}")" = UP ] &&
    [ "$(ip -n pod1 -br link show dev eth0 | awk "{print \$2}")" = UP ] &&
    bridge link show dev vethpod1 | grep -q "state forwarding" &&
    ip -6 addr show dev ztr-cni0 | grep "inet6 fe80::1/64 " | grep -vq tentative
  }
  # A 60 s deadline, not a number of tries. (The CI failure of 6dc1645, "never came up" with
  # every printed condition true, was the /sys check: the host had no ztr-cni0 at that moment.)
  deadline=$((SECONDS + 60))
  until path_up || [ $SECONDS -ge $deadline ]; do sleep 0.05; done
  path_up || { ip -br link show dev ztr-cni0; ip -n pod1 -br link show dev eth0; bridge link show dev vethpod1; ip -6 addr show dev ztr-cni0; echo "the pod'"'"'s path to the bridge never came up"; exit 2; }
  $PY -c "
import socket
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.bind((\"::\", 53)); s.settimeout(3)
try:
    d, p = s.recvfrom(512); print(\"HOST LISTENER ON [::]:53 GOT\", p[0])
except TimeoutError:
    print(\"host listener: nothing arrived\")" & l=$!
  # Until it is bound (a query sent before that would be lost and prove nothing).
  for _ in $(seq 400); do [ -n "$(ss -Hlun "sport = :53")" ] && break; sleep 0.05; done
  [ -n "$(ss -Hlun "sport = :53")" ] || { echo "the host listener never bound port 53"; exit 2; }
  # Every drop of ours is counted in the security table: none for the query and nothing
  # arrived is no proof either way (lost before the guard, it would pass with the guard gone).
  drops() { ip6tables -t security -L ZTR-E2E-INPUT -v -x -n | awk "/DROP/ {n += \$1} END {print n + 0}"; }
  before=$(drops)
  ip netns exec pod1 $PY -c "import socket; socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).sendto(b\"q\", (\"fe80::1%eth0\", 53))"
  wait $l
  echo "dropped by the harness (security ZTR-E2E-INPUT): $(($(drops) - before))"
  [ "$(drops)" -gt "$before" ] || echo "NO PROOF: the query was neither dropped by the harness nor received"
  rm -rf $ZT_RELAY_E2E_STATE
' | tee "$log"
if grep -q "HOST LISTENER" "$log"; then rm -f "$log"; echo "FAIL: a pod reached a listener of the machine by IPv6 link-local"; exit 1; fi
if grep -q "NO PROOF" "$log"; then rm -f "$log"; echo "FAIL: no proof either way"; exit 2; fi
rm -f "$log"; echo PASS
