"""Status from the children as they are: conditions, address, clientConfig, events."""

from __future__ import annotations

import json

import pytest

from tests.zt_operator.conftest import relay_body
from zt_operator import status

T0 = "2026-01-01T00:00:00Z"
T1 = "2026-01-01T00:05:00Z"


def deployment(desired=2, ready=2, updated=2, replicas=2, generation=4, observed=4):
    return {
        "metadata": {"generation": generation},
        "spec": {"replicas": desired},
        "status": {"replicas": replicas, "readyReplicas": ready, "updatedReplicas": updated, "observedGeneration": observed},
    }


def lb_service(ip=None, hostname=None):
    ingress = [{k: v for k, v in (("ip", ip), ("hostname", hostname)) if v}] if ip or hostname else []
    return {"spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.9"}, "status": {"loadBalancer": {"ingress": ingress}}}


def conditions(observed):
    return {c["type"]: (c["status"], c["reason"]) for c in observed["conditions"]}


def test_a_ready_relay_reports_its_address_and_the_local_conf_snippet():
    observed = status.observe(relay_body(), deployment(), lb_service(ip="198.51.100.7"))
    assert conditions(observed) == {"Ready": ("True", "Available"), "Progressing": ("False", "Complete"),
                                    "Degraded": ("False", "AsExpected"), "Conflict": ("False", "NoConflict"),
                                    "AddressStable": ("True", "Static")}
    assert observed["address"] == "198.51.100.7"
    assert json.loads(observed["clientConfig"]) == {"settings": {"tcpFallbackRelay": "198.51.100.7/443"}}
    assert (observed["replicas"], observed["readyReplicas"], observed["observedGeneration"]) == (2, 2, 3)
    assert observed["service"] == "edge"
    assert observed["selector"].startswith("app.kubernetes.io/name=zt-relay,")


def test_ready_waits_for_the_load_balancer_address():
    observed = status.observe(relay_body(), deployment(), lb_service())
    assert conditions(observed)["Ready"] == ("False", "AwaitingAddress")
    assert observed["address"] is None and observed["clientConfig"] is None


def test_a_load_balancer_hostname_alone_is_not_an_address_zerotier_can_use():
    assert status.service_address(lb_service(hostname="relay.example.net")) is None
    assert status.load_balancer_hostnames(lb_service(hostname="relay.example.net")) == ["relay.example.net"]


def test_a_cluster_ip_service_reports_its_cluster_ip_and_a_node_port_none():
    assert status.service_address({"spec": {"type": "ClusterIP", "clusterIP": "10.96.0.9"}}) == "10.96.0.9"
    assert status.service_address({"spec": {"type": "NodePort", "clusterIP": "10.96.0.9"}}) is None


def test_a_rollout_in_progress_is_progressing():
    observed = status.observe(relay_body(), deployment(updated=1, replicas=3, ready=2), lb_service(ip="198.51.100.7"))
    assert conditions(observed)["Progressing"] == ("True", "RollingOut")
    assert conditions(observed)["Degraded"] == ("False", "AsExpected")
    stale = status.observe(relay_body(), deployment(generation=5, observed=4), lb_service(ip="198.51.100.7"))
    assert conditions(stale)["Progressing"] == ("True", "RollingOut")


def test_missing_pods_outside_a_rollout_are_degraded():
    observed = status.observe(relay_body(), deployment(ready=1), lb_service(ip="198.51.100.7"))
    assert conditions(observed)["Degraded"] == ("True", "ReplicasUnavailable")
    assert conditions(observed)["Ready"] == ("True", "Available")


def test_no_ready_pods_is_not_ready():
    observed = status.observe(relay_body(), deployment(ready=0), lb_service(ip="198.51.100.7"))
    assert conditions(observed)["Ready"] == ("False", "NoReadyReplicas")


def test_an_invalid_spec_is_a_condition_naming_the_field():
    observed = status.observe(relay_body(), None, None, invalid=["spec.relay.legacyTarget: 'x' is not HOST:PORT"])
    assert {k: v for k, v in conditions(observed).items() if k in ("Ready", "Progressing", "Degraded")} == {
        "Ready": ("False", "InvalidSpec"), "Progressing": ("False", "InvalidSpec"), "Degraded": ("True", "InvalidSpec")}
    degraded = next(c for c in observed["conditions"] if c["type"] == "Degraded")
    assert "spec.relay.legacyTarget" in degraded["message"]
    assert degraded["observedGeneration"] == 3


def test_a_failed_apply_is_degraded_with_the_api_servers_message():
    observed = status.observe(relay_body(), None, None, apply_error="applying Service edge: forbidden")
    assert conditions(observed)["Degraded"] == ("True", "ApplyFailed")
    assert conditions(observed)["Ready"] == ("False", "Creating")


def test_transition_times_change_only_when_a_condition_flips():
    first = status.merge_conditions(None, status.observe(relay_body(), deployment(), lb_service())["conditions"], T0)
    second = status.merge_conditions(first, status.observe(relay_body(), deployment(), lb_service(ip="198.51.100.7"))["conditions"], T1)
    times = {c["type"]: c["lastTransitionTime"] for c in second}
    assert times == {"Ready": T1, "Progressing": T0, "Degraded": T0, "Conflict": T0, "AddressStable": T0}


def test_changes_holds_only_the_differing_fields_and_nulls_for_removed_ones():
    current = {"address": "198.51.100.7", "replicas": 2}
    assert status.changes(current, {"address": None, "replicas": 2, "clientConfig": None, "readyReplicas": 1}) == {
        "address": None, "readyReplicas": 1}


def test_events_mark_readiness_and_the_address_once():
    before = status.observe(relay_body(), deployment(), lb_service())
    after = status.observe(relay_body(), deployment(), lb_service(ip="198.51.100.7"))
    found = status.events(before, after)
    assert [(kind, reason) for kind, reason, _ in found] == [("Normal", "Available"), ("Normal", "AddressAssigned")]
    assert "198.51.100.7/443" in found[1][2]
    assert status.events(after, after) == []


def test_an_invalid_spec_raises_one_warning_event():
    invalid = status.observe(relay_body(), None, None, invalid=["spec.x: bad"])
    assert [(kind, reason) for kind, reason, _ in status.events({}, invalid)] == [("Warning", "InvalidSpec")]


def test_a_failed_apply_raises_a_warning_event():
    failed = status.observe(relay_body(), None, None, apply_error="denied")
    assert ("Warning", "ApplyFailed", "denied") in status.events({}, failed)


# --- Status tells the truth (issue 14) ---------------------------------------------------

def waiting_pod(name, reason, message=""):
    return {"metadata": {"name": name}, "status": {"containerStatuses": [
        {"name": "relay", "ready": False, "state": {"waiting": {"reason": reason, "message": message}}}]}}


def test_a_deployment_past_its_progress_deadline_is_degraded_not_rolling_out_forever():
    stuck = deployment(updated=1, replicas=3, ready=2)
    stuck["status"]["conditions"] = [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                                      "message": 'ReplicaSet "edge-7d" has timed out progressing.'}]
    observed = status.observe(relay_body(), stuck, lb_service(ip="198.51.100.7"))
    assert conditions(observed)["Degraded"] == ("True", "ProgressDeadlineExceeded")
    assert conditions(observed)["Progressing"] == ("False", "ProgressDeadlineExceeded")


@pytest.mark.parametrize("reason", ["ImagePullBackOff", "ErrImagePull", "ErrImageNeverPull", "CrashLoopBackOff"])
def test_pods_that_cannot_start_make_the_relay_degraded_with_the_reason(reason):
    rolling = deployment(updated=1, replicas=3, ready=2)
    pods = [waiting_pod("edge-abc", reason, "Back-off pulling image \"typo\"")]
    observed = status.observe(relay_body(), rolling, lb_service(ip="198.51.100.7"), pods=pods)
    assert conditions(observed)["Degraded"] == ("True", reason)
    degraded = next(c for c in observed["conditions"] if c["type"] == "Degraded")
    assert "edge-abc" in degraded["message"]


def test_a_node_port_relay_is_ready_when_its_pods_are():
    node_port = {"spec": {"type": "NodePort", "clusterIP": "10.96.0.9", "ports": [{"port": 443, "nodePort": 31443}]}}
    observed = status.observe(relay_body({"service": {"type": "NodePort"}}), deployment(), node_port)
    assert conditions(observed)["Ready"] == ("True", "Available")
    assert "31443" in next(c for c in observed["conditions"] if c["type"] == "Ready")["message"]
    assert observed["clientConfig"] is None


def test_a_hostname_only_load_balancer_uses_the_resolved_ips_and_warns_they_may_change():
    service = lb_service(hostname="lb-1.example.net")
    observed = status.observe(relay_body(), deployment(), service, resolved={"lb-1.example.net": ["2001:db8::5", "198.51.100.9"]})
    assert observed["address"] == "198.51.100.9"
    assert observed["addresses"] == ["198.51.100.9", "2001:db8::5"]
    assert observed["hostname"] == "lb-1.example.net"
    assert json.loads(observed["clientConfig"]) == {"settings": {"tcpFallbackRelay": "198.51.100.9/443"}}
    assert conditions(observed)["AddressStable"] == ("False", "HostnameOnly")
    assert conditions(observed)["Ready"] == ("True", "Available")


def test_a_hostname_that_does_not_resolve_never_becomes_host_slash_port():
    observed = status.observe(relay_body(), deployment(), lb_service(hostname="lb-1.example.net"), resolved={})
    assert observed["clientConfig"] is None and observed["address"] is None
    assert conditions(observed)["Ready"] == ("False", "AwaitingAddress")


def test_with_several_ingress_entries_ipv4_is_preferred_and_all_are_listed():
    service = {"spec": {"type": "LoadBalancer"}, "status": {"loadBalancer": {"ingress": [
        {"ip": "2001:db8::7"}, {"ip": "198.51.100.7"}, {"ip": "198.51.100.8"}]}}}
    observed = status.observe(relay_body(), deployment(), service)
    assert observed["address"] == "198.51.100.7"
    assert observed["addresses"] == ["198.51.100.7", "198.51.100.8", "2001:db8::7"]
    assert conditions(observed)["AddressStable"] == ("True", "Static")


def test_an_address_change_is_a_warning_event_a_condition_and_the_previous_address():
    before = status.observe(relay_body(), deployment(), lb_service(ip="198.51.100.7"))
    after = status.observe(relay_body(), deployment(), lb_service(ip="198.51.100.8"), previous=before)
    assert after["previousAddress"] == "198.51.100.7"
    assert conditions(after)["AddressStable"] == ("False", "AddressChanged")
    found = status.events(before, after)
    assert ("Warning", "AddressChanged") in [(kind, reason) for kind, reason, _ in found]
    # Kept afterwards, so clients can be told what changed.
    later = status.observe(relay_body(), deployment(), lb_service(ip="198.51.100.8"), previous=after)
    assert later["previousAddress"] == "198.51.100.7"
    assert conditions(later)["AddressStable"] == ("False", "AddressChanged")


def test_a_child_owned_by_someone_else_is_a_conflict():
    observed = status.observe(relay_body(), None, None, conflicts=["Service edge exists and is not owned by this relay"])
    assert conditions(observed)["Conflict"] == ("True", "NameInUse")
    assert conditions(observed)["Degraded"] == ("True", "Conflict")
    ok = status.observe(relay_body(), deployment(), lb_service(ip="198.51.100.7"))
    assert conditions(ok)["Conflict"] == ("False", "NoConflict")


def test_an_api_failure_is_degraded_with_its_own_reason():
    observed = status.observe(relay_body(), None, None, apply_error="reading Deployment edge: 503", error_reason="APIServerError")
    assert conditions(observed)["Degraded"] == ("True", "APIServerError")
