"""After an API outage the harness restarts the cluster's API watchers (e2e/recovery.py) instead
of waiting out their client-go backoff: each one, once, in `up`'s order, never the API server,
etcd or containerd (the pods' runtime)."""

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
