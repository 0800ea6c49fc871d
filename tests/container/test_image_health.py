"""Health and metrics endpoints of the relay in its container (port 9090)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.docker


def test_healthz_and_readyz_answer_200_once_the_relay_listens(run_relay):
    relay = run_relay()

    assert relay.health("/healthz")[0] == 200
    assert relay.health("/readyz")[0] == 200


def test_metrics_count_tunnels_in_prometheus_text(run_relay, udp_echo, tunnel_client):
    relay = run_relay()
    client = tunnel_client(relay.relay_port)
    client.send(*udp_echo, b"x" * 32)
    client.receive()

    status, metrics = relay.health("/metrics")

    assert status == 200
    assert "zt_relay_tunnels_active 1" in metrics
    assert "zt_relay_tunnels_opened_total 1" in metrics
