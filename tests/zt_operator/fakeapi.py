"""A small fake Kubernetes API server on loopback, for kube.py's real client (no cluster).

It serves API discovery for the five child kinds, LISTs of Deployments in pages, and
answers PATCH (server-side apply) and GET with the object sent. Every request is recorded
(method, path, query, Content-Type), so a test sees exactly what the client sent.
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from kubernetes import client

DEPLOYMENTS = "/apis/apps/v1/deployments"
GROUPS = {"apps": "v1", "policy": "v1", "autoscaling": "v2", "networking.k8s.io": "v1"}
RESOURCES = {  # group-version path -> [(plural, kind)]
    "/api/v1": [("services", "Service"), ("pods", "Pod"), ("events", "Event")],
    "/apis/apps/v1": [("deployments", "Deployment")],
    "/apis/policy/v1": [("poddisruptionbudgets", "PodDisruptionBudget")],
    "/apis/autoscaling/v2": [("horizontalpodautoscalers", "HorizontalPodAutoscaler")],
    "/apis/networking.k8s.io/v1": [("networkpolicies", "NetworkPolicy")],
}


class Request:
    def __init__(self, method: str, path: str, query: dict[str, list[str]], content_type: str | None) -> None:
        self.method, self.path, self.query, self.content_type = method, path, query, content_type

    def __repr__(self) -> str:
        return f"{self.method} {self.path}"


class FakeApi(ThreadingHTTPServer):
    """``snapshots[revision]`` are the Deployments a LIST pages through (``limit``); a
    continue token names its snapshot and offset. Continue tokens in ``expire`` are
    answered with 410 once (the store then moves to the next snapshot, as after a
    compaction); tokens in ``fail`` with 500."""

    daemon_threads = True

    def __init__(self, snapshots: list[list[dict[str, Any]]] | None = None) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.snapshots = snapshots or [[]]
        self.revision = 0
        self.expire: set[str] = set()
        self.fail: set[str] = set()
        self.unavailable: set[str] = set()
        """Paths answered 503 (an API group the server can't serve for now)."""
        self.requests: list[Request] = []
        self.objects: dict[str, dict[str, Any]] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def api_client(self) -> client.ApiClient:
        configuration = client.Configuration()
        configuration.host = self.url
        configuration.retries = False
        return client.ApiClient(configuration)

    def start(self) -> FakeApi:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def paths(self, method: str | None = None) -> list[str]:
        return [r.path for r in self.requests if method is None or r.method == method]


def discovery(path: str) -> dict[str, Any] | None:
    if path == "/version":
        return {"major": "1", "minor": "37", "gitVersion": "v1.37.2"}
    if path == "/apis":
        groups = []
        for name, version in GROUPS.items():
            preferred = {"groupVersion": f"{name}/{version}", "version": version}
            groups.append({"name": name, "versions": [dict(preferred)], "preferredVersion": dict(preferred)})
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
    if path in RESOURCES:
        return {"kind": "APIResourceList", "groupVersion": path.removeprefix("/api/").removeprefix("/apis/"),
                "resources": [{"name": plural, "singularName": kind.lower(), "namespaced": True, "kind": kind,
                               "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]}
                              for plural, kind in RESOURCES[path]]}
    return None


class Handler(BaseHTTPRequestHandler):
    server: FakeApi

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _status(self, code: int, message: str, reason: str = "") -> None:
        self._send(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
                          "reason": reason, "message": message})

    def _record(self) -> tuple[str, dict[str, list[str]]]:
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        self.server.requests.append(Request(self.command, url.path, query, self.headers.get("Content-Type")))
        return url.path, query

    def do_GET(self) -> None:
        path, query = self._record()
        found = discovery(path)
        if path in self.server.unavailable:
            self._status(503, "the server is currently unable to handle the request", "ServiceUnavailable")
        elif found is not None:
            self._send(200, found)
        elif path == DEPLOYMENTS or (path.startswith("/apis/apps/v1/namespaces/") and path.endswith("/deployments")):
            self._list(query)
        elif path in self.server.objects:
            self._send(200, self.server.objects[path])
        else:
            self._status(404, f"{path} not found", "NotFound")

    def do_PATCH(self) -> None:
        path, _ = self._record()
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        if isinstance(body, list):  # a JSON patch: answered with the object as it was
            self._send(200, self.server.objects.get(path) or {"metadata": {}})
            return
        obj = dict(body, metadata=dict(body.get("metadata") or {}, resourceVersion="1", uid="uid-1"))
        self.server.objects[path] = obj
        self._send(200, obj)

    def do_DELETE(self) -> None:
        path, _ = self._record()
        if self.server.objects.pop(path, None) is None:
            self._status(404, f"{path} not found", "NotFound")
        else:
            self._send(200, {"kind": "Status", "status": "Success"})

    def _list(self, query: dict[str, list[str]]) -> None:
        token = (query.get("continue") or [""])[0]
        if token in self.server.fail:
            self._status(500, "etcd timeout", "InternalError")
            return
        if token in self.server.expire:
            self.server.expire.discard(token)
            self.server.revision += 1
            self._status(410, "The provided continue parameter is too old to display a consistent list result.",
                         "Expired")
            return
        revision, offset = (int(part) for part in token.split("-")) if token else (self.server.revision, 0)
        items = self.server.snapshots[revision]
        limit = int((query.get("limit") or [str(len(items) or 1)])[0])
        following = offset + limit
        metadata: dict[str, Any] = {"resourceVersion": str(100 + revision)}
        if following < len(items):
            metadata["continue"] = f"{revision}-{following}"
            metadata["remainingItemCount"] = len(items) - following
        self._send(200, {"kind": "DeploymentList", "apiVersion": "apps/v1", "metadata": metadata,
                         "items": items[offset:following]})
