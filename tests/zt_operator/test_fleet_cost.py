"""Fleet scale (issue 14): what a steady fleet costs the API server per resync interval.

The cache of children must be confirmed now and then (a child deleted while its watch was
away sends no DELETED event). One GET per child per interval made 200 steady relays cost
about 2.7 requests/s (4 children each, every 300 s): over the <= 2 requests/s budget. A
LIST per child kind and namespace confirms them all at once.
"""

from __future__ import annotations

import copy

import pytest

from tests.zt_operator.conftest import IMAGE, relay_body
from tests.zt_operator.test_child_cache import live_children
from zt_operator import children, handlers, kube
from zt_operator.settings import OperatorSettings

SETTINGS = OperatorSettings(relay_image=IMAGE, resync_seconds=300.0)
RELAYS = 50


@pytest.fixture
def fleet(monkeypatch):
    """RELAYS steady relays in namespace "relays", their children live and cached as the
    passes that created them left them; kube calls counted by verb."""
    now = [1000.0]
    objects: dict[tuple[str, str, str], dict] = {}
    bodies = {}
    for i in range(RELAYS):
        body = relay_body(name=f"r{i:03d}")
        body["metadata"]["uid"] = f"uid-{i}"
        bodies[f"relays/r{i:03d}"] = body
        for kind, obj in live_children(body).items():
            obj["metadata"]["ownerReferences"][0]["uid"] = f"uid-{i}"
            objects[kind, "relays", obj["metadata"]["name"]] = obj
    calls: list[str] = []

    def get(kind, namespace, name):
        calls.append(f"get {kind}")
        return copy.deepcopy(objects.get((kind, namespace, name)))

    def list_children(kind, namespace, selector, restarted=None):
        calls.append(f"list {kind}")
        return [copy.deepcopy(o) for (k, ns, _), o in objects.items() if k == kind and ns == namespace]

    def fail(*args, **kwargs):
        calls.append("write")
        raise AssertionError(f"a steady relay was written: {args}")

    monkeypatch.setattr(kube, "get", get)
    monkeypatch.setattr(kube, "list_children", list_children, raising=False)
    for name in ("apply", "delete", "patch_relay_status", "post_event", "scale_relay", "replace_service_ports"):
        monkeypatch.setattr(kube, name, fail)
    cache = children.ChildCache(verify_seconds=handlers.verify_seconds(SETTINGS), clock=lambda: now[0])
    for (kind, _, _), obj in objects.items():
        cache.answer(children.key_of(kind, obj), copy.deepcopy(obj), 0)  # the applies that created them
    monkeypatch.setattr(handlers, "CACHE", cache)
    monkeypatch.setattr(handlers, "ACCESS", children.Access(cache, resolver=lambda host: []))
    monkeypatch.setattr(handlers, "SETTINGS", SETTINGS)
    monkeypatch.setattr(handlers, "_relays", bodies)
    monkeypatch.setattr(handlers, "_applied_generation", {})
    return now, objects, bodies, calls


def steady_status(body):
    """The status a first pass writes (so later passes find nothing to write)."""
    outcome = handlers.reconcile.run(body, SETTINGS, lambda: "2026-01-01T00:00:00Z", handlers.ACCESS)
    body["status"] = {k: v for k, v in outcome.status_patch.items() if v is not None}


def test_a_steady_fleet_costs_a_list_per_child_kind_per_resync_interval_not_a_get_per_child(fleet):
    now, objects, bodies, calls = fleet
    for body in bodies.values():
        steady_status(body)
    calls.clear()
    for _ in range(3):  # three resync intervals: every relay's pass, and the child relist
        now[0] += SETTINGS.resync_seconds
        handlers.relist_children()
        for key, body in bodies.items():
            handlers._reconcile_blocking(key, copy.deepcopy(body))
    assert "write" not in calls
    assert [c for c in calls if c.startswith("get")] == []
    assert sorted(calls) == sorted(f"list {kind}" for kind in handlers.reconcile.CHILD_KINDS for _ in range(3))


def test_the_relist_finds_a_child_deleted_while_its_watch_was_away_and_names_its_relay(fleet):
    now, objects, bodies, calls = fleet
    del objects["PodDisruptionBudget", "relays", "r007"]  # no DELETED event reached the cache
    assert handlers.relist_children() == {"relays/r007"}
    assert handlers.CACHE.get("PodDisruptionBudget", "relays", "r007") is None
    assert handlers.CACHE.get("PodDisruptionBudget", "relays", "r008") is not None


def test_a_child_the_watch_changed_while_the_list_was_in_flight_keeps_the_watchs_version():
    cache = children.ChildCache()
    pdb = live_children(relay_body())["PodDisruptionBudget"]
    cache.put("PodDisruptionBudget", copy.deepcopy(pdb))
    mark = cache.mark()  # the LIST starts
    cache.drop("PodDisruptionBudget", "relays", "edge")  # a DELETED event while it is in flight
    assert cache.sync("PodDisruptionBudget", "relays", [copy.deepcopy(pdb)], mark) == set()
    assert cache.get("PodDisruptionBudget", "relays", "edge") is None  # not resurrected by the older LIST

    created = copy.deepcopy(pdb)
    created["metadata"].update(uid="new", resourceVersion="300")
    mark = cache.mark()
    cache.put("PodDisruptionBudget", created)  # an ADDED event while the next LIST is in flight
    assert cache.sync("PodDisruptionBudget", "relays", [], mark) == set()
    assert cache.get("PodDisruptionBudget", "relays", "edge")["metadata"]["uid"] == "new"


def test_a_failed_relist_leaves_the_cache_as_it_was_and_the_gets_take_over(fleet, monkeypatch):
    now, objects, bodies, calls = fleet

    def unreachable(kind, namespace, selector, restarted=None):
        raise kube.KubeError("listing: API server unreachable", "Unreachable")

    monkeypatch.setattr(kube, "list_children", unreachable)
    now[0] += 3 * SETTINGS.resync_seconds
    assert handlers.relist_children() == set()
    assert len(handlers.CACHE) == len(objects)
    assert not handlers.CACHE.verified("Deployment", "relays", "r000")  # so the next pass reads it again


async def test_a_watch_that_relists_is_followed_by_a_relist_that_finds_children_deleted_in_the_gap(fleet, monkeypatch):
    # After an API outage a watch may restart with a LIST (410 Gone): a child deleted before
    # that LIST sends no DELETED event, and the relay's own relist may have come before the
    # deletion. So any relist seen (type None events) is followed, once they stop, by the
    # operator's own LIST of every child kind.
    import asyncio

    now, objects, bodies, calls = fleet
    requested: list[str] = []

    class Recorder:
        def request(self, key):
            requested.append(key)

    monkeypatch.setattr(handlers, "_runner", Recorder())
    monkeypatch.setattr(handlers, "RELIST_DELAY", 0.05)
    deployment = copy.deepcopy(objects["Deployment", "relays", "r003"])
    del objects["PodDisruptionBudget", "relays", "r004"]  # deleted before the watch's LIST
    await handlers._child_event("Deployment")(type=None, body=deployment)  # the Deployments watch relisted
    requested.clear()
    for _ in range(100):
        if "relays/r004" in requested:
            break
        await asyncio.sleep(0.02)
    assert requested == ["relays/r004"]
    assert handlers.CACHE.get("PodDisruptionBudget", "relays", "r004") is None
    assert sorted(c for c in calls if c.startswith("list")) == sorted(f"list {k}" for k in handlers.reconcile.CHILD_KINDS)


NAMESPACES = 200


@pytest.fixture
def spread_fleet(monkeypatch):
    """NAMESPACES relays, one per namespace (a platform's team or site namespaces), their
    children live and cached; LISTs recorded with their namespace (None: all of them)."""
    objects: dict[tuple[str, str, str], dict] = {}
    bodies = {}
    for i in range(NAMESPACES):
        body = relay_body(name="edge", namespace=f"team-{i:03d}")
        body["metadata"]["uid"] = f"uid-{i}"
        bodies[f"team-{i:03d}/edge"] = body
        for kind, obj in live_children(body).items():
            obj["metadata"]["namespace"] = f"team-{i:03d}"
            objects[kind, f"team-{i:03d}", "edge"] = obj
    lists: list[tuple[str, str | None]] = []
    forbidden = {"cluster": False}

    def list_children(kind, namespace, selector, restarted=None):
        lists.append((kind, namespace))
        if namespace is None and forbidden["cluster"]:
            raise kube.KubeError(f"listing {kind}s: 403 forbidden at the cluster scope", "Forbidden", 403)
        return [copy.deepcopy(o) for (k, ns, _), o in objects.items() if k == kind and namespace in (None, ns)]

    monkeypatch.setattr(kube, "list_children", list_children)
    cache = children.ChildCache(verify_seconds=handlers.verify_seconds(SETTINGS))
    for (kind, _, _), obj in objects.items():
        cache.answer(children.key_of(kind, obj), copy.deepcopy(obj), 0)
    monkeypatch.setattr(handlers, "CACHE", cache)
    monkeypatch.setattr(handlers, "_relays", bodies)
    monkeypatch.setattr(handlers, "METRICS", handlers.metrics.Metrics())
    monkeypatch.setattr(handlers, "_cluster_lists_refused_at", None)
    return objects, lists, forbidden


def test_relays_spread_over_many_namespaces_cost_a_list_per_child_kind_not_per_namespace(spread_fleet):
    # One relay in each of 200 namespaces: a LIST per kind and namespace made 1000 LISTs per
    # resync interval (3.3 requests/s at 300 s: over the 2 requests/s budget, and more than
    # the GET per child it replaced). Cluster-wide (the operator's default) a LIST per kind
    # covers every namespace.
    objects, lists, _ = spread_fleet
    del objects["PodDisruptionBudget", "team-117", "edge"]  # deleted while the watch was away
    assert handlers.relist_children() == {"team-117/edge"}
    assert sorted(lists) == sorted((kind, None) for kind in handlers.reconcile.CHILD_KINDS)
    assert handlers.CACHE.get("PodDisruptionBudget", "team-117", "edge") is None
    assert handlers.CACHE.verified("Deployment", "team-042", "edge")


def test_an_operator_limited_to_its_namespaces_lists_each_of_them_once_refused_at_the_cluster_scope(spread_fleet):
    # Namespaced mode (chart: operator.watchNamespaces): Roles only, so the cluster-wide
    # LIST is refused; the operator falls back to its namespaces, remembers it (one refusal
    # per process, not one per interval), and counts no error.
    objects, lists, forbidden = spread_fleet
    forbidden["cluster"] = True
    del objects["Service", "team-003", "edge"]
    assert handlers.relist_children() == {"team-003/edge"}
    lists.clear()
    assert handlers.relist_children() == set()
    assert sorted(lists) == sorted((kind, f"team-{i:03d}") for kind in handlers.reconcile.CHILD_KINDS
                                   for i in range(NAMESPACES))
    assert "Forbidden" not in handlers.METRICS.render()


def test_a_list_in_every_namespace_uses_the_kinds_all_namespaces_call(monkeypatch):
    # namespace None: the dynamic client's cluster-wide path (/apis/policy/v1/poddisruptionbudgets;
    # the request itself is checked against a fake API server in test_list_pages.py).
    import io

    import urllib3

    seen = []

    def child_call(kind, verb, **kwargs):
        seen.append((kind, verb, kwargs["namespace"], kwargs["label_selector"]))
        body = b'{"apiVersion": "policy/v1", "items": [{"metadata": {"name": "edge", "namespace": "a"}}]}'
        return urllib3.HTTPResponse(body=io.BytesIO(body), status=200, preload_content=False)

    monkeypatch.setattr(kube, "_child_call", child_call)
    (found,) = kube.list_children("PodDisruptionBudget", None, "app.kubernetes.io/managed-by=x")
    assert seen == [("PodDisruptionBudget", "get", None, "app.kubernetes.io/managed-by=x")]
    assert found["kind"] == "PodDisruptionBudget" and found["metadata"]["namespace"] == "a"


def test_the_relist_names_the_relay_of_a_child_modified_while_its_watch_was_away(fleet):
    # A child edited (not deleted) while its watch was away sent no MODIFIED event: the
    # relist sees its newer version, and its relay is reconciled now (repairing the edit),
    # not at its next resync pass up to an interval later.
    now, objects, bodies, calls = fleet
    edited = objects["Deployment", "relays", "r012"]
    edited["metadata"]["resourceVersion"] = "900"
    edited["spec"]["template"]["spec"]["containers"][0]["image"] = "attacker/relay:evil"
    assert handlers.relist_children() == {"relays/r012"}
    assert handlers.CACHE.get("Deployment", "relays", "r012")["metadata"]["resourceVersion"] == "900"
    assert handlers.relist_children() == set()  # seen once: nothing new the next time
