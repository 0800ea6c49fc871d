"""The relays' children as the watches last saw them, and access to them for a reconcile.

Kopf watches each child kind, selected by the ``app.kubernetes.io/managed-by`` label, and
puts every object it sees here (``ChildCache``). A reconcile reads children from this cache,
so a steady relay costs no API request at all; only a child missing from the cache is read
from the API server (it may be a foreign object of the same name, which has no label).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from zt_operator import FIELD_MANAGER, kube

Key = tuple[str, str, str]
"""(kind, namespace, name)"""


def key_of(kind: str, obj: dict[str, Any]) -> Key:
    meta = obj["metadata"]
    return kind, meta["namespace"], meta["name"]


class ChildCache:
    """Objects by (kind, namespace, name); written by watch handlers, read by reconciles
    in worker threads (hence the lock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objects: dict[Key, dict[str, Any]] = {}

    def put(self, kind: str, obj: dict[str, Any]) -> None:
        """Remember ``obj`` unless an object with a newer resourceVersion is already here."""
        key = key_of(kind, obj)
        with self._lock:
            known = self._objects.get(key)
            if known is not None and _newer(known, obj):
                return
            self._objects[key] = obj

    def drop(self, kind: str, namespace: str, name: str) -> None:
        with self._lock:
            self._objects.pop((kind, namespace, name), None)

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self._objects.get((kind, namespace, name))

    def __len__(self) -> int:
        with self._lock:
            return len(self._objects)


def _newer(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether ``a`` is a later version of the same object than ``b`` (resourceVersions are
    opaque, but etcd's are integers; anything else counts as not newer)."""
    try:
        return (a["metadata"].get("uid") == b["metadata"].get("uid")
                and int(a["metadata"]["resourceVersion"]) > int(b["metadata"]["resourceVersion"]))
    except (KeyError, TypeError, ValueError):
        return False


class Access:
    """What a reconcile needs from the cluster: the cache for reads, ``kube`` for the rest.
    Tests pass a fake with the same methods."""

    def __init__(self, cache: ChildCache, resolver: Callable[[str], list[str]] = kube.resolve) -> None:
        self.cache = cache
        self.resolve = resolver

    def live(self, kind: str, namespace: str, name: str, cached_only: bool = False) -> dict[str, Any] | None:
        """The child from the cache; on a miss from the API server, unless ``cached_only``
        (enough when only our own, labelled, object matters)."""
        found = self.cache.get(kind, namespace, name)
        if found is not None or cached_only:
            return found
        return kube.get(kind, namespace, name)

    def apply(self, manifest: dict[str, Any], manager: str = FIELD_MANAGER) -> dict[str, Any]:
        obj = kube.apply(manifest, manager)
        self.cache.put(manifest["kind"], obj)
        return obj

    def delete(self, kind: str, namespace: str, name: str) -> None:
        kube.delete(kind, namespace, name)
        self.cache.drop(kind, namespace, name)

    def replace_service_ports(self, namespace: str, name: str, ports: list[dict[str, Any]]) -> None:
        kube.replace_service_ports(namespace, name, ports)

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        return kube.list_pods(namespace, selector)

    def scale_relay(self, namespace: str, name: str, replicas: int) -> None:
        kube.scale_relay(namespace, name, replicas)
