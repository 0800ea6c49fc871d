"""The health port's clients are bounded like the tunnels' (relay/health.py): a scraper that
stops reading is let go after REQUEST_TIMEOUT, and connections past MAX_CONNECTIONS are closed
at once, so the port can't hold descriptors without end."""

import asyncio
import socket
import time

import pytest

from relay import health
from relay.health import HealthServer

BIG = 8 << 20  # far more than the kernel's buffers on both sides hold


class Source:
    live = ready = True

    def metrics_text(self) -> str:
        return "x" * BIG


@pytest.fixture
async def server(monkeypatch):
    monkeypatch.setattr(health, "REQUEST_TIMEOUT", 0.5)
    served = HealthServer(Source())
    host, port = (await served.start("127.0.0.1", 0))[:2]
    yield served, (host, port)
    await served.close()


def _non_reader(address) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    sock.connect(address)
    sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    return sock


async def _until(condition, timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def _read_all(sock: socket.socket) -> int:
    """Bytes until the end of the connection (EOF or a reset)."""
    sock.settimeout(10)
    got = 0
    try:
        while chunk := sock.recv(1 << 20):
            got += len(chunk)
    except ConnectionResetError:
        pass
    return got


async def test_a_scraper_that_stops_reading_is_let_go_after_the_request_timeout(server):
    served, address = server
    sock = _non_reader(address)
    try:
        assert await _until(lambda: served.connections == 1), "never served"
        assert await _until(lambda: served.connections == 0), "still writing to a client that reads nothing"
        got = await asyncio.to_thread(_read_all, sock)
        assert got < BIG  # cut short, not served in full once it reads again
    finally:
        sock.close()


async def test_connections_past_the_cap_are_closed_at_once(server, monkeypatch):
    served, address = server
    monkeypatch.setattr(health, "REQUEST_TIMEOUT", 30.0)  # the held ones stay while the test runs
    held = []
    try:
        for _ in range(health.MAX_CONNECTIONS):
            sock = socket.create_connection(address)  # silent: waits for its request
            held.append(sock)
        assert await _until(lambda: served.connections == health.MAX_CONNECTIONS)
        extra = socket.create_connection(address)
        held.append(extra)
        extra.settimeout(5)
        assert await asyncio.to_thread(extra.recv, 100) == b""  # closed without an answer
        assert served.connections == health.MAX_CONNECTIONS
    finally:
        for sock in held:
            sock.close()


async def test_the_relay_counts_the_health_ports_connections_as_descriptors(server):
    from relay.config import RelayConfig
    from relay.server import Relay

    served, address = server
    relay = Relay(RelayConfig(health_listen=None))
    without = relay._fds_held()
    relay.health = served
    sock = socket.create_connection(address)  # silent: held until REQUEST_TIMEOUT
    try:
        assert await _until(lambda: served.connections == 1)
        assert relay._fds_held() == without + 1
    finally:
        sock.close()
