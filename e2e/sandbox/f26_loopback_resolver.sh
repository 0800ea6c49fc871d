#!/usr/bin/env bash
# F26: ZTR-E2E-OUTPUT and ZTR-E2E-PODS-OUT let the harness's processes and hostNetwork pods send
# anything to loopback (`-o lo -j RETURN`). On an ordinary desktop the machine's resolver IS on
# loopback (systemd-resolved 127.0.0.53, dnsmasq/unbound 127.0.0.1, ::1): a lookup of a public
# name by containerd, the kubelet or a hostNetwork pod reaches it, and it forwards the query off
# the machine. Issue 12: nothing in the cluster reaches the host's resolvers.
# Harness rules (firewall.install_all) in e2e/sandbox/sandbox.sh; the sender runs in the cgroup
# the rules match (a v2 cgroup standing for zt-relay-e2e-host / -pods); a UDP "resolver" on
# 127.0.0.53:53 and [::1]:53 counts the queries it gets. Exit 0 = none arrived; 1 = it got one.
source "$(dirname "$0")/prologue.bash"
sim_cgroup zt-review-sim26
e2e/sandbox/sandbox.sh env PY="$PY" CG="$CG" V2="$V2" bash -euo pipefail -c '
  export ZT_RELAY_E2E_STATE=$(mktemp -d /tmp/review-f26-state.XXXX); trap "rm -rf $ZT_RELAY_E2E_STATE" EXIT
  $PY -c "
from e2e.cluster import firewall, health
firewall.install_all(health.current_layout(), \"$CG\", \"$CG\")
"
  ip addr add 127.0.0.53/8 dev lo 2>/dev/null || true
  $PY -c "
import select, socket, time
socks = []
for family, addr in ((socket.AF_INET, \"127.0.0.53\"), (socket.AF_INET6, \"::1\")):
    s = socket.socket(family, socket.SOCK_DGRAM); s.bind((addr, 53)); socks.append(s)
print(\"ready\", flush=True)
got = 0
deadline = time.monotonic() + 3
while time.monotonic() < deadline:
    ready, _, _ = select.select(socks, [], [], 0.2)
    for s in ready:
        s.recvfrom(512); got += 1
print(\"resolver got\", got, \"queries\", flush=True)
" > /tmp/review-f26.$$ &
  resolver=$!
  for _ in $(seq 200); do grep -q ready /tmp/review-f26.$$ && break; sleep 0.05; done  # until it listens
  # The sender joins the cgroup the rules match, as every process `up` starts does (the v2
  # hierarchy mounted again: the sandbox hides /sys/fs/cgroup).
  cg2=$(mktemp -d /tmp/review-f26-cg.XXXX); mount -t cgroup2 none "$cg2"
  sh -c "echo \$\$ > $cg2/$CG/cgroup.procs && exec $PY -c \"
import socket
q = bytes.fromhex(\\\"123401000001000000000000076578616d706c6503636f6d0000010001\\\")
for family, addr in ((socket.AF_INET, \\\"127.0.0.53\\\"), (socket.AF_INET6, \\\"::1\\\")):
    try:
        socket.socket(family, socket.SOCK_DGRAM).sendto(q, (addr, 53))
    except OSError as exc:
        print(\\\"send to\\\", addr, \\\"refused:\\\", exc)
\""
  umount "$cg2"; rmdir "$cg2"
  wait $resolver; cat /tmp/review-f26.$$; out=$(cat /tmp/review-f26.$$); rm -f /tmp/review-f26.$$
  case "$out" in *"got 0 queries"*) echo PASS;; *) echo "FAIL: a process of the cluster reached the machine'"'"'s loopback resolver"; exit 1;; esac
'
