"""A relay deleted while the relays' watch was away (a 410 after an API server restart: Kopf
relists, and a relist sends no DELETED event for what is gone) must not live on in the
operator: garbage collection deletes its children, and every pass of the ghost re-created
them (a new load balancer each time) with an ownerReference to the gone relay, which
garbage collection deleted again: a loop driven by the children's own DELETED events."""

from __future__ import annotations

import copy
import logging

from tests.zt_operator.conftest import relay_body
from tests.zt_operator.test_handlers import settle, wired  # noqa: F401 (fixture)
from tests.zt_operator.test_reconcile import FakeAccess, run
from zt_operator import handlers

LOG = logging.getLogger("test")


def test_a_pass_creates_no_child_for_a_relay_the_api_server_no_longer_has():
    access = FakeAccess()
    access.relay_gone = True
    outcome = run(relay_body(), access)
    assert [c for c in access.calls if c[0] == "apply"] == []
    assert outcome.gone and outcome.status_patch == {} and outcome.events == []


def test_a_relay_recreated_under_its_name_is_not_the_one_a_stale_pass_holds():
    access = FakeAccess()
    access.relay_uid = "another-uid"  # deleted and created again; the new one's event follows
    outcome = run(relay_body(), access)
    assert [c for c in access.calls if c[0] == "apply"] == [] and outcome.gone


def test_a_relay_that_exists_gets_its_missing_children_after_one_look_at_it():
    access = FakeAccess()
    outcome = run(relay_body(), access)
    assert [c[1] for c in access.calls if c[0] == "apply"] == ["Service", "Deployment", "PodDisruptionBudget"]
    assert [c for c in access.calls if c[0] == "relay"] == [("relay",)]  # one GET, not one per child
    assert not outcome.gone
    access.calls.clear()
    run(relay_body(), access)  # children there: no need to look
    assert [c for c in access.calls if c[0] == "relay"] == []


async def test_a_relay_deleted_while_its_watch_was_away_is_forgotten_not_recreated(wired):
    access, written = wired
    await handlers.relay_event(type=None, body=relay_body(), logger=LOG)
    assert await settle(lambda: any(w[0] == "status" for w in written))
    # Deleted in the gap: no DELETED event; garbage collection takes its children.
    access.relay_gone = True
    deployment = copy.deepcopy(access.objects["Deployment"])
    access.objects.clear()
    access.calls.clear()
    await handlers._child_event("Deployment")(type="DELETED", body=deployment)
    await settle(lambda: "relays/edge" not in handlers._relays or any(c[0] == "apply" for c in access.calls))
    assert [c for c in access.calls if c[0] == "apply"] == [], "children re-created for a gone relay"
    assert await settle(lambda: "relays/edge" not in handlers._relays), "the gone relay is still handled"
    assert handlers._runner.keys() == []
    await handlers._runner.close()


def test_access_counts_a_relay_being_deleted_or_of_another_uid_as_gone(monkeypatch):
    from zt_operator import children, kube

    live = {"metadata": {"name": "edge", "namespace": "relays", "uid": "u1"}}
    monkeypatch.setattr(kube, "get_relay", lambda namespace, name: copy.deepcopy(live) if live else None)
    access = children.Access(children.ChildCache(), resolver=lambda host: [])
    assert access.relay_exists("relays", "edge", "u1")
    assert not access.relay_exists("relays", "edge", "u0")  # re-created under the name
    live["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"  # foreground deletion under way
    assert not access.relay_exists("relays", "edge", "u1")
    live.clear()
    assert not access.relay_exists("relays", "edge", "u1")


def test_a_failed_look_at_the_relay_creates_nothing_and_is_an_error_retried():
    from zt_operator import kube

    access = FakeAccess(fail={("get", "ZeroTierRelay"): kube.KubeError("reading ZeroTierRelay edge: timed out", "Timeout")})
    outcome = run(relay_body(), access)
    assert [c for c in access.calls if c[0] == "apply"] == []
    assert [c for c in access.calls if c[0] == "relay"] == [("relay",)]  # asked once, not per child
    assert not outcome.gone and outcome.result == "error" and [e.reason for e in outcome.errors] == ["Timeout"]


async def test_a_gone_relay_with_nothing_to_create_is_forgotten_at_its_status_write(wired, monkeypatch):
    # An invalid spec creates nothing, so no GET of the relay: its status write finds it gone
    # (404), and that pass posts no Events (the stored status never changes: each retry
    # would post the same ones again to a relay that no longer exists).
    from zt_operator import kube

    access, written = wired
    body = relay_body({"fallback": {"service": "edge", "port": 443}})  # its own Service: InvalidSpec
    await handlers.relay_event(type=None, body=body, logger=LOG)
    assert await settle(lambda: any(w[0] == "status" for w in written))
    written.clear()

    def not_found(namespace, name, status):
        raise kube.KubeError(f"writing the status of ZeroTierRelay {name}: 404 not found", "NotFound", 404)

    monkeypatch.setattr(kube, "patch_relay_status", not_found)
    stale = copy.deepcopy(body)  # as the relist left it: without the status the pass wrote
    await handlers.relay_event(type=None, body=stale, logger=LOG)
    assert await settle(lambda: "relays/edge" not in handlers._relays), "the gone relay is still handled"
    assert [w for w in written if w[0] == "event"] == []
    await handlers._runner.close()


def test_the_relay_is_read_with_one_get_of_its_own_path_and_a_missing_one_is_none(monkeypatch):
    from tests.zt_operator.fakeapi import FakeApi
    from zt_operator import kube

    server = FakeApi().start()
    try:
        monkeypatch.setattr(kube, "_api", server.api_client())
        path = "/apis/relay.zt-relay.dev/v1alpha1/namespaces/relays/zerotierrelays/edge"
        assert kube.get_relay("relays", "edge") is None
        server.objects[path] = relay_body()
        assert kube.get_relay("relays", "edge")["metadata"]["uid"] == relay_body()["metadata"]["uid"]
        assert server.paths("GET") == [path, path]
    finally:
        server.stop()
