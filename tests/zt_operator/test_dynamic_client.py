"""Children are written and read through kubernetes' DynamicClient (less hand-written code:
no table of typed-client classes and method names per kind).

Its cost is API discovery: measured on the real cluster (kubernetes client 37.0.2, see
kube.py), 2 requests at construction and one per child kind's group-version when each
kind is looked up by its group. It runs once per process, for all five kinds at the first
call, never again: the fleet's steady state costs nothing more. A fake API server on
loopback (``fakeapi``) answers; every request the real client sends is recorded.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.zt_operator.fakeapi import RESOURCES, FakeApi
from zt_operator import FIELD_MANAGER, kube

DEPLOYMENT = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "edge", "namespace": "relays"},
              "spec": {"replicas": 2}}
SERVICE = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "edge", "namespace": "relays"},
           "spec": {"ports": [{"port": 443}]}}
DISCOVERY = {"/version", "/apis", *RESOURCES}


@pytest.fixture
def api(monkeypatch):
    server = FakeApi().start()
    monkeypatch.setattr(kube, "_api", server.api_client())
    monkeypatch.setattr(kube, "_dynamic", None, raising=False)  # a new process: nothing discovered yet
    yield server
    server.stop()


def discovered(api: FakeApi) -> list[str]:
    return [r.path for r in api.requests if r.method == "GET" and r.path in DISCOVERY]


def test_a_child_is_server_side_applied_forced_under_the_operators_field_manager(api):
    live = kube.apply(DEPLOYMENT)

    (patch,) = [r for r in api.requests if r.method == "PATCH"]
    assert patch.path == "/apis/apps/v1/namespaces/relays/deployments/edge"
    assert patch.content_type == "application/apply-patch+yaml"
    assert patch.query == {"fieldManager": [FIELD_MANAGER], "force": ["true"]}
    assert live["spec"] == {"replicas": 2} and live["metadata"]["resourceVersion"] == "1"


def test_discovery_runs_once_for_the_five_child_kinds_and_never_again(api):
    kube.apply(DEPLOYMENT)
    first = discovered(api)
    kube.apply(SERVICE)
    assert kube.get("PodDisruptionBudget", "relays", "edge") is None
    assert kube.delete("HorizontalPodAutoscaler", "relays", "edge") is False
    kube.replace_service_ports("relays", "edge", [{"port": 443}])
    kube.list_children("Deployment", None, "app.kubernetes.io/managed-by=zt-relay-operator")

    # /version, /apis and one group-version per child kind (the core group's /api/v1 once).
    assert sorted(first) == sorted(["/version", "/apis", "/api/v1", "/apis/apps/v1", "/apis/policy/v1",
                                    "/apis/autoscaling/v2", "/apis/networking.k8s.io/v1"])
    assert discovered(api) == first


def test_every_child_call_goes_to_its_kinds_path(api):
    kube.apply(SERVICE)
    kube.get("PodDisruptionBudget", "relays", "edge")
    kube.delete("NetworkPolicy", "relays", "edge")
    kube.replace_service_ports("relays", "edge", [{"port": 8443}])
    kube.list_children("Deployment", "relays", "a=b")

    calls = [(r.method, r.path) for r in api.requests if r.path not in DISCOVERY]
    assert calls == [
        ("PATCH", "/api/v1/namespaces/relays/services/edge"),
        ("GET", "/apis/policy/v1/namespaces/relays/poddisruptionbudgets/edge"),
        ("DELETE", "/apis/networking.k8s.io/v1/namespaces/relays/networkpolicies/edge"),
        ("PATCH", "/api/v1/namespaces/relays/services/edge"),
        ("GET", "/apis/apps/v1/namespaces/relays/deployments"),
    ]
    patches = [r.content_type for r in api.requests if r.method == "PATCH"]
    assert patches == ["application/apply-patch+yaml", "application/json-patch+json"]


def test_an_api_server_down_at_the_first_call_is_a_kube_error_and_discovery_is_tried_again(api, monkeypatch):
    down = FakeApi()
    closed = down.api_client()  # a port nobody listens on once closed
    down.server_close()
    monkeypatch.setattr(kube, "_api", closed)

    with pytest.raises(kube.KubeError) as raised:
        kube.apply(DEPLOYMENT)
    assert raised.value.reason == "Unreachable"

    monkeypatch.setattr(kube, "_api", api.api_client())
    assert kube.apply(DEPLOYMENT)["metadata"]["name"] == "edge"
    assert len(discovered(api)) == 7


def test_every_request_discovery_included_has_the_calls_timeout(api, monkeypatch):
    """A hung API server must not hang discovery (it holds the lock every reconcile waits on)."""
    shared = api.api_client()
    timeouts = []
    call_api = shared.call_api

    def recording(*args, **kwargs):
        timeouts.append(kwargs.get("_request_timeout"))
        return call_api(*args, **kwargs)

    monkeypatch.setattr(shared, "call_api", recording)
    monkeypatch.setattr(kube, "_api", shared)
    kube.apply(DEPLOYMENT)

    assert len(timeouts) == 8  # 7 discovery requests and the apply
    assert set(timeouts) == {kube.TIMEOUT}


def test_no_discovery_cache_file_outlives_discovery(api):
    """The library always writes its discovery to a cache file and reads one it finds at the
    next construction: a file left behind could be read by another operator process (or test)
    talking to another API server."""
    kube.apply(DEPLOYMENT)

    assert not os.path.exists(kube._discovery_cache())


def test_two_processes_never_share_a_discovery_cache_file():
    """Between one process's unlink and its Discoverer's read, another process writing the same
    path would hand it that process's discovery (5 helpers run the tests on one machine)."""
    code = "from zt_operator import kube; print(kube._discovery_cache())"
    paths = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
             for _ in range(2)}

    assert len(paths) == 2, paths


def test_a_kind_whose_discovery_fails_fails_alone_with_the_servers_reason_and_is_discovered_again(api):
    """A 503 for one group-version in discovery (the library swallows it into 'no such
    kind') fails that kind's calls as the 5xx it is, not every child kind's: the other
    children are still reconciled. Its next call discovers it again, and only it."""
    api.unavailable.add("/apis/policy/v1")

    with pytest.raises(kube.KubeError) as raised:
        kube.get("PodDisruptionBudget", "relays", "edge")
    assert (raised.value.reason, raised.value.status) == ("APIServerError", 503)
    assert kube.apply(DEPLOYMENT)["spec"] == {"replicas": 2}
    assert kube.get("Service", "relays", "edge") is None

    api.unavailable.clear()
    before = len(api.requests)
    assert kube.get("PodDisruptionBudget", "relays", "edge") is None
    assert [r.path for r in api.requests[before:]] == ["/apis/policy/v1",
                                                      "/apis/policy/v1/namespaces/relays/poddisruptionbudgets/edge"]


def test_a_kind_the_api_server_does_not_serve_is_reason_not_served():
    from kubernetes.dynamic.exceptions import ResourceNotFoundError

    assert kube.classify(ResourceNotFoundError("No matches found for {'kind': 'PodDisruptionBudget'}"))[0] == "NotServed"
