#!/usr/bin/env bash
# F28: a test run killed during an egress test (the `escape` fixture of test_cluster_egress: a
# veth and a namespace routing this run's /24 of 198.18.0.0/15 and /64 of 2001:2::/48) leaves
# them behind, and `down` neither removes nor lists them ("nothing left"): they were named `zxo*`,
# outside the harness's marker. Runs in e2e/sandbox/sandbox.sh: the fixture is entered and never
# finished (the crash), then `down`. Exit 0 = down removed the escape; 1 = it survived down.
source "$(dirname "$0")/prologue.bash"
e2e/sandbox/sandbox.sh env PY="$PY" bash -euo pipefail -c '
  export ZT_RELAY_E2E_STATE=$(mktemp -d /tmp/review-f28-state.XXXX); trap "rm -rf $ZT_RELAY_E2E_STATE" EXIT
  $PY -c "
from e2e import test_cluster_egress as t
gen = t.escape._get_wrapped_function()(None)
esc = next(gen)  # the run is killed here: the fixture never finishes
print(\"escape\", esc.netns, esc.v4, flush=True)
import os; os._exit(0)
"
  echo "before down: netns [$(ip netns list | cut -d" " -f1 | tr "\n" " ")] links [$(ip -br link | cut -d" " -f1 | cut -d@ -f1 | tr "\n" " ")]"
  $PY -m e2e.cluster down 2>&1 | tail -1
  left_ns=$(ip netns list | cut -d" " -f1 | grep -v "^$" || true)
  left_links=$(ip -br link | cut -d" " -f1 | cut -d@ -f1 | grep -vx -e lo -e eth0 -e eth0peer || true)
  left_routes=$(ip route show root 198.18.0.0/15 | grep -v "dev eth0" || true)
  echo "after down: netns [$left_ns] links [$left_links] routes [$left_routes]"
  [ -z "$left_ns$left_links$left_routes" ] || { echo "FAIL: a crashed run'"'"'s escape survived down"; exit 1; }
  echo PASS
'
