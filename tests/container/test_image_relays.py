"""The image runs the relay: framed TCP in, UDP out to a peer, replies framed back."""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.docker

PACKET = bytes(range(32))  # at least ZeroTier's minimum packet size (16 bytes)


def test_a_framed_packet_reaches_the_udp_peer_and_its_reply_comes_back(run_relay, udp_echo, tunnel_client):
    relay = run_relay()
    client = tunnel_client(relay.relay_port)
    peer_host, peer_port = udp_echo

    client.send(peer_host, peer_port, PACKET)

    assert client.receive() == (peer_host, peer_port, b"echo:" + PACKET)


def test_many_packets_round_trip_in_order_on_one_tunnel(run_relay, udp_echo, tunnel_client):
    relay = run_relay()
    client = tunnel_client(relay.relay_port)
    packets = [bytes([i]) * 40 for i in range(50)]

    for packet in packets:
        client.send(*udp_echo, packet)

    assert [client.receive()[2] for _ in packets] == [b"echo:" + p for p in packets]


def test_the_relay_refuses_destinations_outside_its_allow_list(run_relay, udp_echo, tunnel_client):
    # Without the test's allow-list entry the bridge subnet is private, hence refused.
    relay = run_relay("ZT_RELAY_ALLOW_DESTINATION=")
    client = tunnel_client(relay.relay_port)

    client.send(*udp_echo, PACKET)

    deadline = time.monotonic() + 5
    while 'reason="destination_not_global"' not in (metrics := relay.health("/metrics")[1]):
        assert time.monotonic() < deadline, metrics
        time.sleep(0.1)
    assert 'zt_relay_dropped_total{reason="destination_not_global"} 1' in metrics
