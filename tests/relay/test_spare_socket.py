"""The spare backend socket: made ahead (socket(2) and the backend's options), off any
visitor's path, so that a visitor's dial is a connect and a send (``FallbackRouter.spare``).

It is a descriptor like any other: counted, given way when descriptors are short, never made
at the edge, closed when the relay stops; and it is only used for a backend of its family.
A relay in this process, a site on loopback.
"""

from __future__ import annotations

import asyncio
import errno
import socket

import pytest

from relay import fallback, limits, server, streams
from relay.config import Endpoint, RelayConfig
from relay.server import Relay
from tests.relay.test_preconnect import until


class Site:
    """Echoes; counts the connections it accepted."""

    def __init__(self) -> None:
        self.accepted = 0
        self.server: asyncio.AbstractServer | None = None

    async def start(self, host: str) -> Site:
        self.server = await asyncio.start_server(self._serve, host, 0)
        return self

    @property
    def address(self) -> tuple[str, int]:
        return self.server.sockets[0].getsockname()[:2]

    async def _serve(self, reader, writer) -> None:
        self.accepted += 1
        try:
            while data := await reader.read(65536):
                writer.write(data)
        except ConnectionError:
            pass
        writer.close()

    def close(self) -> None:
        self.server.close()


@pytest.fixture
async def site():
    s = await Site().start("127.0.0.1")
    yield s
    s.close()


@pytest.fixture
async def relay(site):
    relay = Relay(RelayConfig(listen=(Endpoint("127.0.0.1", 0),), fallback=Endpoint(*site.address), health_listen=None))
    await relay.start()
    yield relay
    await relay.close()


async def _open(relay: Relay, text: bytes) -> asyncio.StreamWriter:
    """A visitor whose ``text`` came back through the relay, held open."""
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.addresses[0][1])
    writer.write(text)
    assert await asyncio.wait_for(reader.readexactly(len(text)), 5) == text
    return writer


def _options(sock: socket.socket) -> list[int]:
    return [sock.getsockopt(level, option) for level, option, _ in fallback.BACKEND_OPTIONS]


async def test_a_visitors_dial_connects_the_spare_socket_made_ahead_with_the_backends_options(relay):
    spare = relay.fallback.spare
    assert spare is not None  # made at the start
    assert _options(spare) == [value for _, _, value in streams.STREAM_OPTIONS]  # set before any connect
    writer = await _open(relay, b"GET /spare")
    try:
        [s] = relay.fallback.splices
        assert s.backend.sock is spare and spare.getpeername()[1] == relay.config.fallback.port
        assert relay.fallback.spare is None  # not remade before the site's answer went on
    finally:
        writer.close()
    # the next one is made once the site connection is over (off any visitor's path)
    await until(lambda: not relay.fallback.splices, "the visit stayed")
    assert relay.fallback.spare is not None and relay.fallback.spare is not spare
    assert _options(relay.fallback.spare) == [value for _, _, value in streams.STREAM_OPTIONS]


async def test_the_spare_socket_counts_as_a_descriptor_and_gives_way_first_to_a_tunnel(relay):
    assert relay.fallback.spare is not None
    assert relay._fds_held() == 1  # no connection: the spare alone
    # No descriptor left before the headroom but the spare's: a tunnel's admission is not short.
    relay.fd_base = relay.nofile - limits.FD_HEADROOM - relay._fds_held()
    assert relay.fds_left() == 0
    spare = relay.fallback.spare
    assert not relay.fds_short
    assert relay.fallback.spare is None and spare.fileno() == -1
    assert relay.fds_left() == 1
    relay.fallback.refill_spare()  # no room to spare: none is made at the edge
    assert relay.fallback.spare is None


async def test_near_the_descriptor_ceiling_a_visitor_is_served_and_the_spare_gives_way(relay, site):
    """The spare counted in ``site_fds_short``: with it held, a visitor who would have had
    its descriptors without it would be refused (file_descriptors_exhausted)."""
    spare = relay.fallback.spare
    assert spare is not None
    # The ceiling where the next visitor (its sniffed connection: one descriptor) leaves the
    # tunnels exactly their reserve while the spare is held: short with the spare only.
    relay.fd_base = relay.nofile - limits.FD_HEADROOM - server.FD_RESERVE - (relay._fds_held() + 1)
    assert relay.fd_base > 0
    writer = await _open(relay, b"GET /ceiling")
    try:
        snapshot = relay.snapshot()
        assert snapshot["fallback:file_descriptors_exhausted"] == 0 and snapshot["fallback:connected"] == 1, snapshot
        assert spare.fileno() == -1 and relay.fallback.spare is None
    finally:
        writer.close()
    await until(lambda: not relay.fallback.splices, "the visit stayed")
    assert relay.fallback.spare is None  # at the edge: made only to give way again


async def test_the_spare_socket_is_closed_when_the_relay_drains_and_none_is_made_after(relay):
    spare = relay.fallback.spare
    assert spare is not None
    writer = await _open(relay, b"GET /before")
    try:
        new = relay.fallback.spare
        relay.stop_listening()  # the drain's first step: no visitor comes any more
        assert relay.fallback.spare is None and (new is None or new.fileno() == -1)
    finally:
        writer.close()
    await until(lambda: not relay.fallback.splices, "the visit stayed")  # a site connection's end remakes none
    relay.fallback.refill_spare()
    assert relay.fallback.spare is None


async def test_the_spare_socket_is_closed_when_the_relay_closes(site):
    relay = Relay(RelayConfig(listen=(Endpoint("127.0.0.1", 0),), fallback=Endpoint(*site.address), health_listen=None))
    await relay.start()
    spare = relay.fallback.spare
    assert spare is not None
    await relay.close()
    assert spare.fileno() == -1 and relay.fallback.spare is None


async def test_a_spare_socket_of_the_other_family_is_closed_and_the_dial_uses_one_of_the_backends(relay, site):
    """A backend name that moves from IPv4 to IPv6: the IPv4 spare would fail its connect."""
    site6 = await Site().start("::1")
    try:
        v4 = relay.fallback.spare
        assert v4 is not None and v4.family == socket.AF_INET
        relay.fallback._known_address = lambda: site6.address  # the name's new address
        writer = await _open(relay, b"GET /v6")
        try:
            assert site6.accepted == 1 and site.accepted == 0
            assert v4.fileno() == -1
            [s] = relay.fallback.splices
            assert s.backend.sock.family == socket.AF_INET6
        finally:
            writer.close()
        await until(lambda: not relay.fallback.splices, "the visit stayed")
        assert relay.fallback.spare is not None and relay.fallback.spare.family == socket.AF_INET6
        writer = await _open(relay, b"GET /v6 again")
        writer.close()
        assert site6.accepted == 2
    finally:
        site6.close()


# -- review (rv10b): the order things give way in; a failed dial on the spare --------------------

async def test_near_the_ceiling_the_spare_gives_way_before_a_pooled_connection(site):
    """A visitor short of descriptors by one: the spare (an unconnected socket, remade in
    microseconds) gives way, not a pooled connection (a handshake the site already made,
    which the visitor would have taken): the order ``Relay.fds_short`` gives way in."""
    relay = Relay(RelayConfig(listen=(Endpoint("127.0.0.1", 0),), fallback=Endpoint(*site.address), health_listen=None,
                              fallback_preconnect=2))
    await relay.start()
    try:
        pre = relay.fallback.preconnect
        # warm the pool: three visitors at once (each but the first owes one pooled connection)
        streams_ = [await asyncio.open_connection("127.0.0.1", relay.addresses[0][1]) for _ in range(3)]
        for _, writer in streams_:
            writer.write(b"GET /warm")
        for reader, _ in streams_:
            assert await asyncio.wait_for(reader.readexactly(9), 5) == b"GET /warm"
        for _, writer in streams_:
            writer.close()
        await until(lambda: not relay.fallback.splices and len(pre.pool) == 2 and not pre.pending, "the pool never filled")
        await until(lambda: relay.fallback.spare is not None, "no spare after the warm-up")
        spare = relay.fallback.spare
        # short by exactly the spare once the visitor's sniffed connection counts
        relay.fd_base = relay.nofile - limits.FD_HEADROOM - server.FD_RESERVE - (relay._fds_held() + 1)
        writer = await _open(relay, b"GET /edge")
        try:
            snapshot = relay.snapshot()
            assert snapshot["fallback:file_descriptors_exhausted"] == 0, snapshot
            assert spare.fileno() == -1 and relay.fallback.spare is None  # the spare gave way
            assert len(pre.pool) == 1  # one taken by the visitor, none closed unused
        finally:
            writer.close()
    finally:
        await relay.close()


async def test_a_refused_dial_on_the_spare_closes_it_and_a_new_one_is_made(relay, site):
    spare = relay.fallback.spare
    assert spare is not None
    site.close()
    await site.server.wait_closed()
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.addresses[0][1])
    writer.write(b"GET /down")
    assert await asyncio.wait_for(reader.read(), 5) == b""  # the visitor sees a close
    writer.close()
    await until(lambda: not relay.fallback.splices, "the failed visit stayed")
    assert relay.snapshot()["fallback:backend_refused"] == 1
    assert spare.fileno() == -1
    assert relay.fallback.spare is not None and relay.fallback.spare is not spare
    assert relay._fds_held() == 1


async def test_a_tunnel_that_meets_emfile_takes_the_spares_descriptor_not_the_tunnels_reserve(relay):
    """The kernel's ceiling met where the count said there was room (prlimit lowered it
    since the last tick read it): the spare gives way first, as in ``fds_short``; the
    reserve, whose release refuses every site connection until it can be set aside again
    (2 x FD_RESERVE free), is kept."""
    spare = relay.fallback.spare
    assert spare is not None
    calls = []

    class Tunnel:
        def open_udp(self):
            calls.append(spare.fileno())
            if len(calls) == 1:
                raise OSError(errno.EMFILE, "Too many open files")

    relay._open_udp(Tunnel())
    assert len(calls) == 2 and calls[1] == -1  # the retry came after the spare was closed
    assert relay.fallback.spare is None
    assert len(relay.fd_reserve) == server.FD_RESERVE and not relay.fd_reserve_short


async def test_a_tunnel_that_meets_emfile_again_without_the_spare_gets_the_reserve(relay):
    """The spare's descriptor may be above a lowered ceiling (closing it frees nothing
    below it): the reserve is released then, as before."""
    assert relay.fallback.spare is not None
    calls = []

    class Tunnel:
        def open_udp(self):
            calls.append(len(relay.fd_reserve))
            if len(calls) < 3:
                raise OSError(errno.EMFILE, "Too many open files")

    relay._open_udp(Tunnel())
    assert calls == [server.FD_RESERVE, server.FD_RESERVE, 0]
    assert relay.fallback.spare is None and relay.fd_reserve_short


async def test_a_backend_name_gets_its_spare_once_resolved_of_the_family_of_its_address(site):
    """Before the name's first answer there is no address (no spare: its family is not
    known); the fallback's tick makes it once the lookup answered."""
    relay = Relay(RelayConfig(listen=(Endpoint("127.0.0.1", 0),), fallback=Endpoint("localhost", site.address[1]), health_listen=None))
    await relay.start()
    try:
        await until(lambda: relay.fallback.name.address is not None and relay.fallback.spare is not None, "no spare after the lookup")
        v6 = ":" in relay.fallback.name.address[0]
        assert relay.fallback.spare.family == (socket.AF_INET6 if v6 else socket.AF_INET)
        assert relay._fds_held() == 1
    finally:
        await relay.close()
    assert relay.fallback.spare is None
