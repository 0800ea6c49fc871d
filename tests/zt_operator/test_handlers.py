"""The Kopf wiring with a fake cluster: events in, reconciles, status and Events out."""

from __future__ import annotations

import asyncio
import copy
import logging

import pytest

from tests.zt_operator.conftest import relay_body
from tests.zt_operator.test_reconcile import FakeAccess
from zt_operator import OLD_FINALIZER, handlers, kube, reconcile, runner

LOG = logging.getLogger("test")


@pytest.fixture
def wired(monkeypatch):
    access = FakeAccess()
    written: list[tuple] = []
    monkeypatch.setattr(handlers, "ACCESS", access)
    monkeypatch.setattr(handlers, "_relays", {})
    monkeypatch.setattr(handlers, "_applied_generation", {})
    monkeypatch.setattr(handlers, "_rechecks", {})
    monkeypatch.setattr(kube, "patch_relay_status", lambda ns, name, status: written.append(("status", name, status)))
    monkeypatch.setattr(kube, "post_event", lambda body, kind, reason, message, now: written.append(("event", reason)))
    monkeypatch.setattr(kube, "remove_finalizer", lambda ns, name, finalizers, finalizer: written.append(("unfinalize", name, finalizer)))
    work_runner = runner.Runner(handlers._work)
    monkeypatch.setattr(handlers, "_runner", work_runner)
    return access, written


async def settle(condition, rounds=200):
    for _ in range(rounds):
        if condition():
            return True
        await asyncio.sleep(0.01)
    return False


def counting_runner(monkeypatch, backoff) -> list[bool]:
    """A runner of handlers._work retrying after `backoff(failures)`: its passes' results."""
    done: list[bool] = []

    async def counted(key):
        ok = await handlers._work(key)
        done.append(ok)
        return ok

    monkeypatch.setattr(handlers, "_runner", runner.Runner(counted, backoff=backoff))
    return done


def held_rechecks(monkeypatch) -> list[tuple[float, asyncio.TimerHandle]]:
    """(delay asked, handle) of each recheck of relays/edge from now on, held an hour (never
    due during a test); other timers (asyncio.sleep, the relist timer) run as asked."""
    loop = asyncio.get_running_loop()
    held: list[tuple[float, asyncio.TimerHandle]] = []
    real_call_later = loop.call_later

    def call_later(delay, callback, *args, **kwargs):
        if args != ("relays/edge",):
            return real_call_later(delay, callback, *args, **kwargs)
        handle = real_call_later(3600, callback, *args, **kwargs)
        held.append((delay, handle))
        return handle

    monkeypatch.setattr(loop, "call_later", call_later)
    return held


async def test_a_relay_event_reconciles_it_and_writes_its_status(wired):
    access, written = wired
    await handlers.relay_event(type=None, body=relay_body(), logger=LOG)
    assert await settle(lambda: any(w[0] == "status" for w in written))
    assert {c[1] for c in access.calls if c[0] == "apply"} == {"Service", "Deployment", "PodDisruptionBudget"}
    await handlers._runner.close()


async def test_the_old_finalizer_is_removed_and_no_new_one_added(wired):
    access, written = wired
    body = relay_body()
    body["metadata"]["finalizers"] = [OLD_FINALIZER]
    await handlers.relay_event(type="MODIFIED", body=body, logger=LOG)
    assert ("unfinalize", "edge", OLD_FINALIZER) in written
    await handlers._runner.close()


async def test_a_deleted_relay_is_forgotten(wired):
    access, written = wired
    await handlers.relay_event(type=None, body=relay_body(), logger=LOG)
    await handlers.relay_event(type="DELETED", body=relay_body(), logger=LOG)
    assert handlers._relays == {} and handlers._runner.keys() == []
    await handlers._runner.close()


async def test_a_child_event_reconciles_its_owner(wired):
    access, written = wired
    await handlers.relay_event(type=None, body=relay_body(), logger=LOG)
    assert await settle(lambda: any(w[0] == "status" for w in written))
    access.calls.clear()
    deployment = dict(access.objects["Deployment"])
    deployment["metadata"] = {**deployment["metadata"], "resourceVersion": "5"}
    await handlers._child_event("Deployment")(type="MODIFIED", body=deployment)
    assert await settle(lambda: any(c[0] == "get" for c in access.calls))
    await handlers._runner.close()


async def test_a_failed_call_is_counted_and_retried(wired, monkeypatch):
    access, written = wired
    access.fail[("apply", "Service")] = kube.KubeError("applying Service edge: refused", "Unreachable")
    await handlers.relay_event(type=None, body=relay_body(), logger=LOG)
    assert await settle(lambda: 'zt_operator_api_errors_total{reason="Unreachable"}' in handlers.METRICS.render())
    del access.fail[("apply", "Service")]
    access.calls.clear()
    # Nothing else happens; the retry after the first backoff (1 s) applies the Service.
    assert await settle(lambda: ("apply", "Service", "zt-relay-operator") in access.calls, rounds=300)
    await handlers._runner.close()


async def test_a_relisted_relay_reads_its_children_afresh(wired):
    # After a watch outage (API server restart), a child deleted meanwhile sends no DELETED
    # event: the relist of the relay must not trust the cached copy.
    access, written = wired
    await handlers.relay_event(type=None, body=relay_body(), logger=LOG)
    assert await settle(lambda: any(w[0] == "status" for w in written))
    handlers.CACHE.put("PodDisruptionBudget", {"metadata": {"name": "edge", "namespace": "relays", "resourceVersion": "1"}})
    await handlers.relay_event(type=None, body=relay_body(), logger=LOG)
    assert handlers.CACHE.get("PodDisruptionBudget", "relays", "edge") is None
    await handlers._runner.close()


async def test_a_short_relay_has_one_recheck_pending_however_many_passes_ran(wired, monkeypatch):
    # Every pass of a relay short of ready pods asks to look again later. A child event's
    # pass (a rollout sends several) must not start a second chain of rechecks next to the
    # first: each chain renews itself while the relay is short, so they added up to a pass
    # (and a pod LIST) per event every few seconds, for as long as a pod crash-loops.
    access, written = wired
    scheduled = held_rechecks(monkeypatch)
    await handlers.relay_event(type=None, body=relay_body(), logger=LOG)
    assert await settle(lambda: any(w[0] == "status" for w in written))
    deployment = access.objects["Deployment"]
    replicas = deployment["spec"]["replicas"]
    deployment["status"] = {"replicas": replicas, "readyReplicas": 0}
    for version in range(5):
        passes = len(scheduled)
        deployment["metadata"] = {**deployment["metadata"], "resourceVersion": str(10 + version)}
        await handlers._child_event("Deployment")(type="MODIFIED", body=copy.deepcopy(deployment))
        assert await settle(lambda: len(scheduled) > passes)
    pending = [h for _, h in scheduled if not h.cancelled()]
    assert len(scheduled) >= 5 and len(pending) == 1, (len(scheduled), len(pending))
    # Ready again: nothing more to look at.
    deployment["status"] = {"replicas": replicas, "readyReplicas": replicas, "updatedReplicas": replicas}
    deployment["metadata"] = {**deployment["metadata"], "resourceVersion": "20"}
    await handlers.relay_event(type="MODIFIED", body=relay_body(), logger=LOG)
    assert await settle(lambda: all(h.cancelled() for _, h in scheduled))
    # A deleted relay leaves no recheck behind either.
    deployment["status"] = {"replicas": replicas, "readyReplicas": 0}
    deployment["metadata"] = {**deployment["metadata"], "resourceVersion": "21"}
    passes = len(scheduled)
    await handlers._child_event("Deployment")(type="MODIFIED", body=copy.deepcopy(deployment))
    assert await settle(lambda: len(scheduled) > passes)
    await handlers.relay_event(type="DELETED", body=relay_body(), logger=LOG)
    assert all(h.cancelled() for _, h in scheduled)
    await handlers._runner.close()


async def test_an_api_outage_keeps_the_runners_backoff_the_recheck_does_not_cut_it(wired, monkeypatch):
    # A relay short of ready pods is looked at again after 2 or 10 s. During an API outage
    # its passes fail, and the runner retries them after a backoff that grows to 60 s: a
    # recheck set by the failed pass would end that wait (it requests a pass) every 10 s.
    access, written = wired
    backoffs: list[int] = []

    def backoff(failures):
        backoffs.append(failures)
        return 3600  # never due during the test: only a request ends the wait

    done = counting_runner(monkeypatch, backoff)
    await handlers.relay_event(type=None, body=relay_body(), logger=LOG)
    assert await settle(lambda: done == [True])
    deployment = access.objects["Deployment"]
    deployment["status"] = {"replicas": deployment["spec"]["replicas"], "readyReplicas": 0}
    access.fail[("list", "Pod")] = kube.KubeError(
        "listing relay pods: API server unreachable: [Errno 111] Connection refused", "Unreachable")
    deployment["metadata"] = {**deployment["metadata"], "resourceVersion": "30"}
    await handlers._child_event("Deployment")(type="MODIFIED", body=copy.deepcopy(deployment))
    assert await settle(lambda: done == [True, False] and backoffs == [1])
    # The failed pass left no recheck: the runner's backoff alone says when to try again.
    assert "relays/edge" not in handlers._rechecks, handlers._rechecks
    # The API is back: the next pass (an event) succeeds and the short relay is rechecked again.
    del access.fail[("list", "Pod")]
    deployment["metadata"] = {**deployment["metadata"], "resourceVersion": "31"}
    await handlers._child_event("Deployment")(type="MODIFIED", body=copy.deepcopy(deployment))
    assert await settle(lambda: done == [True, False, True] and "relays/edge" in handlers._rechecks)
    await handlers._runner.close()
    handlers._forget_recheck("relays/edge")


@pytest.mark.parametrize("refusal", [
    kube.KubeError('applying PodDisruptionBudget edge: 400 admission webhook "deny.example.com" denied the request', "APIError", 400),
    kube.KubeError('applying PodDisruptionBudget edge: 500 Internal error occurred: failed calling webhook "deny.example.com"',
                   "WebhookFailed", 500),
], ids=["denied", "webhook-down"])
async def test_a_child_refused_for_good_keeps_a_short_relays_recheck(wired, monkeypatch, refusal):
    # A denying admission webhook refuses the PDB on every pass: the API answers, so the
    # runner's backoff (up to 60 s) is no reason to look less often at why the pods are not
    # ready; the recheck (2 or 10 s) stays, as when no call fails.
    access, written = wired
    done = counting_runner(monkeypatch, lambda failures: 3600)  # only a request ends the wait
    rechecks = held_rechecks(monkeypatch)
    await handlers.relay_event(type=None, body=relay_body(), logger=LOG)
    assert await settle(lambda: done == [True])
    deployment = access.objects["Deployment"]
    deployment["status"] = {"replicas": deployment["spec"]["replicas"], "readyReplicas": 0}
    access.fail[("apply", "PodDisruptionBudget")] = refusal
    access.objects.pop("PodDisruptionBudget", None)  # refused from the start: it was never made
    deployment["metadata"] = {**deployment["metadata"], "resourceVersion": "40"}
    await handlers._child_event("Deployment")(type="MODIFIED", body=copy.deepcopy(deployment))
    assert await settle(lambda: done == [True, False])
    assert "relays/edge" in handlers._rechecks, "a failed pass whose calls were answered left no recheck"
    assert rechecks[-1][0] in (reconcile.RECHECK_SOON_SECONDS, reconcile.RECHECK_SECONDS)
    await handlers._runner.close()
    handlers._forget_recheck("relays/edge")


async def test_a_relay_deleted_during_its_pass_leaves_no_readiness_sample_or_applied_generation(wired, monkeypatch):
    # `kubectl delete ztr` while a pass of the relay runs in its thread (a short relay passes
    # every 2-10 s): the DELETED event forgets the relay at once, and the pass ending after it
    # must not put it back: the readiness gauge would count a relay that no longer exists
    # (zt_operator_relays{ready="false"} 1 until the operator restarts) and its applied
    # generation would stay in memory for good.
    import threading

    access, written = wired
    fresh = handlers.metrics.Metrics()
    monkeypatch.setattr(handlers, "METRICS", fresh)
    entered, release = threading.Event(), threading.Event()
    live = access.live

    def held_live(kind, namespace, name, cached_only=False):
        if kind == "Deployment":
            entered.set()
            release.wait(10)
        return live(kind, namespace, name, cached_only=cached_only)

    access.live = held_live
    await handlers.relay_event(type=None, body=relay_body(), logger=LOG)
    assert await asyncio.to_thread(entered.wait, 10), "the pass never started"
    await handlers.relay_event(type="DELETED", body=relay_body(), logger=LOG)
    release.set()
    # The forgotten relay's worker ends once its pass is back on the loop.
    assert await settle(lambda: not handlers._runner._retiring), "the pass never ended"
    assert any(w[0] == "status" for w in written)  # it did run to its end
    assert 'zt_operator_relays{ready="true"} 0' in fresh.render() and 'zt_operator_relays{ready="false"} 0' in fresh.render(), fresh.render()
    assert handlers._applied_generation == {}
    await handlers._runner.close()


async def test_a_short_relay_whose_status_write_is_refused_gets_no_recheck_reposting_its_events(wired, monkeypatch):
    # The status subresource refused by an answer (a Role without zerotierrelays/status, a
    # policy denying it): the relay's stored status never changes, so every pass finds the
    # same transitions and posts their Warning Events again. A recheck (every 2 s while a pod
    # is young, then 10 s) would post them that often for as long as it lasts; the runner's
    # backoff (up to 60 s) is the pace of a pass whose refresh can't be written anyway.
    access, written = wired
    done = counting_runner(monkeypatch, lambda failures: 3600)  # only a request ends the wait
    held_rechecks(monkeypatch)
    await handlers.relay_event(type=None, body=relay_body(), logger=LOG)
    assert await settle(lambda: done == [True])
    deployment = access.objects["Deployment"]
    replicas = deployment["spec"]["replicas"]
    deployment["status"] = {"replicas": replicas, "readyReplicas": replicas, "updatedReplicas": replicas}
    deployment["metadata"] = {**deployment["metadata"], "resourceVersion": "30"}
    await handlers._child_event("Deployment")(type="MODIFIED", body=copy.deepcopy(deployment))
    assert await settle(lambda: done == [True, True])  # Ready, written

    def refused(namespace, name, status):
        raise kube.KubeError(f"writing the status of ZeroTierRelay {name}: 403 forbidden", "Forbidden", 403)

    monkeypatch.setattr(kube, "patch_relay_status", refused)
    deployment["status"] = {"replicas": replicas, "readyReplicas": 0}
    deployment["metadata"] = {**deployment["metadata"], "resourceVersion": "40"}
    posted = len([w for w in written if w[0] == "event"])
    await handlers._child_event("Deployment")(type="MODIFIED", body=copy.deepcopy(deployment))
    assert await settle(lambda: done == [True, True, False])
    assert len([w for w in written if w[0] == "event"]) > posted  # the transition's Events, once
    assert "relays/edge" not in handlers._rechecks, "a pass whose status write was refused set a recheck"
    await handlers._runner.close()
    handlers._forget_recheck("relays/edge")
