#!/usr/bin/env bash
# F5: ZTR-E2E-OUTPUT (the only rule on locally generated traffic) matches the cgroup of the
# harness's host processes (`-m cgroup --path zt-relay-e2e-host`). Pods are not in it: runc puts
# every container in the v2 hierarchy under the kubelet's cgroupRoot (seen live, read-only:
#   grep ^0:: /proc/$(pgrep -x pause | head -1)/cgroup  ->  0::/zt-relay-e2e-pods/kubepods/...).
# A pod with hostNetwork sends from the machine's own netns, so FORWARD never sees it and
# OUTPUT lets it through: IPv4 and IPv6, to any address, by the default route.
# Reproduced in e2e/sandbox/sandbox.sh with the harness's rule set: a process in the "host" cgroup is
# stopped (EPERM), a process in a pod-like cgroup beside it reaches the "outside" namespace.
# Exit 0 = the pod-like process was stopped too; 1 = it leaked.
source "$(dirname "$0")/prologue.bash"
CG=/sys/fs/cgroup/unified
SIM=zt-review-sim-$$  # its own per run: scripts run side by side (see prologue.bash sim_cgroup)
mkdir -p $CG/$SIM $CG/$SIM-pods/kubepods/podX/ctr
cleanup() { rmdir $CG/$SIM-pods/kubepods/podX/ctr $CG/$SIM-pods/kubepods/podX $CG/$SIM-pods/kubepods $CG/$SIM-pods $CG/$SIM 2>/dev/null || true; }
on_exit cleanup
e2e/sandbox/sandbox.sh env PY="$PY" SIM="$SIM" bash -euo pipefail -c '
  CG=$(mktemp -d /tmp/review-f5-cg2.XXXX); mount -t cgroup2 none $CG   # the real v2 tree, inside the sandbox
  ip netns add outside; ip link set eth0peer netns outside
  ip -n outside addr add 198.18.5.1/24 dev eth0peer; ip -n outside addr add fd99::1/64 dev eth0peer nodad
  ip -n outside link set eth0peer up
  ip addr add fd99::2/64 dev eth0 nodad; ip -6 route add default via fd99::1 dev eth0
  ip netns exec outside iptables -t raw -A PREROUTING -d 198.18.99.1 -j DROP
  ip netns exec outside ip6tables -t raw -A PREROUTING -d 2001:2::99 -j DROP
  arrived() { echo "v4=$(ip netns exec outside iptables -t raw -L PREROUTING -v -x -n | awk "/DROP/ {print \$1}")" \
                   "v6=$(ip netns exec outside ip6tables -t raw -L PREROUTING -v -x -n | awk "/DROP/ {print \$1}")"; }
  export ZT_RELAY_E2E_STATE=$(mktemp -d /tmp/review-f5-state.XXXX)
  $PY -c "
from e2e.cluster import firewall, health
firewall.install_all(health.current_layout(), \"$SIM\", \"$SIM-pods\")"
  send="import socket
for a, f in ((\"198.18.99.1\", socket.AF_INET), (\"2001:2::99\", socket.AF_INET6)):
    try: socket.socket(f, socket.SOCK_DGRAM).sendto(b\"leak?\", (a, 9)); print(a, \"sent\")
    except OSError as e: print(a, \"refused locally:\", e.strerror)"
  echo "--- a host process of the harness (cgroup $SIM):"
  sh -c "echo \$\$ > $CG/$SIM/cgroup.procs && exec $PY -c '"'"'$send'"'"'"
  echo "outside got: $(arrived)"
  echo "--- a hostNetwork pod'"'"'s process (cgroup $SIM-pods/kubepods/podX/ctr):"
  sh -c "echo \$\$ > $CG/$SIM-pods/kubepods/podX/ctr/cgroup.procs && exec $PY -c '"'"'$send'"'"'"
  got=$(arrived); echo "outside got: $got"; rm -rf $ZT_RELAY_E2E_STATE
  echo $$ > $CG/cgroup.procs; umount $CG; rmdir $CG
  [ "$got" = "v4=0 v6=0" ] && { echo PASS; exit 0; }
  echo "FAIL: a pod process in the machine'"'"'s netns sent IPv4 and IPv6 off the machine"; exit 1
'
