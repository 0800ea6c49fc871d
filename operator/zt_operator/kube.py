"""The operator's calls to the API server (synchronous; reconciles run in worker threads).

One ``ApiClient`` for the whole process (``login``): its connection pool keeps TLS
connections open, so a call does not pay a new handshake. The children go through
kubernetes' ``DynamicClient`` on that same client (no table of typed classes and method
names per kind). Its price is API discovery, run once per process for the five child kinds
at the first child call (``_children``), never again. Measured on the real cluster
(kubernetes client 37.0.2): 2 requests at construction (/version, /apis) and one per
group-version looked up, 7 in all; looking a core kind up as ``api_version="v1"`` alone
would search every group (25 requests), hence ``prefix="api"``. Construction fails while
the API server is down, so it is not done at login: a failed discovery is a ``KubeError``
like any call, and the next call tries again; a kind whose discovery failed (a 503 for its
group-version) fails alone, and is discovered again at its next call. The library's discovery cache file is the
process's own and is removed before and after discovery (answers from an older pod or
another process are not trusted).

Every failure of a call (an ``ApiException`` of any status, a refused or reset connection,
a timeout) becomes ``KubeError`` with a short ``reason`` for conditions and metrics; nothing
else escapes a reconcile.

Children are written with server-side apply under one field manager, forced: the operator
owns exactly the fields it builds, repairs them when someone edits them, and leaves fields
it never sets (for example ``replicas`` under an autoscaler) to others.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import threading
from collections.abc import Callable
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import DynamicApiError, ResourceNotFoundError, ServiceUnavailableError

from zt_operator import FIELD_MANAGER, GROUP, PLURAL, VERSION

# kind -> (discovery prefix, apiVersion) of the child kinds
CHILD_KINDS: dict[str, tuple[str, str]] = {
    "Deployment": ("apis", "apps/v1"),
    "Service": ("api", "v1"),
    "HorizontalPodAutoscaler": ("apis", "autoscaling/v2"),
    "PodDisruptionBudget": ("apis", "policy/v1"),
    "NetworkPolicy": ("apis", "networking.k8s.io/v1"),
}
APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"
TIMEOUT = (5, 20)
"""Seconds to connect, and to wait for an answer: a hung request must not stall a
reconciliation forever, and a down API server is noticed quickly."""

_api: client.ApiClient | None = None
_dynamic: tuple[DynamicClient, dict[str, Any]] | None = None
"""The dynamic client and the child kinds' discovered resources (``_children``)."""
_discovery = threading.Lock()


def _discovery_cache() -> str:
    """The library's discovery cache file (it always writes one; a failed write is ignored).
    One per process, removed once discovery is done: the library reads a file it finds, so
    a shared name could hand one process another's discovery (of another API server)."""
    try:
        directory = tempfile.gettempdir()
    except OSError:  # no writable temporary directory (read-only root, no /tmp volume)
        directory = os.sep
    return os.path.join(directory, f"zt-operator-discovery-{os.getpid()}.json")


class KubeError(Exception):
    """An API call failed; the message says which call and why (for status conditions)."""

    def __init__(self, message: str, reason: str = "APIError", status: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        """Short CamelCase cause: Timeout, Unreachable, TooManyRequests, APIServerError,
        WebhookFailed (a 500 for an admission webhook it could not call), Forbidden, Invalid,
        Conflict, NotFound, Expired, NotServed (discovery) or APIError."""
        self.status = status


UNANSWERED = frozenset({"Unreachable", "Timeout", "TooManyRequests", "APIServerError"})
"""Reasons that mean the API server did not answer the call itself (down, slow, shedding
load, failing): a pass retried soon would fail the same, so only the backoff retries it."""


def login() -> None:
    """Use the pod's ServiceAccount in a cluster, else the local kubeconfig; one shared client."""
    global _api, _dynamic
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    configuration = client.Configuration.get_default_copy()
    # No urllib3 retries: a failed call is reported and the reconcile retried with backoff.
    configuration.retries = False
    _api = client.ApiClient(configuration)
    _api.user_agent = "zt-relay-operator"
    _dynamic = None


def api_client() -> client.ApiClient:
    if _api is None:
        raise KubeError("not logged in to the API server", "APIError")
    return _api


def _typed(api_class: type) -> Any:
    return api_class(api_client())


class _DynamicClient(DynamicClient):
    """Discovery's requests get the calls' timeout too (the library sends them with none, and
    a hung API server would hold the discovery lock that every reconcile waits on). A 503 is
    raised as the 5xx it is: the library's discovery swallows ServiceUnavailableError into
    "no such kind" (meant for aggregated APIs the client never asked for)."""

    def request(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        params.setdefault("_request_timeout", TIMEOUT)
        try:
            return super().request(method, path, body=body, **params)
        except ServiceUnavailableError as exc:
            raise DynamicApiError(exc) from None


def _children(kind: str) -> tuple[DynamicClient, Any]:
    """The dynamic client and ``kind``'s resource. The first call of the process constructs
    the client and discovers every child kind (reconciles run in threads: one discovery,
    under a lock); a kind whose discovery failed fails alone, and its next call discovers it
    again (``kind`` first, so a failure of another kind never fails this call). Call it
    inside ``call`` so that a failed discovery is a ``KubeError``."""
    global _dynamic
    with _discovery:
        cache = _discovery_cache()
        try:
            if _dynamic is None or _dynamic[0].client is not api_client():
                with contextlib.suppress(OSError):
                    os.unlink(cache)
                _dynamic = _DynamicClient(api_client(), cache_file=cache), {}
                wanted = [kind, *(name for name in CHILD_KINDS if name != kind)]
            else:
                wanted = [] if kind in _dynamic[1] else [kind]
            dynamic, resources = _dynamic
            for name in wanted:
                prefix, api_version = CHILD_KINDS[name]
                try:
                    resources[name] = dynamic.resources.get(prefix=prefix, api_version=api_version, kind=name)
                except Exception:
                    if name == kind:
                        raise
                    break  # the others are discovered at their own calls (a hung API: one timeout)
        finally:  # nothing reads it again: the resources are kept here
            with contextlib.suppress(OSError):
                os.unlink(cache)
    return dynamic, resources[kind]


def _child_call(kind: str, verb: str, *args: Any, **kwargs: Any) -> Any:
    """``DynamicClient.<verb>(resource of kind, ...)`` answering the raw response (the body
    is decoded by ``call_json``, inside ``call``, like every other answer)."""
    dynamic, resource = _children(kind)
    return getattr(dynamic, verb)(resource, *args, serialize=False, **kwargs)


def _decode(response: Any) -> dict[str, Any]:
    data = getattr(response, "data", None)
    if data is None:
        data = response.read()
    return json.loads(data)


WEBHOOK_FAILED = "failed calling webhook"  # kube-apiserver's 500 when it could not call one
_STATUS_REASONS = {401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 409: "Conflict",
                   410: "Expired", 422: "Invalid", 429: "TooManyRequests"}


def classify(exc: BaseException) -> tuple[str, str, int | None]:
    """(reason, message, HTTP status or None) of a failed call's exception."""
    if isinstance(exc, ApiException):
        status = exc.status or None
        try:
            message = json.loads(exc.body).get("message") or exc.reason
        except (TypeError, ValueError, AttributeError):
            message = f"{exc.status} {exc.reason}"
        if status is None or status == 0:
            return "Unreachable", str(exc.reason or exc), None
        reason = _STATUS_REASONS.get(status) or ("APIServerError" if status >= 500 else "APIError")
        if status == 500 and WEBHOOK_FAILED in message:
            # An admission webhook (failurePolicy: Fail) that is down or too slow: the API server
            # answered, and the failure lasts as long as the webhook's, as a denial does.
            reason = "WebhookFailed"
        return reason, f"{status} {message}", status
    if isinstance(exc, ResourceNotFoundError):  # discovery: the API server does not serve the kind
        return "NotServed", f"not served by the API server: {exc}", None
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        exc = exc.reason
    # NewConnectionError is a ConnectTimeoutError in urllib3's hierarchy: refused, not slow.
    if isinstance(exc, urllib3.exceptions.NewConnectionError):
        return "Unreachable", f"API server unreachable: {exc}", None
    if isinstance(exc, (urllib3.exceptions.TimeoutError, socket.timeout, TimeoutError)):
        return "Timeout", f"timed out: {exc}", None
    if isinstance(exc, (urllib3.exceptions.HTTPError, OSError)):
        return "Unreachable", f"API server unreachable: {exc}", None
    return "APIError", f"{type(exc).__name__}: {exc}", None


def call(what: str, fn, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``; any failure becomes ``KubeError`` naming ``what``."""
    try:
        return fn(*args, **kwargs)
    except KubeError:
        raise
    except Exception as exc:  # every failure of a call is reported, never raised past reconcile
        reason, message, status = classify(exc)
        raise KubeError(f"{what}: {message}", reason, status) from None


def call_json(what: str, fn, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """``call`` that also reads and decodes the body inside it: with ``_preload_content=False``
    the body arrives after ``fn`` returns, and a connection cut mid-body or a truncated body
    must be a ``KubeError`` too (Degraded, Event, metric, backoff), not escape the pass."""
    return call(what, lambda: _decode(fn(*args, **kwargs)))


def apply(manifest: dict[str, Any], manager: str = FIELD_MANAGER) -> dict[str, Any]:
    """Server-side apply ``manifest`` (creates it if missing); returns the live object."""
    meta = manifest["metadata"]
    return call_json(f"applying {manifest['kind']} {meta['name']}", _child_call, manifest["kind"],
                     "server_side_apply", body=manifest, name=meta["name"], namespace=meta["namespace"],
                     field_manager=manager, force_conflicts=True)


def replace_service_ports(namespace: str, name: str, ports: list[dict[str, Any]]) -> None:
    """Replace a Service's whole port list (a JSON patch; apply can only merge it)."""
    call_json(f"repairing the ports of Service {name}", _child_call, "Service", "patch",
              body=[{"op": "replace", "path": "/spec/ports", "value": ports}], name=name, namespace=namespace,
              field_manager=FIELD_MANAGER, content_type="application/json-patch+json")


def get(kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    """The live object, or None if it does not exist."""
    try:
        return call_json(f"reading {kind} {name}", _child_call, kind, "get", name=name, namespace=namespace)
    except KubeError as exc:
        if exc.status == 404:
            return None
        raise


def delete(kind: str, namespace: str, name: str) -> bool:
    """Delete the object if it exists; returns whether there was one to delete."""
    try:
        call_json(f"deleting {kind} {name}", _child_call, kind, "delete", name=name, namespace=namespace)
    except KubeError as exc:
        if exc.status == 404:
            return False
        raise
    return True


PAGE_SIZE = 500
"""Objects per page of a relist's LIST (client-go's pager uses the same): 5,000 relays'
Deployments come in 10 answers of about a megabyte, not one of ten."""
LIST_RESTARTS = 3
"""How often a LIST whose continue token expired (410) starts over before it gives up
(until the next relist); each start is a new snapshot, so only a store compacting
faster than the pages arrive can use them all."""


def list_children(kind: str, namespace: str | None, selector: str,
                  restarted: Callable[[str], None] = lambda reason: None) -> list[dict[str, Any]]:
    """The objects of child ``kind`` in ``namespace`` (None: in every namespace) matching
    ``selector`` (the relist), read in pages of ``PAGE_SIZE``. Every page comes from the
    first page's snapshot (the continue token carries its resourceVersion). A token that
    expired mid-list (410, a compaction) restarts the list from its first page, never
    continues from a newer snapshot: the answer is one consistent snapshot, so a child
    missing from it really was gone at that moment. ``restarted(reason)`` is called at each
    restart (the caller counts them: restarts that end in a good list are otherwise unseen)."""
    for attempt in range(LIST_RESTARTS + 1):
        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            try:
                listed = call_json(f"listing {kind}s", _child_call, kind, "get", namespace=namespace,
                                   label_selector=selector, limit=PAGE_SIZE, _continue=token)
            except KubeError as exc:
                if exc.status == 410 and token is not None:
                    if attempt < LIST_RESTARTS:
                        restarted(exc.reason)
                    break  # expired mid-list: start over (or give up after the last one)
                raise
            # A list's items carry no kind or apiVersion; the watch's objects do.
            items += [dict(item, kind=kind, apiVersion=listed.get("apiVersion")) for item in listed.get("items") or []]
            token = (listed.get("metadata") or {}).get("continue") or None
            if token is None:
                return items
    raise KubeError(f"listing {kind}s: the list expired {LIST_RESTARTS + 1} times before its last page",
                    "Expired", 410)


def list_pods(namespace: str, selector: str) -> list[dict[str, Any]]:
    """The pods matching ``selector`` (only read when a relay is short of ready pods).

    Answered from the API server's watch cache as it is (``resourceVersion=0``), not a
    consistent read: a short relay lists its pods every 2 s while one is young, so a fleet
    rolling at once makes about N/2 LISTs a second. A consistent one costs etcd a read each:
    the whole LIST before Kubernetes 1.31 (or with ConsistentListFromCache off), since then
    the current revision, which the cache must catch up to before it answers. The answer only
    explains the status; a slightly old one is corrected by the next recheck. Whether a relay
    is short, and so rechecked at all, is read from its Deployment, never from this list: an
    old answer can't end the rechecks."""
    listed = call_json("listing relay pods", _typed(client.CoreV1Api).list_namespaced_pod, namespace,
                       label_selector=selector, resource_version="0", _preload_content=False,
                       _request_timeout=TIMEOUT)
    return listed.get("items") or []


def scale_relay(namespace: str, name: str, replicas: int, resource_version: str | None = None) -> None:
    """Set the relay's ``spec.replicas`` through its scale subresource; with
    ``resource_version``, only if the relay is still that version (else 409 Conflict)."""
    patch: dict[str, Any] = {"spec": {"replicas": replicas}}
    if resource_version:
        patch["metadata"] = {"resourceVersion": resource_version}
    call(f"scaling ZeroTierRelay {name}", _typed(client.CustomObjectsApi).patch_namespaced_custom_object_scale,
         GROUP, VERSION, namespace, PLURAL, name, patch,
         field_manager=FIELD_MANAGER, _content_type=MERGE, _request_timeout=TIMEOUT)


def get_relay(namespace: str, name: str) -> dict[str, Any] | None:
    """The live relay, or None if it does not exist."""
    try:
        return call(f"reading ZeroTierRelay {name}", _typed(client.CustomObjectsApi).get_namespaced_custom_object,
                    GROUP, VERSION, namespace, PLURAL, name, _request_timeout=TIMEOUT)
    except KubeError as exc:
        if exc.status == 404:
            return None
        raise


def patch_relay_status(namespace: str, name: str, status: dict[str, Any]) -> None:
    """Merge-patch the relay's status (``None`` values remove fields)."""
    call(f"writing the status of ZeroTierRelay {name}",
         _typed(client.CustomObjectsApi).patch_namespaced_custom_object_status,
         GROUP, VERSION, namespace, PLURAL, name, {"status": status},
         field_manager=FIELD_MANAGER, _content_type=MERGE, _request_timeout=TIMEOUT)


def remove_finalizer(namespace: str, name: str, finalizers: list[str], finalizer: str) -> None:
    """Remove ``finalizer`` from the relay; the JSON patch's test fails safely if the list moved."""
    index = finalizers.index(finalizer)
    call(f"removing finalizer {finalizer} of ZeroTierRelay {name}",
         _typed(client.CustomObjectsApi).patch_namespaced_custom_object,
         GROUP, VERSION, namespace, PLURAL, name,
         [{"op": "test", "path": f"/metadata/finalizers/{index}", "value": finalizer},
          {"op": "remove", "path": f"/metadata/finalizers/{index}"}],
         _content_type="application/json-patch+json", _request_timeout=TIMEOUT)


def post_event(relay: dict[str, Any], kind: str, reason: str, message: str, now: str) -> None:
    """A Kubernetes Event on the relay (``kubectl describe ztr``)."""
    meta = relay["metadata"]
    event = {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {"apiVersion": relay.get("apiVersion"), "kind": relay.get("kind"), "name": meta["name"],
                           "namespace": meta["namespace"], "uid": meta.get("uid")},
        "type": kind, "reason": reason, "message": message[:1024],
        "source": {"component": FIELD_MANAGER}, "reportingComponent": FIELD_MANAGER,
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
    }
    call(f"posting event {reason}", _typed(client.CoreV1Api).create_namespaced_event, meta["namespace"], event,
         _request_timeout=TIMEOUT)


def resolve(hostname: str) -> list[str]:
    """The IP addresses of a load balancer's hostname (empty when it does not resolve)."""
    try:
        infos = socket.getaddrinfo(hostname, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return []
    return list(dict.fromkeys(info[4][0] for info in infos))


CRD_NAME = f"{PLURAL}.{GROUP}"


def get_crd() -> dict[str, Any] | None:
    """The ZeroTierRelay CRD as installed, or None."""
    try:
        return call_json("reading the ZeroTierRelay CRD",
                            _typed(client.ApiextensionsV1Api).read_custom_resource_definition, CRD_NAME,
                            _preload_content=False, _request_timeout=TIMEOUT)
    except KubeError as exc:
        if exc.status == 404:
            return None
        raise


def apply_crd(manifest: dict[str, Any]) -> None:
    """Server-side apply the CRD (taking over the fields Helm created)."""
    call("applying the ZeroTierRelay CRD", _typed(client.ApiextensionsV1Api).patch_custom_resource_definition,
         manifest["metadata"]["name"], manifest, field_manager=FIELD_MANAGER, force=True,
         _content_type=APPLY, _preload_content=False, _request_timeout=TIMEOUT)
