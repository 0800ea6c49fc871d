"""A second kube-router started in the cluster's network namespace after `up` (k3s, a
developer's own) shares the fixed KUBE-ROUTER-* chains and KUBE-SRC/DST-<16> sets with ours:
each sees the other's generated chains and sets as its own and deletes those it does not use.
`up` refuses one that is there before it starts; afterwards `health()` notices it (the cluster
is "broken", naming the other's pid), so the next run's `up` stops instead of testing
NetworkPolicy on rules another program rewrites. Only a process in the same network namespace
counts, and a child our kube-router forks (before it execs iptables) is still ours."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from e2e.cluster import components, configs, health, paths

ROOT = Path(__file__).resolve().parents[2]

# Runs in a network namespace of its own: the machine's real cluster (its kube-router) is not
# in it, so only the processes started here can count.
PROBE = """
import json, os, signal, subprocess, sys, time
from e2e.cluster import processes

ours_bin, other_bin, forked_bin = sys.argv[1:4]
quiet = dict(stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
deadline = time.monotonic() + 30
def children(pid):
    try:
        return [int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except FileNotFoundError:
        return []
started = []
try:
    # Ours: a shell named kube-router that forks a child also named kube-router (as Go does
    # between fork and exec); the child's parent is ours.
    ours = subprocess.Popen([ours_bin, "-c", f"{forked_bin} 300 & wait"], **quiet)
    started.append(ours.pid)
    while not children(ours.pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    forked = children(ours.pid)
    started += forked
    alone = processes.others_named("kube-router", ours.pid)
    other = subprocess.Popen([other_bin, "300"], **quiet)
    started.append(other.pid)
    while processes.comm(other.pid) != "kube-router" and time.monotonic() < deadline:
        time.sleep(0.02)
    beside = processes.others_named("kube-router", ours.pid)
    print(json.dumps({"forked": forked, "alone": alone, "beside": beside, "other": other.pid}))
finally:
    for pid in started:
        os.kill(pid, signal.SIGKILL)
"""


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare (a network namespace)")
@pytest.mark.timeout(60)
def test_another_kube_router_in_our_network_namespace_is_found_but_not_ours_or_its_children(tmp_path):
    bins = {}
    for role, source in (("ours", "/bin/bash"), ("other", "/bin/sleep"), ("forked", "/bin/sleep")):
        (tmp_path / role).mkdir()
        bins[role] = tmp_path / role / "kube-router"
        shutil.copy(source, bins[role])
    run = subprocess.run(
        ["unshare", "--net", "--", sys.executable, "-c", PROBE, str(bins["ours"]), str(bins["other"]), str(bins["forked"])],
        capture_output=True, text=True, timeout=50, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(seen["forked"]) == 1, seen  # our kube-router's child was running when we looked
    assert seen["alone"] == [], seen
    assert seen["beside"] == [seen["other"]], seen


def test_a_kube_router_in_another_network_namespace_is_not_ours_to_report():
    # This test's own process is in this namespace; pid 1's may differ (in a container) or not.
    # A pid whose namespace differs never counts: checked with a pid that has no namespace at all.
    assert health.processes.others_named("kube-router", os.getpid(), candidates=[2 ** 22 + 7]) == []


@pytest.fixture
def running_cluster(tmp_path, monkeypatch):
    monkeypatch.setenv("ZT_RELAY_E2E_STATE", str(tmp_path / "state"))
    state = configs.StatePaths(tmp_path / "state")
    state.root.mkdir()
    health.generation_file(state).write_text(health.HARNESS_GENERATION)
    paths.kubeconfig_path().write_text("")
    monkeypatch.setattr(health, "process_states", lambda state: {n: 100 + i for i, n in enumerate(components.NAMES)})
    layout = health.current_layout()
    node = {"status": {"addresses": [{"type": "InternalIP", "address": layout.node_ip}],
                       "conditions": [{"type": "Ready", "status": "True"}]}}
    monkeypatch.setattr(health, "admin", lambda: type("K", (), {"json": lambda self, *a, **k: node})())
    return layout, state


def test_health_is_broken_naming_the_other_kube_routers_pid(running_cluster, monkeypatch):
    layout, state = running_cluster
    ours = health.process_states(state)["kube-router"]
    asked = []

    def others_named(program, own_pid, candidates=None):
        asked.append((program, own_pid))
        return [4242]

    monkeypatch.setattr(health.processes, "others_named", others_named)
    verdict, reason = health.health(layout, state)
    assert asked == [("kube-router", ours)]
    assert verdict == "broken" and "4242" in reason and "kube-router" in reason


def test_health_is_ok_with_only_our_kube_router(running_cluster, monkeypatch):
    layout, state = running_cluster
    monkeypatch.setattr(health.processes, "others_named", lambda program, own_pid, candidates=None: [])
    assert health.health(layout, state) == ("ok", "every process runs and the node is Ready")
