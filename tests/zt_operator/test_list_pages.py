"""The relist's LIST comes in pages, as one consistent snapshot.

At 5,000 relays one LIST of a child kind in every namespace would be one response of
several megabytes. ``kube.list_children`` asks for pages (``limit``) and follows the
``continue`` token; all pages then come from the first page's snapshot. A token can expire
mid-list (410: etcd compacted that revision): the list restarts from its first page, so the
answer is never half one snapshot and half another.

A fake API server on loopback (``fakeapi``) serves the pages (no cluster): the real
client sends the real query parameters.
"""

from __future__ import annotations

import pytest

from tests.zt_operator.fakeapi import FakeApi
from zt_operator import handlers, kube, metrics

SELECTOR = "app.kubernetes.io/managed-by=zt-relay-operator"


def deployment(namespace: str, name: str) -> dict:
    return {"metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}", "resourceVersion": "7"}}


@pytest.fixture
def serve(monkeypatch):
    """``serve(snapshots)``: a fake API server the operator's shared client talks to."""
    servers: list[FakeApi] = []

    def start(snapshots: list[list[dict]]) -> FakeApi:
        server = FakeApi(snapshots).start()
        servers.append(server)
        monkeypatch.setattr(kube, "_api", server.api_client())
        monkeypatch.setattr(kube, "_dynamic", None, raising=False)  # discovery against this server
        monkeypatch.setattr(kube, "PAGE_SIZE", 2)  # 5 objects: 3 pages
        return server

    yield start
    for server in servers:
        server.stop()


def lists(server: FakeApi) -> list:
    return [r.query for r in server.requests if r.path == "/apis/apps/v1/deployments"]


FLEET = [deployment(f"ns-{i // 2}", f"relay-{i}") for i in range(5)]


def test_a_list_in_every_namespace_is_asked_for_in_pages_and_follows_the_continue_token(serve):
    server = serve([FLEET])

    listed = kube.list_children("Deployment", None, SELECTOR)

    assert [obj["metadata"]["name"] for obj in listed] == [f"relay-{i}" for i in range(5)]
    assert all(obj["kind"] == "Deployment" and obj["apiVersion"] == "apps/v1" for obj in listed)
    assert [q.get("limit") for q in lists(server)] == [["2"]] * 3
    assert [q.get("continue") for q in lists(server)] == [None, ["0-2"], ["0-4"]]


def test_a_continue_token_that_expired_mid_list_restarts_the_list_from_a_new_snapshot(serve):
    # relay-0 (on the first page) is deleted and relay-9 created after the first snapshot:
    # the answer must be the second snapshot only, not its pages glued to the first's.
    later = [obj for obj in FLEET if obj["metadata"]["name"] != "relay-0"] + [deployment("ns-4", "relay-9")]
    server = serve([FLEET, later])
    server.expire.add("0-2")

    listed = kube.list_children("Deployment", None, SELECTOR)

    assert [obj["metadata"]["name"] for obj in listed] == ["relay-1", "relay-2", "relay-3", "relay-4", "relay-9"]
    assert [q.get("continue") for q in lists(server)] == [None, ["0-2"], None, ["1-2"], ["1-4"]]


def test_a_list_whose_token_keeps_expiring_gives_up_with_a_kube_error(serve):
    server = serve([FLEET] * 10)
    server.expire.update(f"{revision}-2" for revision in range(10))

    with pytest.raises(kube.KubeError) as raised:
        kube.list_children("Deployment", None, SELECTOR)

    assert raised.value.reason == "Expired"
    assert len(lists(server)) == 2 * (kube.LIST_RESTARTS + 1)


def test_a_failure_on_a_later_page_is_a_kube_error_not_a_partial_list(serve):
    server = serve([FLEET])
    server.fail.add("0-2")

    with pytest.raises(kube.KubeError) as raised:
        kube.list_children("Deployment", None, SELECTOR)

    assert raised.value.reason == "APIServerError"
    assert len(lists(server)) == 2


# Issue 14 (fleet): a LIST restarted after a 410 was counted only when it finally failed
# (api_errors_total{reason="Expired"}); restarts that ended in a good list left no trace,
# so a store compacting faster than the pages arrive went unseen until it broke the relist.


def test_the_list_reports_each_restart_after_an_expired_token_with_its_reason(serve):
    server = serve([FLEET, FLEET, FLEET])
    server.expire.update({"0-2", "1-4"})
    restarts: list[str] = []

    listed = kube.list_children("Deployment", None, SELECTOR, restarted=restarts.append)

    assert len(listed) == 5
    assert restarts == ["Expired", "Expired"]


@pytest.fixture
def counted(monkeypatch):
    """The operator's metrics, fresh; the relist may LIST in every namespace."""
    fresh = metrics.Metrics()
    monkeypatch.setattr(handlers, "METRICS", fresh)
    monkeypatch.setattr(handlers, "_cluster_lists_refused_at", None)
    return fresh


def test_a_relist_counts_each_restart_by_kind_and_reason_even_when_the_list_then_succeeds(serve, counted):
    server = serve([FLEET, FLEET])
    server.expire.add("0-2")

    found = handlers._list_children("Deployment", ["ns-0", "ns-1", "ns-2"], SELECTOR)

    assert sum(len(objs) for objs in found.values()) == 5
    text = counted.render()
    assert 'zt_operator_list_restarts_total{kind="Deployment",reason="Expired"} 1' in text
    assert "zt_operator_api_errors_total{" not in text  # the list succeeded: no failed call


def test_a_relist_that_keeps_expiring_counts_every_restart_and_then_the_failure(serve, counted):
    server = serve([FLEET] * 10)
    server.expire.update(f"{revision}-2" for revision in range(10))

    assert handlers._list_children("Deployment", ["ns-0", "ns-1", "ns-2"], SELECTOR) == {}

    text = counted.render()
    assert f'zt_operator_list_restarts_total{{kind="Deployment",reason="Expired"}} {kube.LIST_RESTARTS}' in text
    assert 'zt_operator_api_errors_total{reason="Expired"} 1' in text


# Operator review (session 10): one 403 on a LIST in every namespace turned those LISTs off for
# the process's life, so a cluster-wide operator that met a passing denial (its ClusterRole
# replaced by an upgrade) listed each namespace one by one from then on.


def test_a_refused_list_in_every_namespace_is_tried_again_after_a_while(monkeypatch, counted):
    now = [1000.0]
    monkeypatch.setattr(handlers.time, "monotonic", lambda: now[0])
    calls: list[str | None] = []
    refuse = [True]

    def list_children(kind, namespace, selector, restarted=None):
        calls.append(namespace)
        if namespace is None and refuse[0]:
            raise kube.KubeError("forbidden", "Forbidden", 403)
        return []

    monkeypatch.setattr(kube, "list_children", list_children)
    namespaces = ["ns-0", "ns-1"]

    handlers._list_children("Deployment", namespaces, SELECTOR)
    assert calls == [None, "ns-0", "ns-1"]  # refused: each namespace instead
    calls.clear()
    handlers._list_children("Deployment", namespaces, SELECTOR)
    assert calls == ["ns-0", "ns-1"]  # not asked again at once (an operator with Roles only)
    calls.clear()
    refuse[0] = False  # the ClusterRole is back
    now[0] += handlers.CLUSTER_LIST_RETRY_SECONDS
    handlers._list_children("Deployment", namespaces, SELECTOR)
    assert calls == [None]  # asked again after a while, and one LIST does
    assert "zt_operator_api_errors_total{" not in counted.render()  # a 403 here is expected, not an error
