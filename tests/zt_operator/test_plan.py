"""Pure decisions about a relay's children: whose object it is, replicas handover, staleness,
whether an apply is needed at all."""

from __future__ import annotations

import pytest

from tests.zt_operator.conftest import RELAY_UID, relay_body
from zt_operator import FIELD_MANAGER, builders, plan

AUTOSCALED = {"autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 10}}


def live_deployment(replicas: int, managers: dict[str, dict] | None = None, owner: bool = True) -> dict:
    """A live Deployment; ``managers`` maps a field manager to its spec fieldsV1."""
    meta: dict = {"name": "edge", "namespace": "relays", "generation": 1, "resourceVersion": "7"}
    if owner:
        meta["ownerReferences"] = [builders.owner_reference(relay_body())]
    meta["managedFields"] = [
        {"manager": m, "operation": "Apply", "apiVersion": "apps/v1", "fieldsType": "FieldsV1",
         "fieldsV1": {"f:spec": spec}} for m, spec in (managers or {}).items()]
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": {"replicas": replicas}}


def test_a_child_is_absent_ours_or_foreign():
    assert plan.child_state(None, RELAY_UID) == "absent"
    assert plan.child_state(live_deployment(1), RELAY_UID) == "ours"
    assert plan.child_state(live_deployment(1, owner=False), RELAY_UID) == "foreign"
    someone = live_deployment(1)
    someone["metadata"]["ownerReferences"][0]["uid"] = "another-relay"
    assert plan.child_state(someone, RELAY_UID) == "foreign"


@pytest.mark.parametrize("live, wanted", [(3, 3), (1, 2), (2, 2)], ids=["above-min", "below-min", "at-min"])
def test_switching_autoscaling_on_hands_replicas_over_at_no_less_than_what_runs(live, wanted):
    deployment = live_deployment(live, {FIELD_MANAGER: {"f:replicas": {}, "f:template": {}}})
    handover = plan.replicas_handover(relay_body(AUTOSCALED), deployment)
    assert handover["spec"] == {"replicas": wanted}
    assert handover["metadata"] == {"name": "edge", "namespace": "relays"}
    assert (handover["apiVersion"], handover["kind"]) == ("apps/v1", "Deployment")


def test_no_handover_once_the_operator_no_longer_owns_replicas_or_without_autoscaling():
    released = live_deployment(3, {FIELD_MANAGER: {"f:template": {}}, plan.HANDOVER_MANAGER: {"f:replicas": {}}})
    assert plan.replicas_handover(relay_body(AUTOSCALED), released) is None
    owned = live_deployment(3, {FIELD_MANAGER: {"f:replicas": {}}})
    assert plan.replicas_handover(relay_body({"replicas": 3}), owned) is None
    assert plan.replicas_handover(relay_body(AUTOSCALED), None) is None


def test_under_an_autoscaler_the_relays_replicas_follow_what_it_runs():
    # So that switching autoscaling off starts from the autoscaler's count, not the default.
    body = relay_body({**AUTOSCALED, "replicas": 2})
    assert plan.mirrored_replicas(body, live_deployment(5)) == 5
    assert plan.mirrored_replicas(relay_body({**AUTOSCALED, "replicas": 5}), live_deployment(5)) is None
    assert plan.mirrored_replicas(relay_body({"replicas": 2}), live_deployment(5)) is None
    assert plan.mirrored_replicas(body, None) is None


def test_an_older_generation_than_one_already_applied_is_stale():
    assert not plan.is_stale(relay_body(), None)
    assert not plan.is_stale(relay_body(), 3)
    assert plan.is_stale(relay_body(), 4)


def test_a_live_object_with_every_built_field_needs_no_apply():
    built = builders.pod_disruption_budget(relay_body())
    live = {**built, "metadata": {**built["metadata"], "uid": "x", "resourceVersion": "9",
                                   "labels": {**built["metadata"]["labels"], "extra": "kept"}},
            "status": {"currentHealthy": 2}}
    assert plan.up_to_date(built, live)
    edited = {**live, "spec": {**live["spec"], "maxUnavailable": 3}}
    assert not plan.up_to_date(built, edited)
    assert not plan.up_to_date(built, None)


def test_lists_compare_whole_and_in_order():
    built = builders.service(relay_body())
    live = {**built, "spec": {**built["spec"], "ports": [{**built["spec"]["ports"][0], "nodePort": 31000}],
                              "clusterIP": "10.96.0.1"}}
    assert plan.up_to_date(built, live)
    extra = {**live, "spec": {**live["spec"], "ports": live["spec"]["ports"] + [{"name": "x", "port": 80}]}}
    assert not plan.up_to_date(built, extra)


def test_retries_back_off_exponentially_up_to_a_cap():
    delays = [plan.backoff(attempt) for attempt in range(1, 10)]
    assert delays[:4] == [1, 2, 4, 8]
    assert max(delays) == plan.MAX_BACKOFF_SECONDS
    assert delays == sorted(delays)


def test_a_field_removed_from_the_spec_still_needs_an_apply():
    # SSA removes a field the operator no longer sends only if it applies: "every built
    # field is live" alone would miss a removed annotation, nodeSelector or pod label.
    with_annotation = plan.stamp(builders.service(relay_body({"service": {"annotations": {"lb.example/x": "1"}}})))
    without = plan.stamp(builders.service(relay_body()))
    assert plan.up_to_date(with_annotation, with_annotation)
    assert not plan.up_to_date(without, with_annotation)


def test_the_stamp_is_stable_and_names_the_content():
    first = plan.stamp(builders.pod_disruption_budget(relay_body()))
    again = plan.stamp(builders.pod_disruption_budget(relay_body()))
    assert first == again
    assert first["metadata"]["annotations"][plan.APPLIED_ANNOTATION]
