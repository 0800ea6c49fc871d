"""A visitor's first flight that the backend socket does not take whole (``fallback._connect``
writes the rest): the visitor's reading must stay paused while that rest is over the mark.

A relay in this process: the backend socket's send buffer is made small (as a low
``net.core.wmem_max`` makes it), and the site's write mark low (as a memory budget shared by
many connections makes it), so the rest of the first flight is queued over the mark.
"""

from __future__ import annotations

import asyncio
import socket

from relay import fallback, splice as splice_mod
from relay.config import Endpoint, RelayConfig
from relay.server import Relay
from tests.relay.test_fallback import _push_until_blocked

MARK = 16 * 1024


async def test_the_rest_of_a_first_flight_over_the_mark_keeps_the_visitor_paused(monkeypatch):
    made = fallback.backend_socket

    def small_send_buffer(address, socket_buffer=None):
        sock = made(address, socket_buffer)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        return sock

    monkeypatch.setattr(fallback, "backend_socket", small_send_buffer)
    site = socket.create_server(("127.0.0.1", 0))  # accepts (the kernel's backlog), never reads
    site.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    relay = Relay(RelayConfig(listen=(Endpoint("127.0.0.1", 0),), fallback=Endpoint("127.0.0.1", site.getsockname()[1]),
                              health_listen=None))
    await relay.start()
    relay.site_high = MARK
    site.setblocking(False)
    visitor = socket.create_connection(("127.0.0.1", relay.addresses[0][1]))
    visitor.setblocking(False)
    try:
        first = visitor.send(b"G" * 200_000)  # one read of the sniffer's: far more than the backend socket takes at once
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while relay.fallback.results[fallback.CONNECTED] == 0:
            assert loop.time() < deadline, "the visitor never reached the backend"
            await asyncio.sleep(0.01)
        sent = await _push_until_blocked(visitor, 64 << 20)
        # the relay holds at most the first flight, the mark and one read past it; the rest
        # waits in the kernel's buffers and then the visitor's (TCP flow control)
        held = relay.fallback.buffered()
        assert held <= 200_000 + MARK + splice_mod.READ_SIZE, f"the relay buffered {held} bytes ({sent} taken from the visitor)"
        # and once the site reads, the visitor is resumed: every byte arrives, then its EOF
        visitor.shutdown(socket.SHUT_WR)
        peer, _ = await loop.sock_accept(site)
        with peer:
            peer.setblocking(False)
            got = 0
            while data := await asyncio.wait_for(loop.sock_recv(peer, 1 << 20), 5):
                got += len(data)
        assert got == first + sent
    finally:
        visitor.close()
        site.close()
        await relay.close()
