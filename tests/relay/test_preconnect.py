"""``--fallback-preconnect``: site connections take an already-connected backend connection.

The pool's bookkeeping is tested without I/O (``backend_pool.Pool``, time passed in); the
driver with a relay in this process and a backend on loopback that records, per accepted
connection, what it got and in which order it was accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import struct
import time

import pytest

from relay import backend_name, backend_pool, fallback, limits, metrics, preconnect, proxy_protocol, server, stats
from relay.cli import UsageError, parse_config
from relay.config import Endpoint, RelayConfig
from relay.server import Relay
from tests.relay.conftest import Client, Echo

A, B = ("127.0.0.1", 1), ("127.0.0.1", 2)
TCP_CLOSE, TCP_CLOSE_WAIT = 7, 8  # tcpi_state


# -- the bookkeeping -------------------------------------------------------------------------

def test_a_pooled_connection_reaching_the_max_age_is_dropped_not_handed_out():
    pool = backend_pool.Pool(2, max_age=2.0)
    pool.used(0.0)
    pool.dial_started()
    assert pool.dialed("old", A, 0.0)
    pool.dial_started()
    assert pool.dialed("new", A, 1.5)
    assert pool.pop(A, 1.9) == ("new", [])  # the freshest first
    assert pool.pop(A, 2.0) == (None, ["old"])  # 2 s old: closed, never used


def test_a_connection_to_an_address_the_name_no_longer_has_is_dropped_and_new_dials_go_to_the_new_one():
    pool = backend_pool.Pool(2)
    for _ in range(3):  # three visitors at once: the first owes nothing (a lone visit), the others one each
        pool.used(0.0)
    for conn in ("a1", "a2"):
        pool.dial_started()
        pool.dialed(conn, A, 0.0)
    assert pool.dials_due(B, 0.1) == 0  # full, until the old ones go
    assert pool.expire(B, 0.1) == ["a1", "a2"]
    assert pool.dials_due(B, 0.1) == 2
    assert pool.pop(B, 0.1) == (None, [])
    pool.dial_started()  # dialed to A before the name moved, connected after
    assert not pool.dialed("a3", A, 0.2, current=B) and len(pool) == 0 and pool.dials_due(B, 0.2) == 2


def test_failed_dials_back_off_one_at_a_time_doubling_to_a_bound():
    pool = backend_pool.Pool(4)
    for _ in range(5):
        pool.used(0.0)
    assert pool.dials_due(A, 0.0) == 4
    delays, now = [], 0.0
    for i in range(12):
        assert pool.dials_due(A, now) == (4 if i == 0 else 1)  # after a failure: one dial at a time
        pool.dial_started()
        if i == 0:
            for _ in range(3):
                pool.dial_started()
                pool.dial_failed(now)
        assert pool.dials_due(A, now) == 0
        delay = pool.dial_failed(now)
        delays.append(delay)
        assert pool.dials_due(A, now + delay * 0.99) == 0  # nothing before the backoff ends
        assert pool.deadline(now) == now + delay  # a timer, not a poll
        now += delay
        pool.used(now)
    assert delays[:3] == [backend_pool.BACKOFF_MIN * 2 ** i for i in range(3, 6)]
    assert max(delays) == backend_pool.BACKOFF_MAX
    assert pool.deadline(now + 1e9) is None  # a past retry is never a timer in the past (no busy loop)
    pool.dial_started()
    assert pool.dialed("up", A, now)
    assert pool.dials_due(A, now) == 3  # back up: fill at once


def test_a_pool_without_visitors_for_the_warm_period_is_not_refilled():
    pool = backend_pool.Pool(2, warm=60.0)
    assert pool.dials_due(A, 0.0) == 0  # cold from the start: nothing dialed for nobody
    pool.used(10.0)
    pool.used(10.5)
    assert pool.dials_due(A, 10.5) == 1  # a second visit soon after: one connection for the next one
    assert pool.dials_due(A, 70.5) == 0


def test_a_closed_pool_hands_back_its_connections_and_takes_no_more():
    pool = backend_pool.Pool(2)
    pool.used(0.0)
    pool.dial_started()
    pool.dialed("a", A, 0.0)
    pool.dial_started()
    assert pool.close() == ["a"]
    assert not pool.dialed("late", A, 0.1)
    assert pool.dials_due(A, 0.1) == 0 and len(pool) == 0


@pytest.mark.parametrize("value", ["-1", "65", "x"])
def test_the_preconnect_flag_is_validated_naming_it(value):
    with pytest.raises(UsageError) as info:
        parse_config(["--fallback-preconnect", value], {})
    assert str(info.value).startswith("--fallback-preconnect (ZT_RELAY_FALLBACK_PRECONNECT)"), str(info.value)
    assert parse_config([], {"ZT_RELAY_FALLBACK_PRECONNECT": "3"}).fallback_preconnect == 3
    assert parse_config([], {}).fallback_preconnect == 0  # off unless asked (README: measured no faster on one host)


# -- the driver, with a relay in this process ------------------------------------------------

class Site:
    """Echoes; keeps every accepted connection in accept order with what it received."""

    def __init__(self) -> None:
        self.conns: list[dict] = []
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self, sock: socket.socket | None = None) -> Site:
        if sock is None:
            self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        else:
            self.server = await asyncio.start_server(self._serve, sock=sock)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader, writer) -> None:
        conn = {"data": b"", "writer": writer, "eof": asyncio.Event()}
        self.conns.append(conn)
        try:
            while data := await reader.read(65536):
                conn["data"] += data
                writer.write(data)
        except ConnectionError:
            pass
        conn["eof"].set()
        writer.close()

    def idle(self) -> list[dict]:
        """Connections open that got nothing: the relay's pool."""
        return [c for c in self.conns if not c["data"] and not c["eof"].is_set()]

    def close(self) -> None:
        for c in self.conns:
            c["writer"].close()
        self.server.close()


async def until(condition, what: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, what
        await asyncio.sleep(0.01)


async def visit(relay: Relay, text: bytes) -> tuple[bytes, int]:
    """Sends ``text`` through the relay; its echo and the visitor's port."""
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.addresses[0][1])
    try:
        writer.write(text)
        return await asyncio.wait_for(reader.readexactly(len(text)), 5), writer.get_extra_info("sockname")[1]
    finally:
        writer.close()


@pytest.fixture
async def site():
    s = await Site().start()
    yield s
    s.close()


@pytest.fixture
async def make_relay():
    relays: list[Relay] = []

    async def make(backend: str, **settings) -> Relay:
        host, port = backend.rsplit(":", 1)
        relay = Relay(RelayConfig(listen=(Endpoint("127.0.0.1", 0),), fallback=Endpoint(host, int(port)), health_listen=None, **settings))
        await relay.start()
        relays.append(relay)
        return relay

    yield make
    for relay in relays:
        await relay.close()


async def warm(relay: Relay, site: Site, size: int) -> None:
    """``size`` + 1 visitors at once (dialed: the pool starts cold; the first visit owes
    nothing, each other one pooled connection), then the pool fills."""
    streams = [await asyncio.open_connection("127.0.0.1", relay.addresses[0][1]) for _ in range(size + 1)]
    try:
        for _, writer in streams:  # all sent before the relay reads any: none finds a pooled one
            writer.write(b"GET /warm")
        for reader, _ in streams:
            assert await asyncio.wait_for(reader.readexactly(9), 5) == b"GET /warm"
    finally:
        for _, writer in streams:
            writer.close()
    await until(lambda: relay.snapshot()["fallback_preconnected"] == size and len(site.idle()) == size, "the pool never filled")


@pytest.fixture
def no_expiry(monkeypatch):
    """Pooled connections stay for the test, however slow the machine (their age is tested
    in the bookkeeping's tests)."""
    monkeypatch.setattr(backend_pool, "MAX_AGE", 60.0)


async def test_a_site_connection_takes_a_pooled_connection_and_the_pool_refills(make_relay, site, no_expiry):
    relay = await make_relay(f"127.0.0.1:{site.port}", fallback_preconnect=2)
    await warm(relay, site, 2)
    pooled = site.idle()
    assert (await visit(relay, b"GET /next"))[0] == b"GET /next"
    used = [c for c in site.conns if c["data"] == b"GET /next"]
    assert len(used) == 1 and used[0] in pooled  # accepted before the visitor came
    await until(lambda: relay.snapshot()["fallback_preconnected"] == 2 and len(site.idle()) == 2, "no refill")
    snapshot = relay.snapshot()
    assert snapshot["fallback:connected"] == 4 and snapshot["fallback_active"] <= 2, snapshot
    assert snapshot["connections_open"] == 0 and snapshot["tunnels_active"] == 0, snapshot  # never tunnels
    # the pool's descriptors count, and the spare backend socket's
    assert relay._fds_held() == 2 * len(relay.fallback.splices) + 2 + (relay.fallback.spare is not None)


def _pooled_socks(relay: Relay) -> list[socket.socket]:
    return [e.conn for e in relay.fallback.preconnect.pool.entries]


def _waiting(sock: socket.socket) -> bytes | None:
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return None


def _tcp_state(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]


@pytest.mark.parametrize("how", ["close", "reset"])
async def test_pooled_connections_the_backend_closed_are_skipped_and_the_visitor_is_served(make_relay, site, how, no_expiry):
    relay = await make_relay(f"127.0.0.1:{site.port}", fallback_preconnect=2)
    await warm(relay, site, 2)
    socks = _pooled_socks(relay)
    for conn in site.idle():  # a backend closing idle connections early, or restarted
        sock = conn["writer"].get_extra_info("socket")
        if how == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn["writer"].transport.abort() if how == "reset" else conn["writer"].close()
    if how == "close":
        await until(lambda: all(_tcp_state(s) == TCP_CLOSE_WAIT for s in socks), "the FINs never arrived")
    else:
        await until(lambda: all(_tcp_state(s) == TCP_CLOSE for s in socks), "the resets never arrived")
    assert (await visit(relay, b"GET /after"))[0] == b"GET /after"
    assert relay.snapshot()["fallback:connected"] == 4


async def test_with_the_backend_down_visitors_dial_and_are_counted_and_the_pool_backs_off(make_relay, monkeypatch, caplog, no_expiry):
    monkeypatch.setattr(backend_pool, "BACKOFF_MIN", 30.0)  # within the test: the first round of pool dials only
    dials = []
    real_dial = fallback._dial
    monkeypatch.setattr(fallback, "_dial", lambda address, first, *rest: dials.append(first) or real_dial(address, first, *rest))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        relay = await make_relay(f"127.0.0.1:{port}", fallback_preconnect=2)
        for i in range(5):
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.addresses[0][1])
            writer.write(b"GET /%d" % i)
            try:
                assert await asyncio.wait_for(reader.read(), 5) == b""
            except ConnectionResetError:
                pass
            writer.close()
            await until(lambda: relay.snapshot().get("fallback:backend_refused") == i + 1, "not counted")
        pool = relay.fallback.preconnect
        await until(lambda: pool.pool.failures and not pool.pending, "the pool never tried")
        snapshot = relay.snapshot()
        assert {k: v for k, v in snapshot.items() if k.startswith("fallback:") and v} == {"fallback:backend_refused": 5}
        assert 1 <= dials.count(b"") <= 2  # the pool's first round (its size), then the backoff: not one per visitor
        assert snapshot["fallback_preconnected"] == 0
        assert sum("preconnecting failed" in r.getMessage() for r in caplog.records) == 1
        # The backend comes back (on the very socket: no other process can take the port meanwhile):
        # a visitor's own dial works, and the pool refills without waiting out the backoff.
        site = await Site().start(sock=s)
        try:
            assert (await visit(relay, b"GET /back"))[0] == b"GET /back"
            await until(lambda: relay.snapshot()["fallback_preconnected"] == 2, "no refill once the backend was back")
        finally:
            site.close()


@pytest.mark.parametrize("version", ["v1", "v2"])
async def test_a_pooled_connection_starts_with_the_proxy_header_of_its_visitor(make_relay, version, no_expiry):
    got: list[bytes] = []
    accepted: list[asyncio.StreamWriter] = []

    async def serve(reader, writer):
        accepted.append(writer)
        data = await reader.read(4096)
        got.append(data)
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        relay = await make_relay(f"127.0.0.1:{server.sockets[0].getsockname()[1]}", fallback_preconnect=1,
                                 fallback_proxy_protocol=version)
        for i in range(3):  # a lone visit (no pool for it), a second (dialed, owes one), one on the pooled
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.addresses[0][1])
            writer.write(b"GET /%d" % i)
            assert await asyncio.wait_for(reader.readexactly(2), 5) == b"ok"
            client_port = writer.get_extra_info("sockname")[1]
            writer.close()
            if i:
                await until(lambda: relay.snapshot()["fallback_preconnected"] == 1 and len(accepted) == i + 2, "the pool never filled")
            parsed = proxy_protocol.parse_header(got[-1])
            assert parsed is not None and parsed.source == ("127.0.0.1", client_port), got[-1]
            assert got[-1][parsed.length:] == b"GET /%d" % i
        assert relay.snapshot()["fallback:connected"] == 3 and relay.snapshot()["fallback_preconnect_taken"] == 1
        await relay.close()
    finally:
        for writer in accepted:
            writer.close()
        server.close()


async def test_pooled_connections_close_when_the_drain_starts_and_the_drain_does_not_wait_for_them(make_relay, site, no_expiry):
    relay = await make_relay(f"127.0.0.1:{site.port}", fallback_preconnect=2, drain_timeout=30.0)
    await warm(relay, site, 2)
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.addresses[0][1])
    writer.write(b"GET /slow")  # a visitor the drain waits for
    assert await asyncio.wait_for(reader.readexactly(9), 5) == b"GET /slow"
    await until(lambda: relay.snapshot()["fallback_preconnected"] == 2 and len(site.idle()) == 2, "no refill")
    pooled = site.idle()
    drain = asyncio.ensure_future(relay.drain())
    await asyncio.wait_for(asyncio.gather(*(c["eof"].wait() for c in pooled)), 5)  # at once, not at the end
    assert not drain.done()
    assert relay.snapshot()["fallback_preconnected"] == 0 and relay._fds_held() == 2  # the visitor's two
    writer.close()
    await asyncio.wait_for(drain, 10)  # ends with the last visitor, not the drain timeout
    assert relay.snapshot().get("fallback_closed:shutdown", 0) == 0


async def test_when_the_name_resolves_to_a_new_address_the_pool_refills_there(make_relay, site, monkeypatch):
    new = await Site().start()
    answer = {"port": site.port}

    async def resolve(loop, host, port):
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", answer["port"]))]

    monkeypatch.setattr(backend_name, "getaddrinfo", resolve)
    monkeypatch.setattr(fallback, "DNS_CACHE_SECONDS", 0.1)
    try:
        relay = await make_relay("site.example:8443", fallback_preconnect=2)
        await warm(relay, site, 2)
        old = site.idle()
        answer["port"] = new.port
        name = relay.fallback.name
        await until(lambda: name.address == ("127.0.0.1", new.port), "the name was never refreshed")
        assert (await visit(relay, b"GET /moved"))[0] == b"GET /moved"
        assert [c["data"] for c in new.conns if c["data"]] == [b"GET /moved"]
        await until(lambda: len(new.idle()) == 2 and relay.snapshot()["fallback_preconnected"] == 2, "no refill at the new address")
        await asyncio.wait_for(asyncio.gather(*(c["eof"].wait() for c in old)), 5)  # the old address's are closed
    finally:
        new.close()


async def test_a_pooled_connection_whose_site_spoke_first_is_not_used_and_the_visitor_gets_a_fresh_greeting(make_relay, no_expiry):
    """A site that speaks first (SMTP, SSH) has its greeting waiting on a pooled connection:
    bytes waiting can as well be a stale answer (see the 408 test), so it is discarded and the
    visitor gets a fresh dial and its own greeting (such a site gains nothing from a pool)."""
    writers: list[asyncio.StreamWriter] = []
    got: list[bytes] = []  # per connection, in accept order

    async def greet(reader, writer):
        index = len(writers)
        writers.append(writer)
        got.append(b"")
        writer.write(b"220 ready\r\n")
        while data := await reader.read(65536):
            got[index] += data
            writer.write(data)
        writer.close()

    server = await asyncio.start_server(greet, "127.0.0.1", 0)
    try:
        relay = await make_relay(f"127.0.0.1:{server.sockets[0].getsockname()[1]}", fallback_preconnect=1)
        for i in range(3):  # lone, dialed (owes one), then the pooled one (greeted) discarded and dialed again
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.addresses[0][1])
            writer.write(b"HELO %d\r\n" % i)
            assert await asyncio.wait_for(reader.readexactly(19), 5) == b"220 ready\r\nHELO %d\r\n" % i
            writer.close()
            if i:
                await until(lambda: relay.snapshot()["fallback_preconnected"] == 1, "the pool never filled")
                socks = _pooled_socks(relay)
                await until(lambda: _waiting(socks[0]) == b"2", "no greeting waiting")
        assert got[:4] == [b"HELO 0\r\n", b"HELO 1\r\n", b"", b"HELO 2\r\n"]  # the pooled one got nothing
        assert relay.snapshot()["fallback:connected"] == 3
        await relay.close()
    finally:
        for w in writers:
            w.close()
        server.close()


async def test_a_dial_that_connects_after_the_name_moved_is_not_pooled_and_does_not_block_the_pool(monkeypatch, no_expiry):
    """A dial to the old address still in flight when the name moves (a remote backend: the
    old address slow or gone) connects after the pool already holds connections to the new
    one. Pooled as the freshest, it was never handed out (its address is not the name's)
    yet made the pool miss, and took a slot, until the oldest connection aged out."""
    loop = asyncio.get_running_loop()
    old, new = await Site().start(), await Site().start()
    current = [("127.0.0.1", old.port)]
    # The new address's dials are over when connect() returns (loopback); the old one's
    # connect is seen a loop iteration later, as a remote backend's would be.
    monkeypatch.setattr(preconnect, "_established", lambda sock: sock.getpeername()[1] == new.port)
    allow = [1]  # the old address gets one dial, then the name moves

    def may_dial() -> bool:
        allow[0] -= 1
        return allow[0] >= 0

    pre = preconnect.Preconnector(loop, 2, lambda: current[0], lambda address: fallback._dial(address, b"")[0],
                                  may_dial, lambda exc, delay: None)
    try:
        for _ in range(3):  # three visitors at once: two dials owed (the first is a lone visit)
            pre.pool.used(loop.time())
        pre.fill()
        assert len(pre.pending) == 1  # to the old address, not yet connected
        current[0] = ("127.0.0.1", new.port)
        allow[0] = 1
        pre.fill()
        assert [e.address for e in pre.pool.entries] == [current[0]] and len(pre.pending) == 1
        await until(lambda: not pre.pending, "the old address's dial never connected")
        assert [e.address for e in pre.pool.entries] == [current[0]]  # the late one is not pooled
        sock = pre.take(current[0])
        assert sock is not None and sock.getpeername() == current[0]
        sock.close()
    finally:
        pre.close()
        old.close()
        new.close()


@pytest.mark.parametrize("then", ["close", "wait"])
async def test_a_pooled_connection_the_site_wrote_to_is_discarded_and_the_visitor_gets_a_fresh_dial(make_relay, then, no_expiry):
    """A site that answers an idle connection (a 408, "421 too many connections") and then
    closes it (or not yet): the bytes waiting on the pooled connection are that stale answer,
    not this visitor's. The peek saw bytes and called it open; now any byte or EOF discards it."""
    writers: list[asyncio.StreamWriter] = []
    got: list[bytes] = []  # per connection, in accept order
    stale = {2}  # the pool's connection (after a lone visit and a second one) gets the stale answer

    async def serve(reader, writer):
        index = len(writers)
        writers.append(writer)
        got.append(b"")
        if index in stale:  # the site gives up on an idle connection
            writer.write(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
            if then == "close":
                writer.close()
                return
        while data := await reader.read(65536):
            got[index] += data
            writer.write(data)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        relay = await make_relay(f"127.0.0.1:{server.sockets[0].getsockname()[1]}", fallback_preconnect=1)
        for i in range(2):  # dialed: the pool starts cold (and a lone visit owes nothing)
            assert (await visit(relay, b"GET /%d" % i))[0] == b"GET /%d" % i
        await until(lambda: len(writers) == 3 and relay.snapshot()["fallback_preconnected"] == 1, "the pool never filled")
        socks = _pooled_socks(relay)
        await until(lambda: _waiting(socks[0]) is not None, "nothing waiting on the pooled connection")
        assert (await visit(relay, b"GET /2"))[0] == b"GET /2"  # the echo, not the 408 or an EOF
        assert got[3] == b"GET /2" and got[2] == b"", got  # a fresh dial, the pooled one unused
        assert relay.snapshot()["fallback:connected"] == 3
        await relay.close()
    finally:
        for w in writers:
            w.close()
        server.close()


def _simulate(pool: backend_pool.Pool, visits: list[float], end: float) -> tuple[int, int]:
    """Drives ``pool`` as ``Preconnector`` does, with dials that connect at once: a visitor
    takes a pooled connection (or dials), then the pool expires and dials what is due, at each
    visit and at each deadline. Returns (backend connections the pool opened, visits served
    from the pool)."""
    dials = hits = 0
    pending, now = sorted(visits), 0.0
    while now < end:
        while pending and pending[0] <= now:  # visits at once: one after the other
            pending.pop(0)
            pool.used(now)
            conn, _ = pool.pop(A, now)
            hits += conn is not None
        pool.expire(A, now)
        for _ in range(pool.dials_due(A, now)):
            pool.dial_started()
            dials += pool.dialed(object(), A, now)
        times = [t for t in (pending[0] if pending else None, pool.deadline(now)) if t is not None and t > now]
        now = min(times, default=end)
    return dials, hits


def test_a_visit_a_minute_opens_no_more_backend_connections_than_visits():
    """One visit a minute (a quiet site: a monitor, a crawler): each pooled connection ages
    out unused. The pool used to refill all N every MAX_AGE for WARM after each visit (N/2
    connects per second, 30 N a minute), each one a connection the backend accepted and saw
    closed without a byte (logged as an error by a backend that wants a PROXY header)."""
    visits = [60.0 * i for i in range(10)]
    dials, hits = _simulate(backend_pool.Pool(4), visits, 600.0)
    assert dials == 0, dials  # visits farther apart than MAX_AGE: a pooled connection would serve none
    assert hits == 0  # a pool that old would be a connection the site is about to close
    for gap in (10.0, backend_pool.MAX_AGE):
        visits = [gap * i for i in range(60)]
        assert _simulate(backend_pool.Pool(4), visits, visits[-1] + 1) == (0, 0), gap


def test_under_steady_visits_the_pool_serves_them_opening_about_one_connection_per_visit():
    """Visits closer together than MAX_AGE take pooled connections; each is replaced once,
    so the backend sees at most one connection per visit plus the pool (as without a pool)."""
    visits = [0.2 * i for i in range(500)]  # 5 a second for 100 s
    dials, hits = _simulate(backend_pool.Pool(4), visits, 100.0)
    assert hits >= len(visits) - 2, hits  # all but the first two (the pool starts cold, the first visit owes nothing)
    assert dials <= len(visits) + 4, dials


def test_a_burst_grows_the_pool_to_the_burst_and_a_single_visitor_keeps_one():
    pool = backend_pool.Pool(4)
    for _ in range(3):  # three visitors at once (a page's parallel requests), all dialing
        pool.used(0.0)
        assert pool.pop(A, 0.0)[0] is None
    assert pool.dials_due(A, 0.0) == 2  # the first of them owes nothing (a lone visit: nobody to serve)
    pool = backend_pool.Pool(4)
    pool.used(0.0)
    assert pool.dials_due(A, 0.0) == 0  # one visitor alone: no pooled connection for nobody
    pool.used(1.0)
    assert pool.dials_due(A, 1.0) == 1  # a second within MAX_AGE: one for the next one


# -- the pool within the relay's bounds, never in a visitor's way ----------------------------

async def _refilled(pre: preconnect.Preconnector) -> None:
    """Until the refill after the last visitor has run (its dials connected or failed)."""
    await until(lambda: pre._fill_soon is None and not pre.pending, "the refill never ran")


async def test_near_the_descriptor_ceiling_a_visitor_is_served_and_the_pool_gives_way(make_relay, site, no_expiry):
    """Pooled descriptors counted in ``site_fds_short``: with the pool full, a visitor who
    would have had its descriptors without the pool was refused (file_descriptors_exhausted)."""
    relay = await make_relay(f"127.0.0.1:{site.port}", fallback_preconnect=2)
    await warm(relay, site, 2)
    await until(lambda: not relay.fallback.splices, "the warm-up visits stayed")
    pooled = relay.fallback.preconnect.fds
    assert pooled == 2
    # The ceiling where the next visitor (its sniffed connection: one descriptor) leaves the
    # tunnels exactly their reserve while the pool holds its two: short with the pool only.
    relay.fd_base = relay.nofile - limits.FD_HEADROOM - server.FD_RESERVE - (relay._fds_held() + 1)
    assert relay.fd_base > 0
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.addresses[0][1])
    try:
        writer.write(b"GET /ceiling")
        assert await asyncio.wait_for(reader.readexactly(12), 5) == b"GET /ceiling"
        snapshot = relay.snapshot()
        assert snapshot.get("fallback:file_descriptors_exhausted", 0) == 0 and snapshot["fallback:connected"] == 4, snapshot
        await _refilled(relay.fallback.preconnect)
        assert not relay.site_fds_short  # the pool did not take the descriptors back for itself
    finally:
        writer.close()


async def test_the_pool_and_the_site_connections_together_stay_under_the_connection_cap(make_relay, site, no_expiry):
    """Pooled connections counted against no cap: the backend saw the site connections and
    the pool (workers x (--fallback-max-connections + N)). Now they share the cap, the pool
    leaves one connection's room for a visitor, and gives way if it has to."""
    relay = await make_relay(f"127.0.0.1:{site.port}", fallback_preconnect=2, fallback_max_connections=3)
    pre = relay.fallback.preconnect
    open_ = lambda: [c for c in site.conns if not c["eof"].is_set()]  # noqa: E731
    await warm(relay, site, 2)
    held = []
    try:
        for i in range(3):  # the cap's worth of visitors, held open
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.addresses[0][1])
            held.append(writer)
            writer.write(b"GET /%d" % i)
            assert await asyncio.wait_for(reader.readexactly(6), 5) == b"GET /%d" % i
            await _refilled(pre)
            assert len(relay.fallback.splices) + pre.fds <= 3, (len(relay.fallback.splices), pre.fds)
            await until(lambda: len(open_()) == len(relay.fallback.splices) + len(pre), "the site's count never settled")
        snapshot = relay.snapshot()
        assert snapshot["fallback:connected"] == 6 and snapshot.get("fallback:max_connections", 0) == 0, snapshot  # 3 warm-up + 3
    finally:
        for writer in held:
            writer.close()


async def test_under_a_budget_pooled_connections_are_reserved_and_give_way_to_a_visitor(make_relay, site, no_expiry, monkeypatch):
    """A pooled connection's receive buffer (a site that speaks, or answers an idle connection)
    was reserved nowhere under --max-memory: the pool refilled whatever the room."""
    relay = await make_relay(f"127.0.0.1:{site.port}", fallback_preconnect=2, max_memory=1 << 40)
    monkeypatch.setattr(relay, "_share_write_buffers", lambda: None)  # the room is the test's from here
    # The smallest room that admits one visitor (nothing open, the pool empty).
    low, high = 0, 1 << 40
    while low < high:
        relay.write_room = (low + high) // 2
        low, high = (low, relay.write_room) if relay.site_room() else (relay.write_room + 1, high)
    one_visitor, pooled = low, 2 * fallback.SOCKET_BUFFER
    relay.write_room = 10 * one_visitor
    await warm(relay, site, 2)
    await until(lambda: not relay.fallback.splices, "the warm-up visits stayed")
    pre = relay.fallback.preconnect
    assert pre.fds == 2
    relay.write_room = one_visitor  # room for one visitor, none for the pool beside it
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.addresses[0][1])
    try:
        writer.write(b"GET /budget")
        assert await asyncio.wait_for(reader.readexactly(11), 5) == b"GET /budget"
        assert relay.snapshot().get("fallback:memory_pressure", 0) == 0  # served: the pool gave way
        await _refilled(pre)
        assert len(relay.fallback.splices) * one_visitor + pre.fds * pooled <= relay.write_room, pre.fds
    finally:
        writer.close()


async def test_near_the_descriptor_ceiling_a_tunnel_is_admitted_and_the_pool_gives_way(make_relay, site, no_expiry):
    """The pool gave way to site visitors only: a ZeroTier tunnel coming when the pool's
    descriptors were the last ones was refused (file_descriptors_exhausted) while the pool
    held them (until they aged out unreplaced)."""
    relay = await make_relay(f"127.0.0.1:{site.port}", fallback_preconnect=2, allow_destination=("127.0.0.0/8",), min_destination_port=1)
    await warm(relay, site, 2)
    await until(lambda: not relay.fallback.splices, "the warm-up visits stayed")
    assert relay.fallback.preconnect.fds == 2
    # The ceiling where the tunnel's connection takes the last descriptor before the headroom
    # while the pool holds its two: short with the pool only.
    relay.fd_base = relay.nofile - limits.FD_HEADROOM - (relay._fds_held() + 1)
    assert relay.fd_base > 0
    client = await Client.connect(relay.addresses[0][1])
    try:
        await until(lambda: relay.stats.opened or relay.stats.refused[stats.FILE_DESCRIPTORS], "the tunnel was never decided")
        assert relay.stats.refused[stats.FILE_DESCRIPTORS] == 0 and relay.stats.opened == 1
        assert relay.fallback.preconnect.fds < 2
    finally:
        await client.close()


def test_dials_owed_before_a_quiet_period_are_not_made_for_a_lone_visit_after_it():
    """Dials owed while the pool could not dial (no room: --fallback-max-connections, the
    descriptors, the memory; or the backend down) outlived the quiet: an hour later, a lone
    visit made the pool dial all of them, for nobody."""
    pool = backend_pool.Pool(4)
    for t in (0.0, 0.1, 0.2):  # a burst while the pool has no room: nothing dialed
        pool.used(t)
        assert pool.pop(A, t)[0] is None
    assert pool.dials_due(A, 0.2) == 2  # owed (and dialed once there is room)
    later = 3600.0
    assert pool.dials_due(A, later) == 0  # cold
    pool.used(later)  # one visitor alone
    assert pool.dials_due(A, later) == 0


async def test_near_the_descriptor_ceiling_a_tunnels_ipv6_socket_opens_and_the_pool_gives_way(make_relay, site, no_expiry):
    """A tunnel's IPv6 UDP socket, opened on its first IPv6 record: with the pool holding
    the last descriptors, the record was dropped (udp_socket_unavailable) and the next
    ones for a second."""
    relay = await make_relay(f"127.0.0.1:{site.port}", fallback_preconnect=2, allow_destination=("127.0.0.0/8", "::1/128"),
                             min_destination_port=1)
    echo6 = await Echo.bind("::1")
    client = await Client.connect(relay.addresses[0][1])
    try:
        await until(lambda: relay.stats.opened == 1, "the tunnel was never admitted")
        await warm(relay, site, 2)
        await until(lambda: not relay.fallback.splices, "the warm-up visits stayed")
        assert relay.fallback.preconnect.fds == 2
        # The ceiling where no descriptor is left before the headroom while the pool holds
        # its two: short with the pool only.
        relay.fd_base = relay.nofile - limits.FD_HEADROOM - relay._fds_held()
        assert relay.fds_left() == 0
        client.send("::1", echo6.port, b"v6 frame" * 3)
        assert (await client.recv(timeout=5))[2] == b"v6 frame" * 3
        assert relay.stats.dropped[stats.UDP_SOCKET_UNAVAILABLE] == 0
    finally:
        await client.close()
        echo6.close()


def test_connections_that_aged_out_unused_are_not_replaced_when_the_name_moved_meanwhile():
    """Aged out unused and to an address the name no longer has: counted as moved, each
    was replaced at the new address (N connections for nobody per name change)."""
    pool = backend_pool.Pool(2)
    for _ in range(3):
        pool.used(0.0)
    for conn in ("a1", "a2"):
        pool.dial_started()
        pool.dialed(conn, A, 0.0)
    later = backend_pool.MAX_AGE + 1.0  # no visitor since, the pool still warm
    assert pool.expire(B, later) == ["a1", "a2"]
    assert pool.dials_due(B, later) == 0


def test_a_cold_or_closed_pool_owes_nothing():
    """What was owed stayed owed once the pool went cold or closed (draining): the relay's
    tick, which refills while anything is owed, then ran the pool (and the backend name's
    refresh) every second for good."""
    for close in (False, True):
        pool = backend_pool.Pool(2)
        for _ in range(3):
            pool.used(0.0)
        assert pool.owed == 2
        if close:
            pool.close()
            pool.used(0.1)  # a visitor during the shutdown delay
        now = 0.1 if close else backend_pool.WARM
        assert pool.dials_due(A, now) == 0
        assert pool.owed == 0, close


async def test_the_pool_gives_way_for_the_tunnels_descriptor_reserve_to_be_set_aside_again(make_relay, site, no_expiry, monkeypatch):
    """Once the tunnels' reserve was released (a tunnel met EMFILE), site connections wait
    until it can be set aside again: the pool's descriptors were not given up for it (the
    kernel's ceiling is simulated: these descriptors and the pool's together)."""
    relay = await make_relay(f"127.0.0.1:{site.port}", fallback_preconnect=2)
    await warm(relay, site, 2)
    await until(lambda: not relay.fallback.splices, "the warm-up visits stayed")
    pre = relay.fallback.preconnect
    assert pre.fds == 2
    while relay.fd_reserve:  # released, as server.py does on EMFILE
        os.close(relay.fd_reserve.pop())
    room = 2 * server.FD_RESERVE  # what is free with the pool empty: just enough
    held: set[int] = set()  # opened by the refill and not closed
    real_open, real_close = os.open, os.close

    def open_(path, flags, *args):
        if len(held) + pre.fds >= room:
            raise OSError(errno.EMFILE, "Too many open files")
        fd = real_open(path, flags, *args)
        held.add(fd)
        return fd

    def close_(fd):
        held.discard(fd)
        real_close(fd)

    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(os, "close", close_)
    try:
        relay._refill_fd_reserve()
    finally:
        monkeypatch.setattr(os, "open", real_open)
        monkeypatch.setattr(os, "close", real_close)
    assert len(relay.fd_reserve) == server.FD_RESERVE and not relay.fd_reserve_short, len(relay.fd_reserve)


# -- pooled connections discarded, by reason; a site that speaks first; a close in the race ---

@contextlib.asynccontextmanager
async def greeting_site():
    """A site that speaks first (an SMTP greeting), then echoes: its port, and the connections
    it accepted."""
    accepted: list[asyncio.StreamWriter] = []

    async def greet(reader, writer):
        accepted.append(writer)
        writer.write(b"220 ready\r\n")
        while data := await reader.read(65536):
            writer.write(data)
        writer.close()

    server = await asyncio.start_server(greet, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], accepted
    finally:
        for w in accepted:
            w.close()
        server.close()


async def test_a_site_that_speaks_first_pauses_the_pool_after_a_few_discards_counted_and_logged_once(make_relay, caplog, no_expiry):
    """Every pooled connection to a site that speaks first (SMTP, SSH) has its greeting
    waiting, so each is discarded and the visitor dialed anyway: a wasted backend connection
    per visit, forever. After ``SPOKE_FIRST_LIMIT`` such discards in a row the pool pauses for
    that backend (one warning naming why); each discard is counted by reason."""
    async with greeting_site() as (port, accepted):
        relay = await make_relay(f"127.0.0.1:{port}", fallback_preconnect=2)
        pre = relay.fallback.preconnect
        visits = 0

        async def visit_greeted() -> None:
            nonlocal visits
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.addresses[0][1])
            writer.write(b"HELO %02d\r\n" % visits)
            assert await asyncio.wait_for(reader.readexactly(20), 5) == b"220 ready\r\nHELO %02d\r\n" % visits
            writer.close()
            visits += 1
            await _refilled(pre)
            for sock in _pooled_socks(relay):  # each pooled one greeted before the next visit
                await until(lambda: _waiting(sock) == b"2", "no greeting waiting")

        for _ in range(20):
            await visit_greeted()
            if not pre.running:
                break
        assert not pre.running, "the pool never stopped for a site that speaks first"
        snapshot = relay.snapshot()
        assert snapshot["fallback_preconnect_discarded:bytes_waiting"] == preconnect.SPOKE_FIRST_LIMIT, snapshot
        assert snapshot["fallback_preconnect_taken"] == 0 and snapshot["fallback_preconnected"] == 0
        stopped = [r for r in caplog.records if "preconnecting paused" in r.getMessage()]
        assert len(stopped) == 1 and "bytes waiting" in stopped[0].getMessage(), [r.getMessage() for r in caplog.records]
        # From now on a visit opens one backend connection, its own.
        before = len(accepted)
        for _ in range(5):
            await visit_greeted()
        assert len(accepted) == before + 5
        assert relay.snapshot()["fallback_preconnect_discarded:bytes_waiting"] == preconnect.SPOKE_FIRST_LIMIT
        assert len([r for r in caplog.records if "preconnecting paused" in r.getMessage()]) == 1
        await relay.close()


async def test_a_pool_that_serves_visitors_between_greeted_discards_keeps_going(make_relay, site, no_expiry, caplog):
    """Only discards in a row stop the pool: one pooled connection with bytes waiting now
    and then (a stale answer) among connections that serve visitors does not."""
    caplog.set_level(logging.INFO, logger="zt_relay.fallback")
    relay = await make_relay(f"127.0.0.1:{site.port}", fallback_preconnect=1)
    pre = relay.fallback.preconnect
    await warm(relay, site, 1)
    for i in range(preconnect.SPOKE_FIRST_LIMIT + 2):
        if i % 2 == 0:  # the site writes to the idle pooled connection: discarded, the visitor dialed
            conn = site.idle()[0]
            conn["writer"].write(b"x")
            sock = _pooled_socks(relay)[0]
            await until(lambda: _waiting(sock) == b"x", "nothing waiting")
        assert (await visit(relay, b"GET /%d" % i))[0] == b"GET /%d" % i
        await _refilled(pre)
        await until(lambda: relay.snapshot()["fallback_preconnected"] == 1 and len(site.idle()) == 1, "no refill")
    assert pre.running
    snapshot = relay.snapshot()
    assert snapshot["fallback_preconnect_discarded:bytes_waiting"] == 3 and snapshot["fallback_preconnect_taken"] == 2, snapshot
    logged = [r.getMessage() for r in caplog.records if "discarded" in r.getMessage()]
    assert len(logged) == 1 and "bytes_waiting" in logged[0], logged  # once per reason, not per discard


@pytest.mark.parametrize("how", ["close", "reset"])
async def test_a_pooled_connection_the_site_closes_after_the_check_gets_the_visitors_bytes_on_a_fresh_dial(make_relay, site, how, monkeypatch, no_expiry):
    """The site closes (or resets) a pooled connection right after the relay checked it: the
    FIN or RST was in flight. The visitor's first flight went into a connection the site
    never read from, so nothing was processed: the relay sends that same flight on a fresh
    dial once, and the visitor is served instead of seeing a close."""
    relay = await make_relay(f"127.0.0.1:{site.port}", fallback_preconnect=1)
    await warm(relay, site, 1)
    [conn] = site.idle()
    [pooled] = _pooled_socks(relay)
    real_condition = preconnect.condition

    def closed_right_after_the_check(sock):
        answer = real_condition(sock)
        if sock is pooled:
            s = conn["writer"].get_extra_info("socket")
            # Now, before the visitor's bytes arrive (the transport's own close comes a loop
            # iteration later, once the site's kernel has acknowledged them: not the race).
            s.shutdown(socket.SHUT_RDWR) if how == "close" else _reset_now(s)
            conn["writer"].transport.abort()
        return answer

    monkeypatch.setattr(preconnect, "condition", closed_right_after_the_check)
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.addresses[0][1])
    try:
        writer.write(b"GET /raced")
        assert await asyncio.wait_for(reader.readexactly(10), 5) == b"GET /raced"
    finally:
        writer.close()
    assert [c["data"] for c in site.conns if c["data"]][-1] == b"GET /raced"
    snapshot = relay.snapshot()
    assert snapshot["fallback_preconnect_discarded:closed_unanswered"] + snapshot["fallback_preconnect_discarded:send_failed"] == 1, snapshot
    assert snapshot["fallback:connected"] == 3, snapshot  # the visitor counted once


def _reset_now(sock) -> None:
    """Resets ``sock``'s connection at once (connect(AF_UNSPEC): the kernel's tcp_disconnect)."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.connect(sock.fileno(), ctypes.c_char_p(bytes(16)), 16) == 0, os.strerror(ctypes.get_errno())


def _reset_seen(relay: Relay, visitor: socket.socket) -> None:
    """Resets the visitor's connection and waits (bounded) until the relay's socket for it
    is closed in the kernel: loopback delivers the RST at once, unless softirqs are deferred."""
    _reset_now(visitor)
    [s] = relay.fallback.splices
    deadline = time.monotonic() + 10
    while not fallback.streams.is_over(s.client.transport):
        assert time.monotonic() < deadline, "the relay never saw the visitor's reset"
        time.sleep(0.001)


async def test_a_site_that_closes_without_a_byte_after_reading_the_request_is_not_sent_it_twice(make_relay, no_expiry):
    """A site that read the first flight and closed unanswered (or after the visitor sent
    more) is never sent it again: it may have processed it."""
    got: list[bytes] = []
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader, writer):
        writers.append(writer)
        index = len(got)
        got.append(b"")
        while data := await reader.read(65536):
            got[index] += data
            if got[index].endswith(b"END"):
                break  # closes without a byte
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        relay = await make_relay(f"127.0.0.1:{server.sockets[0].getsockname()[1]}", fallback_preconnect=1)
        for i in range(2):  # the pool warms up (these are answered nothing too, dialed)
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.addresses[0][1])
            writer.write(b"POST /%d END" % i)
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
        await until(lambda: relay.snapshot()["fallback_preconnected"] == 1, "the pool never filled")
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.addresses[0][1])
        writer.write(b"POST /2 END")  # on the pooled connection: read, closed unanswered, not sent again
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        await until(lambda: relay.snapshot()["fallback_preconnected"] == 1, "no refill")
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.addresses[0][1])
        writer.write(b"POST /3 ")  # on the pooled connection too
        await until(lambda: any(g == b"POST /3 " for g in got), "the first flight never arrived")
        writer.write(b"END")  # more than the first flight went: never replayed
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        await until(lambda: not relay.fallback.splices, "the visits stayed")
        assert got.count(b"POST /2 END") == 1, got  # the pooled connection's only
        assert [g for g in got if g.startswith(b"POST /3")] == [b"POST /3 END"], got  # one connection, never replayed
        snapshot = relay.snapshot()
        assert snapshot["fallback_preconnect_taken"] == 2 and snapshot["fallback_preconnect_discarded:closed_unanswered"] == 0, snapshot
        assert snapshot["fallback:connected"] == 4, snapshot
    finally:
        for w in writers:
            w.close()
        server.close()


async def test_a_fresh_dial_for_a_raced_pooled_connection_that_fails_closes_the_visitor_counted_once(make_relay, site, monkeypatch, no_expiry):
    """The site closed the pooled connection after the check and is gone (stopped listening):
    the fresh dial is refused, the visitor sees a close, and it is counted once (connected, on
    the pooled connection), nothing left open."""
    relay = await make_relay(f"127.0.0.1:{site.port}", fallback_preconnect=1)
    await warm(relay, site, 1)
    [conn] = site.idle()
    [pooled] = _pooled_socks(relay)
    real_condition = preconnect.condition

    def closed_right_after_the_check(sock):
        answer = real_condition(sock)
        if sock is pooled:
            site.server.close()  # no more connections either
            conn["writer"].get_extra_info("socket").shutdown(socket.SHUT_RDWR)
            conn["writer"].transport.abort()
        return answer

    monkeypatch.setattr(preconnect, "condition", closed_right_after_the_check)
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.addresses[0][1])
    try:
        writer.write(b"GET /gone")
        try:
            assert await asyncio.wait_for(reader.read(), 5) == b""
        except ConnectionResetError:
            pass
    finally:
        writer.close()
    await until(lambda: not relay.fallback.splices, "the visit stayed")
    snapshot = relay.snapshot()
    assert snapshot["fallback_preconnect_discarded:closed_unanswered"] + snapshot["fallback_preconnect_discarded:send_failed"] == 1, snapshot
    assert snapshot["fallback:connected"] + snapshot["fallback:backend_refused"] == 3, snapshot  # the visitor once
    await until(lambda: relay._fds_held() == relay.fallback.preconnect.fds + (relay.fallback.spare is not None),
                "descriptors left behind")


@pytest.mark.parametrize("how", ["close", "reset"])
async def test_a_site_that_read_the_first_flight_and_closed_unanswered_never_gets_it_again(make_relay, how, no_expiry):
    """A site that read the visitor's first flight and then closed (nginx's ``return 444``) or
    reset (a worker that crashed on it) without a byte back processed it: sending it again on
    a fresh dial would make it process a request twice (a POST, a payment, a query of death).
    Its kernel acknowledged those bytes before its FIN or RST: only a connection whose site
    acknowledged none of them (closed before they arrived: the race) is retried."""
    got: list[bytes] = []
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader, writer):
        writers.append(writer)
        data = await reader.read(65536)
        got.append(data)
        if data.startswith(b"POST /pooled"):
            if how == "reset":
                writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return
        writer.write(data)
        while data := await reader.read(65536):
            writer.write(data)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        relay = await make_relay(f"127.0.0.1:{server.sockets[0].getsockname()[1]}", fallback_preconnect=1)
        streams = [await asyncio.open_connection("127.0.0.1", relay.addresses[0][1]) for _ in range(2)]
        for _, writer in streams:  # two visits at once: the pool starts cold, then fills
            writer.write(b"GET /warm")
        for reader, writer in streams:
            assert await asyncio.wait_for(reader.readexactly(9), 5) == b"GET /warm"
            writer.close()
        await until(lambda: relay.snapshot()["fallback_preconnected"] == 1, "the pool never filled")
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.addresses[0][1])
        try:
            writer.write(b"POST /pooled")
            try:
                assert await asyncio.wait_for(reader.read(), 5) == b""
            except ConnectionResetError:
                pass
        finally:
            writer.close()
        await until(lambda: not relay.fallback.splices, "the visit stayed")
        assert got.count(b"POST /pooled") == 1, got
        snapshot = relay.snapshot()
        assert snapshot["fallback_preconnect_taken"] == 1 and snapshot["fallback_preconnect_discarded:closed_unanswered"] == 0, snapshot
    finally:
        for w in writers:
            w.close()
        server.close()


async def _visits_until_paused(relay: Relay, served, before_each, limit: int = 20) -> None:
    """Visits (each answered by ``served``) until the pool pauses; ``before_each`` runs before
    every visit after the first (the pooled connections made unusable by the site)."""
    pre = relay.fallback.preconnect
    for i in range(limit):
        if i:
            await before_each()
        await served(i)
        await _refilled(pre)
        if not pre.running:
            return
    raise AssertionError("the pool never paused")


async def test_a_site_that_closes_idle_connections_early_pauses_the_pool_counted_and_logged(make_relay, caplog, no_expiry):
    """A site with an idle timeout under the pool's MAX_AGE (a Go server's ReadHeaderTimeout of
    1 s) closes every pooled connection before a visitor comes: each is discarded as `closed`
    and the visitor dialed anyway. Left on, the pool costs that site N connections per visit
    for nothing; like a greeting, so many such discards in a row pause it (one warning)."""
    accepted: list[asyncio.StreamWriter] = []

    async def close_when_idle(reader, writer):
        accepted.append(writer)
        try:
            data = await asyncio.wait_for(reader.read(65536), 0.05)
        except TimeoutError:
            writer.close()  # nothing said: the site's idle timeout
            return
        while data:
            writer.write(data)
            data = await reader.read(65536)
        writer.close()

    server = await asyncio.start_server(close_when_idle, "127.0.0.1", 0)
    try:
        relay = await make_relay(f"127.0.0.1:{server.sockets[0].getsockname()[1]}", fallback_preconnect=2)
        pre = relay.fallback.preconnect

        async def served(i: int) -> None:
            assert (await visit(relay, b"GET /%02d" % i))[0] == b"GET /%02d" % i

        async def site_closed_the_pooled_ones() -> None:
            for sock in _pooled_socks(relay):
                await until(lambda: _waiting(sock) == b"", "the site never closed a pooled connection")

        await _visits_until_paused(relay, served, site_closed_the_pooled_ones)
        snapshot = relay.snapshot()
        assert snapshot["fallback_preconnect_paused"] == 1, snapshot  # shown, not only logged
        assert "zt_relay_fallback_preconnect_paused 1\n" in metrics.render(snapshot)
        assert snapshot["fallback_preconnect_discarded:closed"] == preconnect.SPOKE_FIRST_LIMIT, snapshot
        assert snapshot["fallback_preconnect_taken"] == 0 and snapshot["fallback_preconnected"] == 0, snapshot
        paused = [r.getMessage() for r in caplog.records if "preconnecting paused" in r.getMessage()]
        assert len(paused) == 1 and "closed" in paused[0], paused
        before = len(accepted)
        for i in range(3):  # paused: a visit opens one backend connection, its own
            await served(i)
        assert len(accepted) == before + 3
        await relay.close()
    finally:
        for w in accepted:
            w.close()
        server.close()


async def test_a_paused_pool_comes_back_and_pauses_twice_as_long_if_the_site_still_spoke_first(make_relay, caplog, no_expiry, monkeypatch):
    """The pause is not for good: a site reloading (closing its idle connections) or
    reconfigured later gets the pool back; a site that still speaks first pauses it again, for
    twice as long (so it costs such a site a few connections per hour at most)."""
    monkeypatch.setattr(preconnect, "PAUSE_MIN", 0.3)
    async with greeting_site() as (port, accepted):
        relay = await make_relay(f"127.0.0.1:{port}", fallback_preconnect=2)
        pre = relay.fallback.preconnect

        async def served(i: int) -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.addresses[0][1])
            writer.write(b"HELO %02d\r\n" % i)
            assert await asyncio.wait_for(reader.readexactly(20), 5) == b"220 ready\r\nHELO %02d\r\n" % i
            writer.close()

        async def greeted() -> None:
            for sock in _pooled_socks(relay):
                await until(lambda: _waiting(sock) == b"2", "no greeting waiting")

        await _visits_until_paused(relay, served, greeted)
        await until(lambda: pre.running, "the pool never came back", timeout=10)
        assert relay.snapshot()["fallback_preconnect_paused"] == 0
        await _visits_until_paused(relay, served, greeted)
        paused = [r.getMessage() for r in caplog.records if "preconnecting paused" in r.getMessage()]
        assert len(paused) == 2 and "for 0.3 s" in paused[0] and "for 0.6 s" in paused[1], paused
        assert relay.snapshot()["fallback_preconnect_discarded:bytes_waiting"] == 2 * preconnect.SPOKE_FIRST_LIMIT
        resume = pre._resume
        await relay.close()  # closed while paused: it never comes back
        assert resume.cancelled() and pre._resume is None and not pre.running


async def test_a_pause_with_a_dial_in_flight_leaves_the_pool_its_full_size_when_it_resumes(monkeypatch, no_expiry):
    """A pause closes the dials in flight too (a backend across a network: the handshake
    outlives the connect call). They were still counted as dialing after the resume, each
    pause taking a slot from the pool for good: one of size 1 never dialed again."""
    loop = asyncio.get_running_loop()
    monkeypatch.setattr(preconnect, "PAUSE_MIN", 0.05)
    site = await Site().start()
    address = ("127.0.0.1", site.port)
    monkeypatch.setattr(preconnect, "_established", lambda sock: False)  # seen connected a loop iteration later
    pre = preconnect.Preconnector(loop, 1, lambda: address, lambda a: fallback._dial(a, b"")[0], lambda: True, lambda exc, delay: None)
    try:
        for _ in range(preconnect.SPOKE_FIRST_LIMIT):  # pooled connections the site closed
            mine, theirs = socket.socketpair()
            theirs.close()
            pre.pool.entries.append(backend_pool.Entry(mine, address, loop.time()))
        pre._start(address)  # a replacement in flight when the next visitor comes
        assert len(pre.pending) == 1
        assert pre.take(address) is None and not pre.running  # three closed ones: paused
        assert not pre.pending
        await until(lambda: pre.running, "the pool never came back")
        for _ in range(2):  # two visits within MAX_AGE: the pool is in use again, one dial owed
            assert pre.take(address) is None
        pre.fill()
        await until(lambda: len(pre.pool) == 1, "the resumed pool never dialed")
    finally:
        pre.close()
        site.close()


def _closed_right_after_the_check(conn: dict, pooled: socket.socket):
    """``preconnect.condition`` with the site closing ``pooled`` (its side: ``conn``) just after
    the check found it usable: the race a fresh dial retries."""
    real_condition = preconnect.condition

    def condition(sock):
        answer = real_condition(sock)
        if sock is pooled:
            conn["writer"].get_extra_info("socket").shutdown(socket.SHUT_RDWR)
            conn["writer"].transport.abort()
        return answer

    return condition


async def test_a_visitor_that_resets_during_the_fresh_dial_of_a_raced_pooled_connection_is_not_sent_to_the_site(make_relay, site, monkeypatch, no_expiry):
    """The site closed the pooled connection after the check, and the fresh dial for the
    visitor's first flight takes a round trip (a backend across a network); the visitor
    resets meanwhile (its reading is paused: the transport does not see it). Like a visitor
    who resets while its first dial is made, its request never reaches the site, and the
    visit is counted once."""
    relay = await make_relay(f"127.0.0.1:{site.port}", fallback_preconnect=1)
    await warm(relay, site, 1)
    [conn] = site.idle()
    [pooled] = _pooled_socks(relay)
    real_dial = fallback._dial
    visitor: list[socket.socket] = []

    closed_right_after_the_check = _closed_right_after_the_check(conn, pooled)

    def slow_dial(address, first, socket_buffer=None, sock=None):
        if not first:
            return real_dial(address, first, socket_buffer, sock)
        sock, _ = real_dial(address, b"", socket_buffer, sock)  # nothing sent: the handshake not over yet
        _reset_seen(relay, visitor[0])  # the visitor gives up meanwhile
        return sock, None

    monkeypatch.setattr(preconnect, "condition", closed_right_after_the_check)
    monkeypatch.setattr(fallback, "_dial", slow_dial)
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.addresses[0][1])
    visitor.append(writer.get_extra_info("socket"))
    try:
        writer.write(b"GET /raced")
        await until(lambda: relay.snapshot()["fallback_preconnect_discarded:closed_unanswered"] == 1, "no retry")
        await until(lambda: not relay.fallback.splices, "the visit stayed")
    finally:
        writer.close()
    assert [c["data"] for c in site.conns if c["data"]] == [b"GET /warm"] * 2  # never sent to the site
    snapshot = relay.snapshot()
    assert snapshot["fallback:connected"] == 3 and snapshot["fallback:client_reset"] == 0, snapshot  # counted once
    assert snapshot["fallback_closed:client_reset"] == 1, snapshot
    await until(lambda: relay._fds_held() == relay.fallback.preconnect.fds + (relay.fallback.spare is not None),
                "descriptors left behind")


async def test_a_visitor_already_reset_when_its_raced_pooled_connection_closes_gets_no_fresh_dial(make_relay, site, monkeypatch, no_expiry):
    """The pooled connection's close and the visitor's reset are in the same loop iteration,
    the close handled first: the visitor is gone (its reset waits in the kernel), so its first
    flight is not sent again on a fresh dial (on loopback it would leave at once, the check
    after the dial too late); the visit ends as usual, nothing left open."""
    relay = await make_relay(f"127.0.0.1:{site.port}", fallback_preconnect=1)
    await warm(relay, site, 1)
    [conn] = site.idle()
    [pooled] = _pooled_socks(relay)
    real_unread = preconnect.unread
    visitor: list[socket.socket] = []

    closed_right_after_the_check = _closed_right_after_the_check(conn, pooled)

    def reset_first(sock):
        _reset_seen(relay, visitor[0])  # the visitor's reset, not yet seen by its transport
        return real_unread(sock)

    monkeypatch.setattr(preconnect, "condition", closed_right_after_the_check)
    monkeypatch.setattr(preconnect, "unread", reset_first)
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.addresses[0][1])
    visitor.append(writer.get_extra_info("socket"))
    try:
        writer.write(b"GET /raced")
        await until(lambda: relay.snapshot()["fallback_closed:closed"] + relay.snapshot()["fallback_closed:client_reset"]
                    + relay.snapshot()["fallback_closed:backend_reset"] == 3, "the visit stayed")
    finally:
        writer.close()
    assert [c["data"] for c in site.conns if c["data"]] == [b"GET /warm"] * 2  # never sent to the site
    snapshot = relay.snapshot()
    assert snapshot["fallback:connected"] == 3 and snapshot["fallback_preconnect_discarded:closed_unanswered"] == 0, snapshot
    await until(lambda: not relay.fallback.splices and relay._fds_held() == relay.fallback.preconnect.fds + (relay.fallback.spare is not None),
                "descriptors left behind")
