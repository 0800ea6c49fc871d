"""A connection the relay is closing is not read any more
(streams.close: "Stops reading meanwhile"): with the pause removed every relay test passed."""

from __future__ import annotations

import socket

from tests.relay.test_close_paths import LOOPBACK, queued, stuck  # noqa: F401 (the fixture)
from tests.relay.test_fallback import _push_until_blocked


async def test_a_tunnel_closing_with_a_stuck_buffer_reads_nothing_more_in_its_grace(start_relay, stuck):  # noqa: F811
    relay = await start_relay(*LOOPBACK)
    client = stuck(relay.port)
    await client.flood()
    assert await queued(relay, client) > 64 * 1024  # what is queued holds the close for its grace
    client.sock.sendall(b"\x00" * 5)  # bad input: the tunnel closes, its queue gets the grace
    client.sock.setblocking(False)
    try:
        pushed = await _push_until_blocked(client.sock, 64 << 20)
    except ConnectionResetError:  # the grace ended meanwhile: the relay read on until then
        pushed = -1
    # only what the kernel buffers take (the relay's receive buffer and the client's send buffer)
    assert 0 <= pushed < 32 << 20, f"the client pushed {pushed} bytes into a closing tunnel"


async def test_a_tunnel_closing_with_a_stuck_buffer_gives_up_its_udp_socket_at_once(start_relay, stuck):  # noqa: F811
    """README: every close "stops the tunnel's UDP socket at once" (its port and descriptor),
    not at the end of the grace (with the early close removed every relay test passed)."""
    relay = await start_relay(*LOOPBACK)
    client = stuck(relay.port)
    await client.flood()
    assert await queued(relay, client) > 64 * 1024  # the close will wait out its grace
    assert (await relay.metrics())["zt_relay_udp_sockets_open"] == 1
    client.sock.sendall(b"\x00" * 5)  # bad input: the tunnel closes
    assert await relay.wait_metric("zt_relay_udp_sockets_open", lambda v: v == 0, timeout=1) == 0
    assert (await relay.metrics())["zt_relay_connections_open"] == 1  # still in its grace
