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
