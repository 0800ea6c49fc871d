"""After an API outage the harness restarts the cluster's API watchers (e2e/recovery.py) instead
of waiting out their client-go backoff: each one, once, in `up`'s order, never the API server,
etcd or containerd (the pods' runtime)."""

import pytest

from e2e import recovery
from e2e.cluster import components, control


def test_the_api_watchers_are_cluster_components_in_up_order():
    names = list(components.NAMES)
    assert [n for n in names if n in recovery.API_WATCHERS] == list(recovery.API_WATCHERS)
    assert not {"etcd", "kube-apiserver", "containerd", "registry"} & set(recovery.API_WATCHERS)


def test_restarting_them_stops_then_starts_each_one_once(monkeypatch):
    calls = []
    monkeypatch.setattr(control, "stop", lambda name: calls.append(("stop", name)))
    monkeypatch.setattr(control, "start", lambda name: calls.append(("start", name)))
    recovery.restart_api_watchers()
    assert calls == [(verb, name) for name in recovery.API_WATCHERS for verb in ("stop", "start")]


def test_one_that_cannot_be_stopped_is_still_started_and_the_others_restarted_before_it_fails(monkeypatch):
    """A watcher that exited during the outage (`stop` refuses: not running), or any one stop
    that fails, left it down and every later watcher waiting out its backoff: the cluster was
    handed on broken. Each is started (a running one is left alone), then the failure named."""
    calls = []

    def stop(name):
        calls.append(("stop", name))
        if name == "kube-scheduler":
            raise RuntimeError("python -m e2e.cluster stop kube-scheduler failed (1): kube-scheduler is not running")

    monkeypatch.setattr(control, "stop", stop)
    monkeypatch.setattr(control, "start", lambda name: calls.append(("start", name)))
    with pytest.raises(RuntimeError, match="kube-scheduler is not running"):
        recovery.restart_api_watchers()
    assert [name for verb, name in calls if verb == "start"] == list(recovery.API_WATCHERS)
    assert [name for verb, name in calls if verb == "stop"] == list(recovery.API_WATCHERS)


def test_one_that_does_not_start_again_does_not_keep_the_others_stopped(monkeypatch):
    calls = []

    def start(name):
        calls.append(("start", name))
        if name == "kubelet":
            raise RuntimeError("python -m e2e.cluster start kubelet failed (1): kubelet exited at once")

    monkeypatch.setattr(control, "stop", lambda name: calls.append(("stop", name)))
    monkeypatch.setattr(control, "start", start)
    with pytest.raises(RuntimeError, match="kubelet exited at once"):
        recovery.restart_api_watchers()
    assert calls == [(verb, name) for name in recovery.API_WATCHERS for verb in ("stop", "start")]
