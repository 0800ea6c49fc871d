#!/usr/bin/env bash
# F15: the kubelet's device-plugin manager ignores --root-dir: it always uses
# /var/lib/kubelet/device-plugins/, creates kubelet.sock there and, on every start, deletes
# every file in that directory (stale-socket cleanup) - another kubelet's (k3s, minikube
# none) and its device plugins' sockets (nvidia-device-plugin, ...) included. `down` never
# removes the directory and the inventory never lists it, so "down: nothing left" is said
# with /var/lib/kubelet left behind. Read-only check against the running cluster of ours.
# Exit 0 = nothing of our kubelet outside the state dir (or no cluster running); 1 = found.
set -uo pipefail
cd "$(dirname "$0")/../.."
state=${ZT_RELAY_E2E_STATE:-/var/lib/zt-relay-e2e}
pid=$(head -1 "$state/run/kubelet.pid" 2>/dev/null) || { echo "no cluster of ours running: nothing to check"; exit 0; }
sock=/var/lib/kubelet/device-plugins/kubelet.sock
started=$(date -d "$(ps -o lstart= -p "$pid")" +%s); made=$(stat -c %Y "$sock" 2>/dev/null || echo 0)
echo "our kubelet (pid $pid) started $(date -u -d @"$started" +%T); $sock made $(date -u -d @"$made" +%T)"
# containerd 1.6's shims ignore the configured state dir too: sockets in /run/containerd/s, runc
# state in /run/containerd/runc/k8s.io - the system containerd's own (Debian's default) places.
shims=$(ss -xlp 2>/dev/null | grep "/run/containerd/s/" | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u | while read p; do
  tr '\0' ' ' < /proc/$p/cmdline 2>/dev/null | grep -q -- "-address $state/" && echo $p; done | wc -l)
echo "our shims with sockets in /run/containerd/s: $shims; runc state dirs in /run/containerd/runc/k8s.io: $(ls /run/containerd/runc/k8s.io 2>/dev/null | wc -l)"
mentions=$(grep -rl "device-plugins\|/var/lib/kubelet" e2e/cluster/teardown.py e2e/cluster/inventory.py || true)
echo "teardown/inventory mention it: ${mentions:-no}"
if [ "$made" -ge "$started" ] && [ -z "$mentions" ]; then
  echo "FAIL: our kubelet writes (and cleans) /var/lib/kubelet/device-plugins, outside the state dir, and down never removes it"; exit 1
fi
echo PASS
