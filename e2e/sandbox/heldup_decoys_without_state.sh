#!/usr/bin/env bash
# What held up: with no state dir of ours, `down` leaves other clusters' things alone - a
# cni-* netns, KUBE-DECOY and even KUBE-SERVICES (v4+v6, every table used), a foreign bridge and
# veth, /etc/netns entries. Runs in e2e/sandbox/sandbox.sh. Exit 0 = all survive.
source "$(dirname "$0")/prologue.bash"
e2e/sandbox/sandbox.sh env PY="$PY" bash -uo pipefail -c '
  export ZT_RELAY_E2E_STATE=/tmp/review-heldup-no-state-$$
  ip netns add cni-decoy; mkdir -p /etc/netns/cni-decoy
  ip link add cni0 type bridge; ip link add veth1234 type veth peer name veth1234p
  for b in iptables ip6tables; do for t in filter nat mangle raw; do
    $b -t $t -N KUBE-DECOY; $b -t $t -A KUBE-DECOY -j RETURN; $b -t $t -N KUBE-SERVICES; $b -t $t -A KUBE-SERVICES -j RETURN; done; done
  snap() { { ip netns list; ls /etc/netns; ip -br link | cut -d" " -f1; iptables-save 2>/dev/null; ip6tables-save 2>/dev/null; } | grep -v "^#" | sed "s/\[[0-9:]*\]//" | sort; }
  before=$(snap)
  $PY -m e2e.cluster down 2>&1 | tail -1
  after=$(snap)
  [ "$before" = "$after" ] && { echo PASS; exit 0; }; diff <(echo "$before") <(echo "$after"); echo FAIL; exit 1
'
