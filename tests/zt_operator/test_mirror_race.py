"""Under an autoscaler a pass writes what runs into the relay's spec.replicas (the mirror).
A pass holds the relay as it was when it started: an edit that switches autoscaling off and
sets replicas, made while that pass runs, must not be overwritten by the older pass's
mirror (the README: the Deployment keeps the autoscaler's count "unless the same edit set
replicas")."""

from __future__ import annotations

from tests.zt_operator.conftest import IMAGE, relay_body
from tests.zt_operator.test_reconcile import FakeAccess, conditions, run
from zt_operator import builders, kube


class RelayScale(FakeAccess):
    """The relay's spec.replicas and resourceVersion as the API server has them."""

    def __init__(self, *args, rv="10", replicas=2, **kwargs):
        super().__init__(*args, **kwargs)
        self.rv, self.replicas = rv, replicas

    def scale_relay(self, namespace, name, replicas, resource_version=None):
        self.calls.append(("scale", "ZeroTierRelay", replicas))
        if resource_version is not None and resource_version != self.rv:
            raise kube.KubeError(f"scaling ZeroTierRelay {name}: 409 the object has been modified", "Conflict", 409)
        self.replicas = replicas


def autoscaled_deployment(running):
    deployment = builders.deployment(relay_body({"autoscaling": {"enabled": True}}), default_image=IMAGE,
                                     default_pull_policy="IfNotPresent")
    deployment["spec"]["replicas"] = running
    return deployment


def test_an_edit_made_while_a_pass_runs_is_not_overwritten_by_its_mirror():
    body = relay_body({"autoscaling": {"enabled": True}, "replicas": 2})
    body["metadata"]["resourceVersion"] = "10"
    # The user's edit landed after this pass read the relay: autoscaling off, replicas 8.
    access = RelayScale({"Deployment": autoscaled_deployment(5)}, rv="11", replicas=8)
    outcome = run(body, access)
    assert access.replicas == 8, "the older pass's mirror overwrote the edit's replicas"
    # The conflict is not a failure: the edit's own pass follows.
    assert outcome.result == "ok" and conditions(outcome)["Degraded"][0] == "False"


def test_the_mirror_still_follows_the_autoscaler_when_nothing_moved():
    body = relay_body({"autoscaling": {"enabled": True}, "replicas": 2})
    body["metadata"]["resourceVersion"] = "10"
    access = RelayScale({"Deployment": autoscaled_deployment(5)}, rv="10", replicas=2)
    run(body, access)
    assert access.replicas == 5


def test_the_scale_patch_carries_the_relays_resource_version_as_a_precondition(monkeypatch):
    from kubernetes import client

    sent = []
    monkeypatch.setattr(client.CustomObjectsApi, "patch_namespaced_custom_object_scale",
                        lambda self, group, version, namespace, plural, name, body, **kw: sent.append(body))
    monkeypatch.setattr(kube, "_api", client.ApiClient(client.Configuration()))
    kube.scale_relay("relays", "edge", 5, "10")
    assert sent == [{"spec": {"replicas": 5}, "metadata": {"resourceVersion": "10"}}]
