"""With --proxy-protocol, a connection counts as its balancer's only
until its header names the client (README), with --fallback as without it."""

from __future__ import annotations

import asyncio
import socket

import pytest

from relay import protocol, proxy_protocol
from tests.relay.test_limit_bypass import LOOPBACK, MODES, silent_connections


@MODES
async def test_a_client_whose_header_came_is_not_counted_as_its_balancers_again(start_relay, mode):
    """The header of a ZeroTier client behind the balancer (127.0.0.1) arrives, its hello a
    segment later; meanwhile the balancer opens 2 more connections (at its cap of 2). The
    client is counted as 198.18.0.7 (1 of 2) since its header: its hello must open the tunnel.
    With --fallback the sniffer gave the tunnel the connection, whose admission counted it as
    the balancer's once more and refused it (max_connections_per_ip)."""
    relay = await start_relay(*LOOPBACK, *mode, "--proxy-protocol", "--max-connections-per-ip", "2")
    client = socket.create_connection(("127.0.0.1", relay.port))
    waiting: list[socket.socket] = []
    try:
        client.sendall(proxy_protocol.encode_v1(("198.18.0.7", 40000), ("198.18.0.1", 443)))
        await asyncio.sleep(0.2)  # the header is read: the client is 198.18.0.7's
        waiting = silent_connections(relay.port, 2)
        assert await relay.wait_metric("zt_relay_connections_open", lambda v: v == 3) == 3
        client.sendall(protocol.encode_hello(1, 14, 2))
        opened = await relay.wait_metric("zt_relay_tunnels_opened_total", lambda v: v == 1, timeout=2)
        refused = (await relay.metrics()).get('zt_relay_connections_refused_total{reason="max_connections_per_ip"}', 0)
        assert (opened, refused) == (1, 0)
    finally:
        client.close()
        for sock in waiting:
            sock.close()
