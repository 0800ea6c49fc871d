"""The relist's LIST comes in pages, as one consistent snapshot.

At 5,000 relays one LIST of a child kind in every namespace would be one response of
several megabytes. ``kube.list_children`` asks for pages (``limit``) and follows the
``continue`` token; all pages then come from the first page's snapshot. A token can expire
mid-list (410: etcd compacted that revision): the list restarts from its first page, so the
answer is never half one snapshot and half another.

A fake API server on loopback serves the pages (no cluster): the real client sends the
real query parameters.
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from kubernetes import client

from zt_operator import kube

SELECTOR = "app.kubernetes.io/managed-by=zt-relay-operator"
PATH = "/apis/apps/v1/deployments"


def deployment(namespace: str, name: str) -> dict:
    return {"metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}", "resourceVersion": "7"}}


class PagingServer(ThreadingHTTPServer):
    """Serves ``PATH`` in pages of ``limit`` from ``snapshots[revision]``; a continue token
    names its snapshot and offset. ``expire`` holds continue tokens to answer with 410
    once (then the store moves to the next snapshot, as after a compaction); ``fail``
    tokens are answered with 500."""

    def __init__(self, snapshots: list[list[dict]]) -> None:
        super().__init__(("127.0.0.1", 0), PagingHandler)
        self.snapshots = snapshots
        self.revision = 0
        self.expire: set[str] = set()
        self.fail: set[str] = set()
        self.requests: list[dict[str, list[str]]] = []


class PagingHandler(BaseHTTPRequestHandler):
    server: PagingServer

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        self.server.requests.append(query)
        if url.path != PATH or query.get("labelSelector") != [SELECTOR]:
            self._send(404, {"kind": "Status", "status": "Failure", "code": 404, "message": f"no {self.path}"})
            return
        token = (query.get("continue") or [""])[0]
        if token in self.server.fail:
            self._send(500, {"kind": "Status", "status": "Failure", "code": 500, "message": "etcd timeout"})
            return
        if token in self.server.expire:
            self.server.expire.discard(token)
            self.server.revision += 1
            self._send(410, {"kind": "Status", "status": "Failure", "code": 410, "reason": "Expired",
                             "message": "The provided continue parameter is too old to display a consistent list result."})
            return
        revision, offset = (int(part) for part in token.split("-")) if token else (self.server.revision, 0)
        items = self.server.snapshots[revision]
        limit = int((query.get("limit") or [str(len(items) or 1)])[0])
        page = items[offset:offset + limit]
        following = offset + limit
        metadata = {"resourceVersion": str(100 + revision)}
        if following < len(items):
            metadata["continue"] = f"{revision}-{following}"
            metadata["remainingItemCount"] = len(items) - following
        self._send(200, {"kind": "DeploymentList", "apiVersion": "apps/v1", "metadata": metadata, "items": page})


@pytest.fixture
def serve(monkeypatch):
    """``serve(snapshots)``: a PagingServer the operator's shared client talks to."""
    servers: list[PagingServer] = []

    def start(snapshots: list[list[dict]]) -> PagingServer:
        server = PagingServer(snapshots)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        configuration = client.Configuration()
        configuration.host = f"http://127.0.0.1:{server.server_address[1]}"
        configuration.retries = False
        monkeypatch.setattr(kube, "_api", client.ApiClient(configuration))
        monkeypatch.setattr(kube, "PAGE_SIZE", 2, raising=False)  # 5 objects: 3 pages
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


FLEET = [deployment(f"ns-{i // 2}", f"relay-{i}") for i in range(5)]


def test_a_list_in_every_namespace_is_asked_for_in_pages_and_follows_the_continue_token(serve):
    server = serve([FLEET])

    listed = kube.list_children("Deployment", None, SELECTOR)

    assert [obj["metadata"]["name"] for obj in listed] == [f"relay-{i}" for i in range(5)]
    assert all(obj["kind"] == "Deployment" and obj["apiVersion"] == "apps/v1" for obj in listed)
    assert [q.get("limit") for q in server.requests] == [["2"]] * 3
    assert [q.get("continue") for q in server.requests] == [None, ["0-2"], ["0-4"]]


def test_a_continue_token_that_expired_mid_list_restarts_the_list_from_a_new_snapshot(serve):
    # relay-0 (on the first page) is deleted and relay-9 created after the first snapshot:
    # the answer must be the second snapshot only, not its pages glued to the first's.
    later = [obj for obj in FLEET if obj["metadata"]["name"] != "relay-0"] + [deployment("ns-4", "relay-9")]
    server = serve([FLEET, later])
    server.expire.add("0-2")

    listed = kube.list_children("Deployment", None, SELECTOR)

    assert [obj["metadata"]["name"] for obj in listed] == ["relay-1", "relay-2", "relay-3", "relay-4", "relay-9"]
    assert [q.get("continue") for q in server.requests] == [None, ["0-2"], None, ["1-2"], ["1-4"]]


def test_a_list_whose_token_keeps_expiring_gives_up_with_a_kube_error(serve):
    server = serve([FLEET] * 10)
    server.expire.update(f"{revision}-2" for revision in range(10))

    with pytest.raises(kube.KubeError) as raised:
        kube.list_children("Deployment", None, SELECTOR)

    assert raised.value.reason == "Expired"
    assert len(server.requests) == 2 * (kube.LIST_RESTARTS + 1)


def test_a_failure_on_a_later_page_is_a_kube_error_not_a_partial_list(serve):
    server = serve([FLEET])
    server.fail.add("0-2")

    with pytest.raises(kube.KubeError) as raised:
        kube.list_children("Deployment", None, SELECTOR)

    assert raised.value.reason == "APIServerError"
    assert len(server.requests) == 2
