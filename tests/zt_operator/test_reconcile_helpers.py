"""The pure decisions inside a reconciliation pass: when ports need repair."""

from __future__ import annotations

from tests.zt_operator.conftest import relay_body
from zt_operator import builders, reconcile


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


def test_the_fallback_service_is_read_only_when_a_network_policy_needs_its_pods():
    reads = []

    class Access:
        def live(self, kind, ns, name, cached_only=False):
            reads.append((kind, ns, name))
            return {"spec": {}}

    fallback = {"service": "site", "port": 443}
    assert reconcile._fallback_service(relay_body({"fallback": fallback}), Access()) is None
    assert reconcile._fallback_service(
        relay_body({"networkPolicy": {"enabled": True}, "fallback": {"address": "10.0.0.5:443"}}), Access()) is None
    assert reads == []
    assert reconcile._fallback_service(
        relay_body({"networkPolicy": {"enabled": True}, "fallback": fallback}), Access()) == {"spec": {}}
    assert reads == [("Service", "relays", "site")]
