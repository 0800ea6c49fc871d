"""After an API outage the harness restarts the cluster's API watchers (e2e/recovery.py) instead
of waiting out their client-go backoff: each one, once, in `up`'s order, never the API server,
etcd or containerd (the pods' runtime). One `e2e.cluster restart` (`startup.restart`) stops them
all at once, then starts each again: here the components are `sleep`s under a temporary state dir
and private lock files, and starting is recorded, not done."""

import fcntl
import os

import pytest

from e2e import recovery
from e2e.cluster import components, control, locks, processes, startup
from e2e.cluster.kubectl import wait_for


def test_the_api_watchers_are_cluster_components_in_up_order():
    names = list(components.NAMES)
    assert [n for n in names if n in recovery.API_WATCHERS] == list(recovery.API_WATCHERS)
    assert not {"etcd", "kube-apiserver", "containerd", "registry"} & set(recovery.API_WATCHERS)


def test_restarting_them_is_one_restart_of_every_watcher(monkeypatch):
    calls = []
    monkeypatch.setattr(control, "restart", lambda names: calls.append(names))
    recovery.restart_api_watchers()
    assert calls == [recovery.API_WATCHERS]


def test_a_failed_restart_is_raised_with_what_the_cli_said(monkeypatch):
    def fail(names):
        raise RuntimeError("python -m e2e.cluster restart ... failed (1): kubelet did not start again")

    monkeypatch.setattr(control, "restart", fail)
    with pytest.raises(RuntimeError, match="API watchers:\n.*kubelet did not start again"):
        recovery.restart_api_watchers()


@pytest.fixture
def cluster_of_sleeps(tmp_path, monkeypatch):
    """Private locks and state dir; `run(name)` starts a `sleep` as that component; starting a
    component records its name (or raises what `fail_start` maps it to)."""
    monkeypatch.setattr(locks, "MUTEX", tmp_path / "lock")
    monkeypatch.setattr(locks, "USERS", tmp_path / "users")
    monkeypatch.delenv(locks.USERS_FD_ENV, raising=False)
    monkeypatch.setenv("ZT_RELAY_E2E_STATE", str(tmp_path / "state"))
    monkeypatch.setattr(startup.health, "current_layout", lambda: None)
    run_dir, started, fail_start, pids = tmp_path / "state" / "run", [], {}, {}

    def start_component(layout, state, name, ready_timeout=60):
        started.append(name)
        if name in fail_start:
            raise fail_start[name]

    def run(name):
        pids[name] = processes.start(name, ["sleep", "300"], run_dir, tmp_path / "logs")
        wait_for(f"the stand-in {name}", lambda: processes.running_pid(name, run_dir) == pids[name], 5, 0.05)

    monkeypatch.setattr(startup, "start_component", start_component)
    yield run, run_dir, started, fail_start
    for name in pids:
        processes.stop(name, run_dir, timeout=2)


def test_restart_stops_every_one_and_starts_each_again_in_up_order(cluster_of_sleeps):
    run, run_dir, started, _ = cluster_of_sleeps
    for name in ("kube-proxy", "kubelet", "kube-scheduler"):
        run(name)
    assert startup.restart(["kube-proxy", "kubelet", "kube-scheduler"]) == 0
    assert [processes.running_pid(n, run_dir) for n in ("kube-proxy", "kubelet", "kube-scheduler")] == [None] * 3
    assert started == ["kube-scheduler", "kubelet", "kube-proxy"]


def test_one_that_was_not_running_is_started_too_and_named(cluster_of_sleeps):
    """A watcher that exited during the outage: started like the others, then the failure named
    (the cluster is not handed on as if whole)."""
    run, run_dir, started, _ = cluster_of_sleeps
    run("kubelet")
    with pytest.raises(SystemExit, match="kube-scheduler was not running"):
        startup.restart(["kube-scheduler", "kubelet"])
    assert started == ["kube-scheduler", "kubelet"]
    assert processes.running_pid("kubelet", run_dir) is None


def test_one_that_does_not_start_again_does_not_keep_the_others_stopped(cluster_of_sleeps):
    run, run_dir, started, fail_start = cluster_of_sleeps
    for name in ("kube-controller-manager", "kubelet", "coredns"):
        run(name)
    fail_start["kubelet"] = SystemExit("e2e.cluster: kubelet exited at once")
    with pytest.raises(SystemExit, match="kubelet did not start again: e2e.cluster: kubelet exited at once"):
        startup.restart(["kube-controller-manager", "kubelet", "coredns"])
    assert started == ["kube-controller-manager", "kubelet", "coredns"]


def test_restart_refuses_while_another_run_holds_the_cluster_and_leaves_them_running(cluster_of_sleeps):
    run, run_dir, started, _ = cluster_of_sleeps
    run("kubelet")
    other_run = os.open(locks.USERS, os.O_RDWR | os.O_CREAT)  # another pytest session's hold
    fcntl.flock(other_run, fcntl.LOCK_SH)
    try:
        with pytest.raises(SystemExit, match="another test run"):
            startup.restart(["kubelet"])
    finally:
        os.close(other_run)
    assert processes.running_pid("kubelet", run_dir) is not None
    assert started == []


def test_restart_refuses_an_unknown_component_before_stopping_anything(cluster_of_sleeps):
    run, run_dir, started, _ = cluster_of_sleeps
    run("kubelet")
    with pytest.raises(ValueError, match="unknown cluster component 'kubelett'"):
        startup.restart(["kubelet", "kubelett"])
    assert processes.running_pid("kubelet", run_dir) is not None
