#!/usr/bin/env bash
# Run a command in a private network + mount namespace that stands for "a machine":
#   - its own netns (own iptables/ip6tables, links, routes, conntrack): nothing here can reach
#     the real host's network or the real cluster's rules; a fake eth0 (veth into the same
#     netns) carries a default route via 198.18.5.1 (RFC 2544 range, never leaves);
#   - tmpfs over /run (locks, /run/netns), /sys/fs/cgroup (so `down` can see, kill and rmdir no
#     real cgroup), /var/lib/cni and /etc/netns (if present): the real cluster's files are hidden.
# Usage: e2e/sandbox/sandbox.sh CMD... (as root). ZT_RELAY_E2E_STATE should point under /tmp.
set -euo pipefail
exec unshare --net --mount --propagation private -- bash -euo pipefail -c '
  mount -t tmpfs sandbox-run /run
  mount -t tmpfs sandbox-cgroup /sys/fs/cgroup
  [ -d /var/lib/cni ] && mount -t tmpfs sandbox-cni /var/lib/cni
  [ -d /etc/netns ] && mount -t tmpfs sandbox-etc-netns /etc/netns
  ip link set lo up
  ip link add eth0 type veth peer name eth0peer
  ip addr add 198.18.5.2/24 dev eth0
  ip link set eth0 up; ip link set eth0peer up
  ip route add default via 198.18.5.1 dev eth0
  exec "$@"' sandbox "$@"
