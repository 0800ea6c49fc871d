#!/usr/bin/env bash
# F1: after a reboot (or crash) the state dir survives in /var/lib but no process and no rule of
# ours does. A developer's k3s (kube-proxy in the host netns) starts at boot and creates the fixed
# KUBE-* chains. The first `down` (.ci/run runs it first) or `up` then deletes k3s's chains,
# because teardown.sweep() removes KUBE-* whenever `state.root.exists()` - even `up`'s
# sweep(kube_chains=False). Runs entirely in e2e/sandbox/sandbox.sh (private netns + mounts).
# Exit 0 = k3s's chains survived (fixed); exit 1 = they were deleted (bug).
source "$(dirname "$0")/prologue.bash"
exec e2e/sandbox/sandbox.sh env PY="$PY" bash -euo pipefail -c '
  export ZT_RELAY_E2E_STATE=$(mktemp -d /tmp/review-f1-state.XXXX)
  trap "rm -rf $ZT_RELAY_E2E_STATE" EXIT
  # What a crashed/rebooted run leaves: the state dir (generation 2), nothing running.
  mkdir -p $ZT_RELAY_E2E_STATE/run $ZT_RELAY_E2E_STATE/logs; echo 2 > $ZT_RELAY_E2E_STATE/generation
  k3s_chains() {  # what k3s'"'"'s kube-proxy and kubelet make at boot
    for b in iptables ip6tables; do
      $b -t nat -N KUBE-SERVICES; $b -t nat -A KUBE-SERVICES -p tcp --dport 443 -m comment --comment "k3s default/kubernetes" -j RETURN
      $b -t nat -A PREROUTING -j KUBE-SERVICES
      $b -t nat -N KUBE-SVC-K3SK3SK3S; $b -t nat -A KUBE-SVC-K3SK3SK3S -j RETURN
      $b -t filter -N KUBE-FORWARD; $b -t filter -A KUBE-FORWARD -m mark --mark 0x4000/0x4000 -j ACCEPT
      $b -t filter -A FORWARD -j KUBE-FORWARD
      $b -t filter -N KUBE-FIREWALL; $b -t filter -A INPUT -j KUBE-FIREWALL
    done
  }
  count() { { iptables-save; ip6tables-save; } | grep -c -E "^(:|-A .*-j )KUBE-(SERVICES|SVC-K3S|FORWARD|FIREWALL)" || true; }
  k3s_chains; before=$(count)
  echo "k3s chain lines before: $before"
  echo "--- python -m e2e.cluster down (what .ci/run does first)"
  $PY -m e2e.cluster down 2>&1 | tail -3 || true
  after_down=$(count); echo "k3s chain lines after down: $after_down"
  [ "$after_down" = "$before" ] || k3s_chains 2>/dev/null || true
  mkdir -p $ZT_RELAY_E2E_STATE/run; echo 2 > $ZT_RELAY_E2E_STATE/generation
  echo "--- what up does with a broken cluster: teardown.sweep(layout)"
  $PY -c "from e2e.cluster import health, teardown; teardown.sweep(health.current_layout(), kube_chains=False)" 2>&1 | tail -2 || true
  after_up=$(count); echo "k3s chain lines after up'"'"'s sweep: $after_up"
  [ "$after_down" = "$before" ] && [ "$after_up" = "$before" ] && { echo PASS; exit 0; }
  echo "FAIL: the harness deleted another cluster'"'"'s KUBE-* chains (no cluster of ours had run since boot)"; exit 1
'
