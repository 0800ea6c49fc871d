"""Review findings: the child cache, as it is right after a restart and after a missed
watch event. Uses the real ``children.Access`` over a fake ``kube``."""

from __future__ import annotations

import copy

import pytest

from tests.zt_operator.conftest import IMAGE, relay_body
from zt_operator import children, handlers, kube, reconcile
from zt_operator.settings import OperatorSettings

SETTINGS = OperatorSettings(relay_image=IMAGE)
LB_IP = "198.51.100.7"


def live_children(body):
    """The children as a previous pass left them."""
    built = reconcile._manifests(body, SETTINGS, [], None)
    objects = {}
    for kind, manifest in built.items():
        if manifest is None:
            continue
        obj = copy.deepcopy(manifest)
        obj["metadata"]["resourceVersion"] = "100"
        obj["metadata"]["uid"] = f"uid-{kind}"
        obj["status"] = {}
        objects[kind] = obj
    objects["Service"]["status"] = {"loadBalancer": {"ingress": [{"ip": LB_IP}]}}
    objects["Deployment"]["status"] = {"replicas": 2, "readyReplicas": 2, "updatedReplicas": 2}
    return objects


@pytest.fixture
def cluster(monkeypatch):
    """kube.get/apply over a dict of live objects; records applies."""
    objects: dict[str, dict] = {}
    applied: list[str] = []

    def get(kind, namespace, name):
        return copy.deepcopy(objects.get(kind))

    def apply(manifest, manager="zt-relay-operator"):
        applied.append(manifest["kind"])
        obj = copy.deepcopy(manifest)
        obj["metadata"]["resourceVersion"] = "200"
        objects[manifest["kind"]] = obj
        return copy.deepcopy(obj)

    monkeypatch.setattr(kube, "get", get)
    monkeypatch.setattr(kube, "apply", apply)
    return objects, applied


def test_the_resync_repairs_a_child_deleted_while_the_watch_was_away(cluster, monkeypatch):
    # A child watch that ends with 410 Gone is restarted by Kopf with a new LIST: objects
    # deleted meanwhile give no DELETED event, so the cache keeps them. e0ae4e1 drops the
    # cache only when the *relay* watch relists; a relist of the Deployments watch alone
    # leaves the ghost, and the resync ("catches anything missed") reads the same cache, so
    # the Deployment is never re-created.
    objects, applied = cluster
    body = relay_body()
    objects.update(live_children(body))
    cache = children.ChildCache()
    for kind, obj in objects.items():
        cache.put(kind, copy.deepcopy(obj))
    del objects["Deployment"]  # deleted while the watch was away
    monkeypatch.setattr(handlers, "ACCESS", children.Access(cache, resolver=lambda host: []))
    monkeypatch.setattr(handlers, "_applied_generation", {})
    monkeypatch.setattr(handlers, "SETTINGS", SETTINGS)
    monkeypatch.setattr(kube, "patch_relay_status", lambda *a: None)
    monkeypatch.setattr(kube, "post_event", lambda *a: None)
    monkeypatch.setattr(kube, "scale_relay", lambda *a: None)
    monkeypatch.setattr(kube, "get_relay", lambda namespace, name: copy.deepcopy(body))  # the relay is still there
    handlers._reconcile_blocking("relays/edge", body)  # what the periodic resync runs
    assert "Deployment" in applied


def test_an_apply_answered_after_the_childs_deleted_event_does_not_resurrect_it_in_the_cache(cluster, monkeypatch):
    # Reconcile thread: apply returns the object; the watch (event loop) meanwhile handles
    # the child's DELETED event and drops it; then Access.apply puts the now-deleted object
    # back. The cache has no tombstone, so the ghost stays and the child is never repaired.
    objects, applied = cluster
    cache = children.ChildCache()
    real_apply = kube.apply

    def apply_then_deleted(manifest, manager="zt-relay-operator"):
        obj = real_apply(manifest, manager)
        del objects[manifest["kind"]]
        cache.drop(manifest["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])  # DELETED event
        return obj

    monkeypatch.setattr(kube, "apply", apply_then_deleted)
    access = children.Access(cache, resolver=lambda host: [])
    manifest = reconcile._manifests(relay_body(), SETTINGS, [], None)["PodDisruptionBudget"]
    access.apply(manifest)
    assert cache.get("PodDisruptionBudget", "relays", "edge") is None


async def test_after_a_relist_a_steady_relay_again_costs_no_api_request(cluster, monkeypatch):
    # e0ae4e1 drops a relay's cached children on every relist of the relay (each operator
    # start, each 410 of the relay watch). The children are then read with GETs, but a GET's
    # answer never goes back into the cache, and a steady child sends no watch event: from
    # then on every pass of every relay (each resync, each status event) costs one GET per
    # child, for ever. 200 relays: 600 GETs per resync round, plus those of status events.
    import asyncio

    from zt_operator import runner

    objects, applied = cluster
    body = relay_body()
    objects.update(live_children(body))
    gets: list[str] = []
    real_get = kube.get
    monkeypatch.setattr(kube, "get", lambda kind, ns, name: (gets.append(kind), real_get(kind, ns, name))[1])
    cache = children.ChildCache()
    for kind, obj in objects.items():
        cache.put(kind, copy.deepcopy(obj))  # the child watches listed first
    monkeypatch.setattr(handlers, "CACHE", cache)
    monkeypatch.setattr(handlers, "ACCESS", children.Access(cache, resolver=lambda host: []))
    monkeypatch.setattr(handlers, "SETTINGS", SETTINGS)
    monkeypatch.setattr(handlers, "_relays", {})
    monkeypatch.setattr(handlers, "_applied_generation", {})
    monkeypatch.setattr(kube, "patch_relay_status", lambda *a: None)
    monkeypatch.setattr(kube, "post_event", lambda *a: None)
    monkeypatch.setattr(kube, "scale_relay", lambda *a: None)
    passes: list[bool] = []

    async def counted(key):
        passes.append(await handlers._work(key))
        return passes[-1]

    async def passes_done(count):
        for _ in range(500):  # the pass itself, not a guess at how long it takes
            if len(passes) >= count:
                return True
            await asyncio.sleep(0.01)
        return False

    work_runner = runner.Runner(counted)
    monkeypatch.setattr(handlers, "_runner", work_runner)
    import logging
    await handlers.relay_event(type=None, body=body, logger=logging.getLogger("test"))  # the relay's (re)list
    assert await passes_done(1), "the relist's pass never ended"
    assert gets  # the dropped children were read again, once
    gets.clear()
    work_runner.request("relays/edge")  # the periodic resync
    assert await passes_done(2), "the resync's pass never ended"
    await work_runner.close()
    assert gets == []


def test_a_child_is_read_again_once_its_last_confirmation_is_older_than_the_resync_interval(cluster, monkeypatch):
    objects, applied = cluster
    objects.update(live_children(relay_body()))
    now = [1000.0]
    gets: list[str] = []
    real_get = kube.get
    monkeypatch.setattr(kube, "get", lambda kind, ns, name: (gets.append(kind), real_get(kind, ns, name))[1])
    access = children.Access(children.ChildCache(verify_seconds=300, clock=lambda: now[0]), resolver=lambda host: [])
    assert access.live("Deployment", "relays", "edge") is not None
    assert access.live("Deployment", "relays", "edge") is not None
    assert gets == ["Deployment"]  # the GET's answer is cached
    now[0] += 301
    del objects["Deployment"]
    assert access.live("Deployment", "relays", "edge") is None  # verified again: gone
    assert gets == ["Deployment", "Deployment"]
