"""The relays' children as the watches last saw them, and access to them for a reconcile.

Kopf watches each child kind, selected by the ``app.kubernetes.io/managed-by`` label, and
puts every object it sees here (``ChildCache``). A reconcile reads children from this cache;
a child missing from the cache is read from the API server (it may be a foreign object of
the same name, which has no label), and so is one not confirmed by a GET, an apply or a
relist for ``verify_seconds``. A child deleted while its watch was away (410, relist)
gives no DELETED event, and only a read finds it gone: once per resync interval the
operator LISTs each child kind per namespace (``sync``), which confirms every child at
once and drops the ones gone. A steady fleet thus costs one LIST per child kind and
namespace per interval, not one GET per child (200 relays: 5 requests instead of 800).
GET, apply and LIST answers go into the cache, unless the watch changed that child while
the call was in flight (the older answer would resurrect a deleted child).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from zt_operator import FIELD_MANAGER, builders, kube

Key = tuple[str, str, str]
"""(kind, namespace, name)"""


def key_of(kind: str, obj: dict[str, Any]) -> Key:
    meta = obj["metadata"]
    return kind, meta["namespace"], meta["name"]


class ChildCache:
    """Objects by (kind, namespace, name); written by watch handlers, read by reconciles
    in worker threads (hence the lock)."""

    def __init__(self, verify_seconds: float = 300.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._objects: dict[Key, dict[str, Any]] = {}
        self._verified: dict[Key, float] = {}  # when a GET or an apply last confirmed it
        self._deletions: dict[Key, int] = {}  # drops so far (a tombstone count)
        self._changes = 0  # watch events so far (puts and drops): marks for ``sync``
        self._changed: dict[Key, int] = {}  # key -> the change count at its last watch event
        self.verify_seconds = verify_seconds
        self._clock = clock

    def put(self, kind: str, obj: dict[str, Any]) -> None:
        """Remember ``obj`` unless an object with a newer resourceVersion is already here."""
        key = key_of(kind, obj)
        with self._lock:
            self._put(key, obj)
            self._touch(key)

    def _touch(self, key: Key) -> None:
        self._changes += 1
        self._changed[key] = self._changes

    def mark(self) -> int:
        """Taken before a LIST, passed to ``sync``."""
        with self._lock:
            return self._changes

    def sync(self, kind: str, namespace: str, listed: list[dict[str, Any]], mark: int) -> set[str]:
        """Make the cached ``kind`` children of ``namespace`` what a LIST started at ``mark``
        found: listed ones are confirmed, cached ones it did not find are dropped (deleted
        while the watch was away). Children the watch changed since ``mark`` are left as
        the watch has them (newer than the LIST). Returns the names of those dropped, and of
        those the LIST found changed (edited while the watch was away: no event came)."""
        names = {obj["metadata"]["name"]: obj for obj in listed}
        stale: set[str] = set()
        with self._lock:
            now = self._clock()
            for key in [k for k in self._objects if k[0] == kind and k[1] == namespace and k[2] not in names]:
                if self._changed.get(key, 0) <= mark:
                    self._drop(key)
                    stale.add(key[2])
            for name, obj in names.items():
                key = (kind, namespace, name)
                if self._changed.get(key, 0) > mark:
                    continue
                known = self._objects.get(key)
                if self._put(key, obj):
                    self._verified[key] = now
                    if known is not None and _newer(obj, known):
                        stale.add(name)
        return stale

    def _put(self, key: Key, obj: dict[str, Any]) -> bool:
        known = self._objects.get(key)
        if known is not None and _newer(known, obj):
            return False
        self._objects[key] = obj
        return True

    def deletions(self, kind: str, namespace: str, name: str) -> int:
        """A mark to pass to ``answer`` (taken before the API call)."""
        with self._lock:
            return self._deletions.get((kind, namespace, name), 0)

    def answer(self, key: Key, obj: dict[str, Any] | None, mark: int) -> None:
        """Record what a GET or an apply (started at ``mark``) answered, unless the child
        was dropped since: then the answer is older than the DELETED event."""
        with self._lock:
            if self._deletions.get(key, 0) != mark:
                return
            if obj is None:
                self._objects.pop(key, None)
            elif not self._put(key, obj):
                return
            self._verified[key] = self._clock()

    def verified(self, kind: str, namespace: str, name: str) -> bool:
        """Whether a GET, an apply or a LIST confirmed the cached child within ``verify_seconds``."""
        with self._lock:
            when = self._verified.get((kind, namespace, name))
            return when is not None and self._clock() - when < self.verify_seconds

    def drop(self, kind: str, namespace: str, name: str) -> None:
        key = (kind, namespace, name)
        with self._lock:
            self._drop(key)
            self._touch(key)

    def _drop(self, key: Key) -> None:
        self._objects.pop(key, None)
        self._verified.pop(key, None)
        self._deletions[key] = self._deletions.get(key, 0) + 1

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self._objects.get((kind, namespace, name))

    def __len__(self) -> int:
        with self._lock:
            return len(self._objects)


def _ours(obj: dict[str, Any]) -> bool:
    """Whether ``obj`` carries the label the child watches select on (so they keep it fresh)."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return labels.get("app.kubernetes.io/managed-by") == builders.MANAGED_BY


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
        if cached_only or (found is not None and self.cache.verified(kind, namespace, name)):
            return found
        mark = self.cache.deletions(kind, namespace, name)
        obj = kube.get(kind, namespace, name)
        if obj is None or _ours(obj):  # a foreign object is not ours to cache (no watch event for it)
            self.cache.answer((kind, namespace, name), obj, mark)
        return obj

    def apply(self, manifest: dict[str, Any], manager: str = FIELD_MANAGER) -> dict[str, Any]:
        meta = manifest["metadata"]
        key = (manifest["kind"], meta["namespace"], meta["name"])
        mark = self.cache.deletions(*key)
        obj = kube.apply(manifest, manager)
        self.cache.answer(key, obj, mark)
        return obj

    def delete(self, kind: str, namespace: str, name: str) -> None:
        kube.delete(kind, namespace, name)
        self.cache.drop(kind, namespace, name)

    def replace_service_ports(self, namespace: str, name: str, ports: list[dict[str, Any]]) -> None:
        kube.replace_service_ports(namespace, name, ports)

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        return kube.list_pods(namespace, selector)

    def scale_relay(self, namespace: str, name: str, replicas: int, resource_version: str | None = None) -> None:
        kube.scale_relay(namespace, name, replicas, resource_version)

    def relay_exists(self, namespace: str, name: str, uid: str) -> bool:
        """Whether the relay ``uid`` still exists and is not being deleted (one GET)."""
        relay = kube.get_relay(namespace, name)
        meta = (relay or {}).get("metadata") or {}
        return meta.get("uid") == uid and not meta.get("deletionTimestamp")
