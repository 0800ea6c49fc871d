"""A ``--fallback`` backend given by name is resolved off the connection path: one lookup
at a time, the last good address served while it is refreshed, failures counted by reason.

The relay runs in this process (real loopback sockets) with ``backend_name.getaddrinfo``
replaced by a resolver that counts its calls and answers when the test lets it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from relay import backend_name, fallback
from relay.config import Endpoint, RelayConfig
from relay.server import Relay

#: Seconds a resolved address is fresh in these tests (the relay's default is 10 s).
FRESH = 0.2


class Resolver:
    """Stands in for ``backend_name.getaddrinfo``: counts calls; each answers once ``gate`` is set,
    with ``answer`` (a port on 127.0.0.1) or by raising ``error``."""

    def __init__(self, port: int) -> None:
        self.calls = 0
        self.port = port
        self.gate = asyncio.Event()
        self.gate.set()
        self.error: Exception | None = None

    async def __call__(self, loop, host, port):
        self.calls += 1
        await self.gate.wait()
        if self.error is not None:
            raise self.error
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", self.port))]


@pytest.fixture
async def site():
    async def echo(reader, writer):
        while data := await reader.read(65536):
            writer.write(data)
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()


@pytest.fixture
async def resolver(site, monkeypatch):
    monkeypatch.setattr(fallback, "DNS_CACHE_SECONDS", FRESH)
    resolver = Resolver(site)
    monkeypatch.setattr(backend_name, "getaddrinfo", resolver)
    return resolver


@pytest.fixture
async def named_relay(resolver):
    """A relay whose --fallback is ``site.example:8443`` (answered by ``resolver``)."""
    relay = Relay(RelayConfig(listen=(Endpoint("127.0.0.1", 0),), fallback=Endpoint("site.example", 8443), health_listen=None))
    await relay.start()
    yield relay, resolver
    await relay.close()


async def visit(relay: Relay, text: bytes, timeout: float = 5.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.addresses[0][1])
    try:
        writer.write(text)
        return await asyncio.wait_for(reader.readexactly(len(text)), timeout)
    finally:
        writer.close()


async def stale() -> None:
    """Lets the resolved address age past its freshness (time itself is the condition)."""
    await asyncio.sleep(FRESH * 1.5)


async def test_after_expiry_a_burst_of_visitors_costs_one_lookup_and_none_of_them_waits_for_it(named_relay):
    relay, resolver = named_relay
    assert await visit(relay, b"GET /first") == b"GET /first"
    resolver.gate.clear()  # the next refresh hangs (a slow DNS server) until the burst is served
    calls = resolver.calls
    await stale()
    while relay.fallback.name.lookup is None:  # the refresh is due: in flight, hanging
        relay.fallback.name.current()
        await asyncio.sleep(FRESH / 4)
    answers = await asyncio.gather(*(visit(relay, b"GET /%d" % i) for i in range(8)))
    assert answers == [b"GET /%d" % i for i in range(8)]
    assert resolver.calls == calls + 1  # one refresh in flight, not one lookup per visitor
    resolver.gate.set()
    await stale()
    assert await visit(relay, b"GET /again") == b"GET /again"


async def test_a_failing_refresh_keeps_the_last_good_address_and_is_counted_by_reason(named_relay, caplog, monkeypatch):
    relay, resolver = named_relay
    monkeypatch.setattr(backend_name, "RETRY", 60.0)  # no retry within the test: its lookups are counted
    assert await visit(relay, b"GET /first") == b"GET /first"
    resolver.error = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    name = relay.fallback.name
    while not +name.failures:  # the next refresh (due after FRESH) fails (+: counts above 0)
        name.current()
        await asyncio.sleep(FRESH / 4)
    calls = resolver.calls
    for i in range(5):
        assert await visit(relay, b"GET /%d" % i) == b"GET /%d" % i
    snapshot = relay.snapshot()
    assert snapshot.get("fallback_dns_failures:no_such_name", 0) >= 1, snapshot
    assert resolver.calls == calls  # failures are retried after a pause, not per visitor
    assert any("site.example" in r.getMessage() and "no_such_name" in r.getMessage() for r in caplog.records)
    assert snapshot.get("fallback:connected") == 6, snapshot


@pytest.fixture
def slow_first_answer(resolver):
    resolver.gate.clear()  # before the relay starts: its first lookup hangs


async def test_visitors_before_the_first_answer_share_one_lookup(slow_first_answer, named_relay):
    relay, resolver = named_relay
    visits = [asyncio.ensure_future(visit(relay, b"GET /%d" % i)) for i in range(4)]
    while relay.fallback is None or len(relay.fallback.splices) < 4:  # all four wait for the address
        await asyncio.sleep(0.01)
    assert resolver.calls == 1
    resolver.gate.set()
    assert await asyncio.gather(*visits) == [b"GET /%d" % i for i in range(4)]


async def test_a_lookup_that_never_answers_times_out_counted_and_the_next_one_still_starts(named_relay, monkeypatch):
    """A DNS server that never answers must not pin the one lookup in flight for good."""
    from relay import backend_name

    relay, resolver = named_relay
    monkeypatch.setattr(backend_name, "LOOKUP_TIMEOUT", 0.2)
    monkeypatch.setattr(backend_name, "RETRY", 0.1)
    assert await visit(relay, b"GET /first") == b"GET /first"
    resolver.gate.clear()  # every lookup from now on hangs
    await stale()
    assert await visit(relay, b"GET /stale") == b"GET /stale"  # starts the refresh, served at once
    name = relay.fallback.name
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while name.failures["timeout"] < 2:  # timed out, retried (on demand, as a visitor asks), timed out again
        assert loop.time() < deadline, name.failures
        assert name.current() is not None  # the last good address all along
        await asyncio.sleep(0.05)
    assert resolver.calls >= 3
    resolver.gate.set()
    deadline = loop.time() + 10
    while name.lookup is not None or name.due <= loop.time():  # a good answer again
        assert loop.time() < deadline, name.failures
        name.current()
        await asyncio.sleep(0.05)
    assert relay.snapshot()["fallback_dns_failures:timeout"] >= 2
    assert await visit(relay, b"GET /after") == b"GET /after"


@pytest.fixture
def name_unknown(resolver, monkeypatch):
    monkeypatch.setattr(backend_name, "RETRY", 60.0)  # the start's lookup only, within the test
    resolver.error = socket.gaierror(socket.EAI_NONAME, "Name or service not known")  # from the start


async def test_a_name_that_never_resolved_fails_visitors_fast_without_a_lookup_each(name_unknown, named_relay):
    """DNS down from the start: visitors are closed (backend_error), the failure is counted
    by reason, and a burst of visitors is not a burst of lookups (retried after a pause)."""
    relay, resolver = named_relay

    async def refused() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.addresses[0][1])
        writer.write(b"GET / HTTP/1.1\r\n\r\n")
        try:
            return await asyncio.wait_for(reader.read(), 5)
        except ConnectionResetError:
            return b""
        finally:
            writer.close()

    assert await asyncio.gather(*(refused() for _ in range(8))) == [b""] * 8
    snapshot = relay.snapshot()
    assert snapshot.get("fallback:backend_error") == 8, snapshot
    assert snapshot.get("fallback_dns_failures:no_such_name", 0) >= 1, snapshot
    assert resolver.calls == 1, resolver.calls  # the start's lookup; a retry only after RETRY


# -- a real resolver that never answers, in a private mount and network namespace -------------

_HUNG_DNS_DRIVER = r"""
import os, signal, socket, subprocess, sys, time
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
subprocess.run(["mount", "--bind", sys.argv[1], "/etc/resolv.conf"], check=True)
dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
dns.bind(("127.0.0.1", 53))  # takes the queries, answers none
relay = subprocess.Popen([sys.executable, "-m", "relay", "127.0.0.1:0", "--fallback", "site.example:80",
                          "--health-listen", "off", "--shutdown-delay", "0", "--drain-timeout", "0"],
                         stderr=subprocess.PIPE, text=True)
for line in relay.stderr:
    if "relay listening" in line:
        break
dns.settimeout(30)
dns.recvfrom(512)  # the relay's lookup is in flight (and will never be answered)
relay.send_signal(signal.SIGTERM)
try:
    print("exit", relay.wait(timeout=float(sys.argv[2])))
except subprocess.TimeoutExpired:
    relay.kill()
    print("still running")
"""


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare (private namespaces)")
def test_a_lookup_that_never_answers_does_not_hold_the_relays_exit(tmp_path):
    """SIGTERM while the backend's name is being looked up and DNS never answers (the
    resolver's own timeouts: 30 s x 5 tries): the relay exits once drained, not when the
    lookup thread gives up (uvloop's loop, like asyncio's executor, waits for it at exit:
    past Kubernetes' grace period the pod is killed)."""
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\noptions timeout:30 attempts:5\n")
    driver = tmp_path / "driver.py"
    driver.write_text(_HUNG_DNS_DRIVER)
    done = subprocess.run(["unshare", "--mount", "--net", sys.executable, str(driver), str(resolv), "20"],
                          capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[2])
    assert done.stdout.strip() == "exit 0", (done.stdout, done.stderr[-2000:])


async def test_the_name_is_refreshed_while_no_visitor_comes_so_the_first_one_after_a_quiet_spell_gets_the_new_address(named_relay):
    """README: 'refreshed in the background every 10 s'. A site quiet for longer than that
    whose backend moved (a Service recreated, a load balancer's address rotated) must not
    send its next visitors to the old address (refused, or a connect timeout if it is gone)."""
    relay, resolver = named_relay
    assert await visit(relay, b"GET /first") == b"GET /first"
    old_site = resolver.port

    async def moved(reader, writer):  # the backend's new address answers with a mark
        data = await reader.read(65536)
        writer.write(b"new:" + data)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(moved, "127.0.0.1", 0)
    try:
        resolver.port = server.sockets[0].getsockname()[1]
        calls = resolver.calls
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 25 * FRESH  # many refresh periods, no visitor
        while resolver.calls == calls and loop.time() < deadline:
            await asyncio.sleep(FRESH / 4)
        assert resolver.calls > calls, "no lookup while no visitor came"
        while relay.fallback.name.lookup is not None:  # the refresh has answered
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.addresses[0][1])
        writer.write(b"GET /after")
        assert await asyncio.wait_for(reader.read(), 5) == b"new:GET /after", old_site
        writer.close()
    finally:
        server.close()
