#!/usr/bin/env bash
# F11: `down` (teardown._kill_ours) SIGTERM/SIGKILLs every process whose command line CONTAINS
# the state dir path (processes.pids_mentioning, a substring match) - meant for an older
# harness's shims, run on every `down`. It kills the developer's `tail -f
# /var/lib/zt-relay-e2e/logs/kubelet.log`, `less .../kube-apiserver.log`, a `kubectl
# --kubeconfig=/var/lib/zt-relay-e2e/admin.kubeconfig get pods -w` in another terminal, and
# anything under a sibling path such as /var/lib/zt-relay-e2e-old/ (prefix match).
# Runs in e2e/sandbox/sandbox.sh with a temporary state dir; the victims are `tail`s this script
# starts. Exit 0 = both survived `down`; 1 = killed.
source "$(dirname "$0")/prologue.bash"
e2e/sandbox/sandbox.sh env PY="$PY" bash -uo pipefail -c '
  export ZT_RELAY_E2E_STATE=$(mktemp -d /tmp/review-f11-state.XXXX)
  sibling=${ZT_RELAY_E2E_STATE}-old
  mkdir -p $ZT_RELAY_E2E_STATE/logs $sibling; touch $ZT_RELAY_E2E_STATE/logs/kubelet.log $sibling/notes
  tail -f $ZT_RELAY_E2E_STATE/logs/kubelet.log > /dev/null & reader=$!
  tail -f $sibling/notes > /dev/null & other=$!
  # Until both have exec'"'"'d tail (before that /proc shows bash: the test would prove nothing).
  tails() { grep -q "^tail" /proc/$reader/cmdline && grep -q "^tail" /proc/$other/cmdline; }
  for _ in $(seq 200); do tails && break; sleep 0.05; done
  tails || { echo "the tail processes never started"; exit 2; }
  $PY -m e2e.cluster down 2>&1 | grep -v "^ " | tail -1
  r=alive; kill -0 $reader 2>/dev/null || r=killed
  o=alive; kill -0 $other 2>/dev/null || o=killed
  echo "developer'"'"'s tail -f of a cluster log: $r; a process under ${sibling}: $o"
  kill $reader $other 2>/dev/null; rm -rf $ZT_RELAY_E2E_STATE $sibling
  [ $r = alive ] && [ $o = alive ] && { echo PASS; exit 0; }
  echo "FAIL: down killed processes that are not the cluster'"'"'s because their command line mentions the path"; exit 1
'
