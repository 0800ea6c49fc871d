"""One reconcile pass against a fake cluster: what is written, what is left alone, what
the status says when calls fail."""

from __future__ import annotations

import copy

import pytest

from tests.zt_operator.conftest import IMAGE, relay_body
from zt_operator import FIELD_MANAGER, builders, kube, plan, reconcile
from zt_operator.settings import OperatorSettings

SETTINGS = OperatorSettings(relay_image=IMAGE)
NOW = "2026-01-01T00:00:00Z"


class FakeAccess:
    """A cluster in a dict; ``fail`` maps (verb, kind) to the KubeError that call raises."""

    def __init__(self, objects=None, fail=None):
        self.objects = {k: copy.deepcopy(v) for k, v in (objects or {}).items()}
        self.fail = fail or {}
        self.calls: list[tuple] = []
        self.relay_gone = False
        self.relay_uid: str | None = None  # None: the uid of the body passed

    def _maybe_fail(self, verb, kind):
        error = self.fail.get((verb, kind))
        if error is not None:
            raise error

    def live(self, kind, namespace, name, cached_only=False):
        self.calls.append(("get", kind, cached_only))
        self._maybe_fail("get", kind)
        return copy.deepcopy(self.objects.get(kind))

    def apply(self, manifest, manager=FIELD_MANAGER):
        self.calls.append(("apply", manifest["kind"], manager))
        self._maybe_fail("apply", manifest["kind"])
        obj = copy.deepcopy(self.objects.get(manifest["kind"]) or {})
        for key, value in manifest.items():
            obj[key] = {**obj.get(key, {}), **value} if isinstance(value, dict) else value
        obj.setdefault("status", {})
        self.objects[manifest["kind"]] = obj
        return copy.deepcopy(obj)

    def delete(self, kind, namespace, name):
        self.calls.append(("delete", kind))
        self.objects.pop(kind, None)

    def replace_service_ports(self, namespace, name, ports):
        self.calls.append(("ports", "Service"))

    def list_pods(self, namespace, selector):
        self.calls.append(("list", "Pod"))
        self._maybe_fail("list", "Pod")
        return []

    def scale_relay(self, namespace, name, replicas, resource_version=None):
        self.calls.append(("scale", "ZeroTierRelay", replicas))

    def resolve(self, hostname):
        return []

    def relay_exists(self, namespace, name, uid):
        self.calls.append(("relay",))
        self._maybe_fail("get", "ZeroTierRelay")
        return not self.relay_gone and self.relay_uid in (None, uid)


def run(body, access):
    return reconcile.run(body, SETTINGS, lambda: NOW, access)


def conditions(outcome):
    return {c["type"]: (c["status"], c["reason"]) for c in outcome.status_patch["conditions"]}


def test_a_new_relay_gets_every_child_applied():
    access = FakeAccess()
    outcome = run(relay_body(), access)
    assert [c[1] for c in access.calls if c[0] == "apply"] == ["Service", "Deployment", "PodDisruptionBudget"]
    assert outcome.result == "ok"


def test_a_foreign_object_with_a_childs_name_is_left_untouched_and_reported_as_a_conflict():
    foreign = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "edge", "namespace": "relays"},
               "spec": {"type": "ClusterIP", "ports": [{"port": 80}]}}
    access = FakeAccess({"Service": foreign})
    outcome = run(relay_body(), access)
    assert ("apply", "Service", FIELD_MANAGER) not in access.calls
    assert ("ports", "Service") not in access.calls
    assert access.objects["Service"] == foreign
    assert conditions(outcome)["Conflict"] == ("True", "NameInUse")
    assert conditions(outcome)["Degraded"] == ("True", "Conflict")
    assert outcome.result == "conflict"
    # The other children are still reconciled.
    assert ("apply", "Deployment", FIELD_MANAGER) in access.calls


def test_a_foreign_autoscaler_is_not_deleted_when_autoscaling_is_off():
    foreign = {"kind": "HorizontalPodAutoscaler", "metadata": {"name": "edge", "namespace": "relays"}, "spec": {}}
    access = FakeAccess({"HorizontalPodAutoscaler": foreign})
    run(relay_body(), access)
    assert ("delete", "HorizontalPodAutoscaler") not in access.calls


@pytest.mark.parametrize("error", [
    kube.KubeError("applying Service edge: API server unreachable: [Errno 111] Connection refused", "Unreachable"),
    kube.KubeError("applying Service edge: timed out", "Timeout"),
    kube.KubeError("applying Service edge: 429 Too many requests", "TooManyRequests", 429),
    kube.KubeError("applying Service edge: 503 unavailable", "APIServerError", 503),
], ids=["unreachable", "timeout", "429", "503"])
def test_a_failed_call_degrades_with_its_reason_and_the_other_children_are_still_applied(error):
    access = FakeAccess(fail={("apply", "Service"): error})
    outcome = run(relay_body(), access)
    assert conditions(outcome)["Degraded"] == ("True", error.reason)
    assert outcome.result == "error" and outcome.errors == [error]
    assert {"Deployment", "PodDisruptionBudget"} <= {c[1] for c in access.calls if c[0] == "apply"}
    assert ("Warning", error.reason) in [(kind, reason) for kind, reason, _ in outcome.events]


def test_children_already_as_built_cost_no_apply():
    access = FakeAccess()
    first = run(relay_body(), access)
    body = relay_body(**{k: v for k, v in first.status_patch.items()})
    access.calls.clear()
    again = run(body, access)
    assert [c for c in access.calls if c[0] == "apply"] == []
    assert again.status_patch == {}


def test_switching_autoscaling_on_hands_replicas_over_before_the_apply_drops_them():
    deployment = builders.deployment(relay_body({"replicas": 3}), default_image=IMAGE, default_pull_policy="IfNotPresent")
    deployment["metadata"]["managedFields"] = [{"manager": FIELD_MANAGER, "operation": "Apply",
                                                "fieldsV1": {"f:spec": {"f:replicas": {}}}}]
    access = FakeAccess({"Deployment": deployment})
    # With a template change too, so the Deployment needs an apply.
    run(relay_body({"autoscaling": {"enabled": True, "minReplicas": 2}, "image": "zt-relay:new"}), access)
    applies = [c for c in access.calls if c[0] == "apply"]
    handover = applies.index(("apply", "Deployment", plan.HANDOVER_MANAGER))
    assert handover < applies.index(("apply", "Deployment", FIELD_MANAGER))


def test_a_failed_handover_keeps_the_deployment_as_it_is():
    deployment = builders.deployment(relay_body({"replicas": 3}), default_image=IMAGE, default_pull_policy="IfNotPresent")
    deployment["metadata"]["managedFields"] = [{"manager": FIELD_MANAGER, "fieldsV1": {"f:spec": {"f:replicas": {}}}}]
    access = FakeAccess({"Deployment": deployment}, fail={("apply", "Deployment"): kube.KubeError("x", "Timeout")})
    run(relay_body({"autoscaling": {"enabled": True}, "image": "zt-relay:new"}), access)
    assert ("apply", "Deployment", FIELD_MANAGER) not in access.calls


def test_under_an_autoscaler_the_relay_follows_the_running_replicas():
    deployment = builders.deployment(relay_body(), default_image=IMAGE, default_pull_policy="IfNotPresent")
    deployment["spec"]["replicas"] = 6
    access = FakeAccess({"Deployment": deployment})
    run(relay_body({"autoscaling": {"enabled": True}, "replicas": 2}), access)
    assert ("scale", "ZeroTierRelay", 6) in access.calls


def test_the_outcome_says_whether_the_relay_is_ready_even_when_the_status_is_unchanged():
    # The readiness gauge must be right after an operator restart, when nothing changes.
    access = FakeAccess()
    run(relay_body(), access)
    access.objects["Deployment"]["status"] = {"replicas": 2, "readyReplicas": 2, "updatedReplicas": 2}
    access.objects["Service"]["status"] = {"loadBalancer": {"ingress": [{"ip": "198.51.100.7"}]}}
    first = run(relay_body(), access)
    assert first.ready
    body = relay_body(**first.status_patch)
    second = run(body, access)
    assert second.status_patch == {} and second.ready


def test_children_that_are_switched_off_are_looked_up_in_the_cache_only():
    access = FakeAccess()
    run(relay_body(), access)
    reads = {c[1]: c[2] for c in access.calls if c[0] == "get"}
    assert reads == {"Service": False, "Deployment": False, "PodDisruptionBudget": False,
                     "HorizontalPodAutoscaler": True, "NetworkPolicy": True}


def test_a_relay_short_of_ready_pods_is_looked_at_again_soon():
    # Pods failing to pull or crash-looping change no watched child: poll while short.
    access = FakeAccess()
    run(relay_body(), access)
    access.objects["Deployment"]["status"] = {"replicas": 2, "readyReplicas": 1}
    assert run(relay_body(), access).recheck_seconds == reconcile.RECHECK_SECONDS
    access.objects["Deployment"]["status"] = {"replicas": 2, "readyReplicas": 2, "updatedReplicas": 2}
    assert run(relay_body(), access).recheck_seconds is None


def _pod(created):
    return {"metadata": {"name": "edge-1", "creationTimestamp": created}, "status": {}}


def test_a_relay_short_of_ready_pods_is_looked_at_again_sooner_while_a_pod_is_young():
    """An image that cannot be pulled or a crash at start shows within seconds of the pod's
    creation (and changes no watched child): look again soon, then every RECHECK_SECONDS."""
    access = FakeAccess()
    run(relay_body(), access)
    access.objects["Deployment"]["status"] = {"replicas": 1, "readyReplicas": 0}
    access.list_pods = lambda namespace, selector: [_pod("2025-12-31T23:59:50Z"), _pod("2025-12-31T23:00:00Z")]
    assert run(relay_body(), access).recheck_seconds == reconcile.RECHECK_SOON_SECONDS
    access.list_pods = lambda namespace, selector: [_pod("2025-12-31T23:59:00Z")]
    assert run(relay_body(), access).recheck_seconds == reconcile.RECHECK_SECONDS


@pytest.mark.parametrize("created", [None, "", "yesterday", "2025-12-31 23:59:50"])
def test_a_pod_without_a_readable_creation_time_is_not_young(created):
    assert reconcile.recheck_seconds([_pod(created)], NOW) == reconcile.RECHECK_SECONDS
    assert reconcile.recheck_seconds([_pod(created), _pod("2025-12-31T23:59:59Z")], NOW) == reconcile.RECHECK_SOON_SECONDS
