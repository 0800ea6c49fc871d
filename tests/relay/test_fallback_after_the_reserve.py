"""Once the tunnels' descriptor reserve was released (a tunnel's UDP
socket met EMFILE: Relay._open_udp), no site connection is made until it is set aside again
(FallbackRouter.splice's ``fd_reserve_short``): with that check removed every relay test
passed, and a visitor took one of the descriptors given to the tunnels."""

from __future__ import annotations

import asyncio
import os

from relay import fallback
from tests.relay.test_preconnect import make_relay, site  # noqa: F401 (fixtures)


async def test_a_visitor_is_refused_while_the_tunnels_reserve_is_released(make_relay, site, monkeypatch):  # noqa: F811
    relay = await make_relay(f"127.0.0.1:{site.port}")
    monkeypatch.setattr(relay, "_refill_fd_reserve", lambda: None)  # no tick sets it aside during the visit
    while relay.fd_reserve:  # released, as Relay._open_udp does on EMFILE
        os.close(relay.fd_reserve.pop())
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.addresses[0][1])
    try:
        writer.write(b"GET / HTTP/1.1\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(100), 5)
    finally:
        writer.close()
    results = relay.fallback.results
    assert (answer, results[fallback.FILE_DESCRIPTORS], results[fallback.CONNECTED]) == (b"", 1, 0)
