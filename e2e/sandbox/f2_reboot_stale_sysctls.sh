#!/usr/bin/env bash
# F2: the sysctl record survives a reboot in the state dir (/var/lib/zt-relay-e2e/sysctl.json).
# After the reboot the values are the boot's - and docker/k3s/libvirt set ip_forward=1 again at
# start - but `down` (run first by .ci/run) "restores" the previous boot's record: it switches
# forwarding OFF under the developer's containers. Only net.* keys are used (per netns), so this
# runs entirely inside e2e/sandbox/sandbox.sh. Exit 0 = forwarding left as found; 1 = clobbered.
source "$(dirname "$0")/prologue.bash"
exec e2e/sandbox/sandbox.sh env PY="$PY" bash -euo pipefail -c '
  export ZT_RELAY_E2E_STATE=$(mktemp -d /tmp/review-f2-state.XXXX)
  trap "rm -rf $ZT_RELAY_E2E_STATE" EXIT
  # The record `up` wrote in an earlier boot (forwarding was off then), then a crash/reboot.
  echo "{\"net.ipv4.ip_forward\": \"0\", \"net.ipv6.conf.all.forwarding\": \"0\"}" > $ZT_RELAY_E2E_STATE/sysctl.json
  echo 2 > $ZT_RELAY_E2E_STATE/generation
  # After the reboot: dockerd (or k3s, libvirt) turns forwarding on for its own containers.
  sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
  $PY -m e2e.cluster down 2>&1 | tail -1 || true
  v4=$(sysctl -n net.ipv4.ip_forward); v6=$(sysctl -n net.ipv6.conf.all.forwarding)
  echo "after down: net.ipv4.ip_forward=$v4 net.ipv6.conf.all.forwarding=$v6 (docker needs 1)"
  [ "$v4" = 1 ] && [ "$v6" = 1 ] && { echo PASS; exit 0; }
  echo "FAIL: down applied a previous boot'"'"'s sysctl record over values it never set"; exit 1
'
