"""Switching autoscaling off hands the Deployment's replicas back to the relay's
spec.replicas, which the operator kept equal to what runs (the mirror). While the operator
was down the mirror stopped: an autoscaler that scaled up meanwhile left spec.replicas lower
than what runs, and the first pass after the operator's return, seeing autoscaling off,
applied that old number: `replicas 2` over 5 running pods, 3 pods and their tunnels cut,
though nobody asked for 2 (the README: the Deployment keeps the count the HPA ran, unless the
same edit set replicas)."""

from __future__ import annotations

from tests.zt_operator.conftest import IMAGE, relay_body
from tests.zt_operator.test_reconcile import FakeAccess, run
from zt_operator import FIELD_MANAGER, builders

MIRRORED = [{"manager": FIELD_MANAGER, "operation": "Update", "subresource": "scale",
             "fieldsV1": {"f:spec": {"f:replicas": {}}}}]
EDITED = [{"manager": "kubectl-edit", "operation": "Update", "fieldsV1": {"f:spec": {"f:replicas": {}}}}]


def switched_off(replicas_managers):
    body = relay_body({"autoscaling": {"enabled": False}, "replicas": 2})
    body["metadata"].update(resourceVersion="10", managedFields=replicas_managers)
    return body


def autoscaled_children(running):
    on = relay_body({"autoscaling": {"enabled": True}})
    deployment = builders.deployment(on, default_image=IMAGE, default_pull_policy="IfNotPresent")
    deployment["spec"]["replicas"] = running
    deployment["metadata"]["managedFields"] = [
        {"manager": FIELD_MANAGER, "operation": "Apply", "fieldsV1": {"f:spec": {"f:template": {}}}},
        {"manager": "kube-controller-manager", "operation": "Update", "subresource": "scale",
         "fieldsV1": {"f:spec": {"f:replicas": {}}}}]
    return {"Deployment": deployment, "HorizontalPodAutoscaler": builders.horizontal_pod_autoscaler(on)}


def test_autoscaling_switched_off_over_a_stale_mirror_keeps_what_runs():
    access = FakeAccess(autoscaled_children(5))
    run(switched_off(MIRRORED), access)
    assert access.objects["Deployment"]["spec"]["replicas"] == 5, "the stale spec.replicas was applied over 5 pods"
    assert ("scale", "ZeroTierRelay", 5) in access.calls  # spec.replicas catches up first
    # The autoscaler stays until the relay says 5 (its event brings the next pass).
    assert ("delete", "HorizontalPodAutoscaler") not in access.calls


def test_the_pass_after_the_handback_switches_off_at_what_runs():
    access = FakeAccess(autoscaled_children(5))
    body = switched_off(MIRRORED)
    body["spec"]["replicas"] = 5  # the mirror's write, seen by watch
    run(body, access)
    assert access.objects["Deployment"]["spec"]["replicas"] == 5
    assert ("delete", "HorizontalPodAutoscaler") in access.calls


def test_replicas_set_by_the_same_edit_still_win():
    access = FakeAccess(autoscaled_children(5))
    run(switched_off(EDITED), access)
    assert access.objects["Deployment"]["spec"]["replicas"] == 2
    assert ("delete", "HorizontalPodAutoscaler") in access.calls
    assert not [c for c in access.calls if c[0] == "scale"]
