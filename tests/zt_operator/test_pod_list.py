"""The pod LIST of a relay short of ready pods (the 2 s recheck while a pod is young).

When every relay rolls at once, each short relay lists its pods every 2 s: about N/2 LISTs
a second. A LIST with no resourceVersion is a consistent read (from etcd, on API servers
that can't serve it from a fresh watch cache); ``resourceVersion=0`` is answered from the
API server's watch cache. The recheck only explains why pods are not ready (its status
message), so a slightly old answer is fine: the next recheck reads a newer one.

The real client talks to a fake API server on loopback (``fakeapi``): the test sees the
query it really sends."""

from __future__ import annotations

import pytest

from tests.zt_operator.fakeapi import FakeApi
from zt_operator import kube

PODS = "/api/v1/namespaces/relays/pods"


@pytest.fixture
def api(monkeypatch):
    server = FakeApi().start()
    monkeypatch.setattr(kube, "_api", server.api_client())
    yield server
    server.stop()


def test_the_pod_list_of_a_short_relay_is_served_from_the_api_servers_watch_cache(api):
    api.objects[PODS] = {"kind": "PodList", "apiVersion": "v1", "items": [{"metadata": {"name": "edge-1"}}]}
    assert kube.list_pods("relays", "app.kubernetes.io/instance=edge") == [{"metadata": {"name": "edge-1"}}]
    [request] = [r for r in api.requests if r.path == PODS]
    assert request.method == "GET"
    assert request.query.get("labelSelector") == ["app.kubernetes.io/instance=edge"]
    assert request.query.get("resourceVersion") == ["0"], request.query
    # One relay's pods are few: no paging (with resourceVersion=0 a limit may be ignored).
    assert "limit" not in request.query and "resourceVersionMatch" not in request.query, request.query
