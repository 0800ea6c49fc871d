#!/usr/bin/env bash
# F22: `down` deletes every conntrack entry to or from our ranges (10.244/16, 10.96/16,
# 10.250/24, 10.251/24) even when no cluster of ours ran. `.ci/run` runs `down` first; on a
# workstation with kubeadm + flannel (pods 10.244/16, Services 10.96/12: exactly these
# defaults) or a VPN into those ranges, that cuts their live connections (a NATed Service
# flow that loses its entry is not translated any more). Runs in e2e/sandbox/sandbox.sh
# (conntrack is per netns). Exit 0 = their entries survive `down`; 1 = deleted.
source "$(dirname "$0")/prologue.bash"
e2e/sandbox/sandbox.sh env PY="$PY" bash -euo pipefail -c '
  export ZT_RELAY_E2E_STATE=$(mktemp -d /tmp/review-f22-state.XXXX); trap "rm -rf $ZT_RELAY_E2E_STATE" EXIT
  rmdir "$ZT_RELAY_E2E_STATE"  # no cluster of ours ever ran here
  conntrack -I -p udp -s 198.18.5.2 -d 10.96.0.10 --sport 40000 --dport 53 -t 300 -u SEEN_REPLY 2>/dev/null
  conntrack -I -p tcp -s 198.18.5.2 -d 10.244.1.5 --sport 40001 --dport 80 -t 300 --state ESTABLISHED 2>/dev/null
  before=$(conntrack -L 2>/dev/null | wc -l)
  [ "$before" = 2 ] || { echo "setup: $before entries"; exit 2; }
  $PY -m e2e.cluster down 2>&1 | tail -1
  after=$(conntrack -L 2>/dev/null | wc -l)
  echo "their conntrack entries: before $before, after down $after"
  [ "$after" = "$before" ] || { echo "FAIL: down deleted connections of a cluster it never ran"; exit 1; }
  echo PASS
'
