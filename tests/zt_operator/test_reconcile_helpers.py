"""The pure decisions inside a reconciliation pass: which objects are ours, when ports need repair."""

from __future__ import annotations

from tests.zt_operator.conftest import RELAY_UID, relay_body
from zt_operator import builders, reconcile


def test_only_a_child_controlled_by_this_relay_counts_as_ours():
    ours = {"metadata": {"ownerReferences": [builders.owner_reference(relay_body())]}}
    foreign = {"metadata": {"ownerReferences": [{**builders.owner_reference(relay_body()), "uid": "someone-else"}]}}
    not_controller = {"metadata": {"ownerReferences": [{**builders.owner_reference(relay_body()), "controller": False}]}}
    assert reconcile._owned_by(ours, RELAY_UID)
    assert not reconcile._owned_by(foreign, RELAY_UID)
    assert not reconcile._owned_by(not_controller, RELAY_UID)
    assert not reconcile._owned_by({"metadata": {}}, RELAY_UID)
    assert not reconcile._owned_by(None, RELAY_UID)


def test_service_ports_compare_equal_despite_allocated_node_ports():
    built = builders.service(relay_body())
    live = {"spec": {"ports": [{**built["spec"]["ports"][0], "nodePort": 31727}]}}
    assert reconcile._tunnel_ports(live) == reconcile._tunnel_ports(built)


def test_an_edited_service_port_is_noticed():
    built = builders.service(relay_body())
    edited = {"spec": {"ports": [{**built["spec"]["ports"][0], "port": 444}]}}
    extra = {"spec": {"ports": [built["spec"]["ports"][0], {"name": "x", "port": 80, "targetPort": 80, "protocol": "TCP"}]}}
    assert reconcile._tunnel_ports(edited) != reconcile._tunnel_ports(built)
    assert reconcile._tunnel_ports(extra) != reconcile._tunnel_ports(built)


def test_the_fallback_service_is_read_only_when_a_network_policy_needs_its_pods(monkeypatch):
    reads = []
    monkeypatch.setattr(reconcile.kube, "get", lambda kind, ns, name: reads.append((kind, ns, name)) or {"spec": {}})
    fallback = {"service": "site", "port": 443}
    assert reconcile._fallback_service(relay_body({"fallback": fallback})) is None
    assert reconcile._fallback_service(relay_body({"networkPolicy": {"enabled": True}, "fallback": {"address": "10.0.0.5:443"}})) is None
    assert reads == []
    assert reconcile._fallback_service(relay_body({"networkPolicy": {"enabled": True}, "fallback": fallback})) == {"spec": {}}
    assert reads == [("Service", "relays", "site")]
