"""``--fallback``: connections that aren't ZeroTier go to a backend, byte for byte.

The real relay process runs on loopback with a small asyncio backend written here; the
probe suite against real nginx is in ``test_fallback_probes.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct

import pytest

from relay import proxy_protocol
from tests import ports
from tests.relay.conftest import Client

LOOPBACK = ("--allow-destination", "127.0.0.0/8", "--min-destination-port", "1")
PAYLOAD = os.urandom(300_000)


class Backend:
    """A TCP backend on loopback. ``mode``: ``echo`` (echo until EOF, then close),
    ``greet`` (say hello first, then echo), ``reply_at_eof`` (read everything, then answer
    with its length and close), ``silent`` (accept and never read)."""

    def __init__(self, mode: str = "echo") -> None:
        self.mode = mode
        self.received: list[bytes] = []  # one entry per connection, filled until EOF
        self.connections = 0
        self.eof = asyncio.Event()
        self.accepted = asyncio.Event()
        self.server: asyncio.AbstractServer | None = None
        self.port = 0
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> Backend:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        index = len(self.received)
        self.received.append(b"")
        self._writers.append(writer)
        self.accepted.set()
        try:
            if self.mode == "silent":
                await asyncio.Event().wait()
            if self.mode == "greet":
                writer.write(b"220 backend ready\r\n")
            while data := await reader.read(65536):
                self.received[index] += data
                if self.mode in ("echo", "greet"):
                    writer.write(data)
                    await writer.drain()
            self.eof.set()
            if self.mode == "reply_at_eof":
                writer.write(b"got %d bytes" % len(self.received[index]))
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        for writer in self._writers:
            writer.close()
        self.server.close()


@pytest.fixture
async def backend():
    backends: list[Backend] = []

    async def make(mode: str = "echo") -> Backend:
        b = await Backend(mode).start()
        backends.append(b)
        return b

    yield make
    for b in backends:
        await b.close()


async def read_all(reader: asyncio.StreamReader, timeout: float = 10.0) -> bytes:
    return await asyncio.wait_for(reader.read(), timeout)


async def test_a_non_zerotier_connection_reaches_the_backend_byte_for_byte_both_ways(start_relay, backend):
    site = await backend("echo")
    relay = await start_relay("--fallback", site.address)
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    request = b"GET / HTTP/1.1\r\nHost: site\r\n\r\n" + PAYLOAD
    writer.write(request)
    echoed = await asyncio.wait_for(reader.readexactly(len(request)), 10)
    writer.write_eof()
    assert await read_all(reader) == b""
    assert echoed == request
    assert site.received == [request]
    writer.close()


async def test_the_backend_may_be_a_dns_name(start_relay, backend):
    site = await backend("echo")
    if socket.getaddrinfo("localhost", site.port, type=socket.SOCK_STREAM)[0][4][0] != "127.0.0.1":
        pytest.skip("localhost does not resolve to 127.0.0.1 first here")
    relay = await start_relay("--fallback", f"localhost:{site.port}")
    for i in range(3):  # resolved for the first, reused for the others
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        writer.write(b"GET %d" % i)
        assert await asyncio.wait_for(reader.readexactly(5), 5) == b"GET %d" % i
        writer.close()
    assert site.connections == 3


@pytest.mark.parametrize("first", [b"\x16", b"\x17\x03\x01", b"\x17\x03\x03\x00\x05"], ids=["tls", "other_version", "other_length"])
async def test_the_bytes_read_to_decide_are_passed_on_even_when_they_arrive_one_by_one(start_relay, backend, first):
    site = await backend("reply_at_eof")
    relay = await start_relay("--fallback", site.address)
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    stream = first + b"rest of the stream"
    for i in range(len(stream)):
        writer.write(stream[i:i + 1])
        await writer.drain()
        await asyncio.sleep(0.01)
    writer.write_eof()
    assert await read_all(reader) == b"got %d bytes" % len(stream)
    assert site.received == [stream]
    writer.close()


async def test_a_zerotier_hello_still_gets_a_tunnel(start_relay, backend, echo, connect):
    site = await backend("echo")
    relay = await start_relay("--fallback", site.address, *LOOPBACK)
    client = await connect(relay.port)
    client.send(echo.host, echo.port, b"z" * 64)
    assert (await client.recv())[2] == b"z" * 64
    assert site.connections == 0
    metrics = await relay.metrics()
    assert metrics["zt_relay_tunnels_active"] == 1
    assert metrics["zt_relay_fallback_connections_active"] == 0


async def test_a_legacy_client_gets_a_tunnel_only_with_a_legacy_target(start_relay, backend, echo):
    site = await backend("echo")
    relay = await start_relay("--fallback", site.address, "--legacy-target", f"{echo.host}:{echo.port}", *LOOPBACK)
    client = await Client.connect(relay.port, hello=False)
    try:
        client.send_raw(b"\x17\x03\x03\x00\x20" + b"L" * 32)
        payload = await asyncio.wait_for(client.records.get(), 5)
        assert payload == b"L" * 32
        assert site.connections == 0
    finally:
        await client.close()


async def test_a_silent_client_sees_the_backends_greeting_after_the_sniff_timeout(start_relay, backend):
    site = await backend("greet")
    relay = await start_relay("--fallback", site.address, "--sniff-timeout", "0.3")
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    assert await asyncio.wait_for(reader.readline(), 5) == b"220 backend ready\r\n"
    writer.write(b"\x17\x03\x03\x00\x04\x01\x0e\x00\x02")  # too late to be a tunnel: it is the backend's now
    assert await asyncio.wait_for(reader.readexactly(9), 5) == b"\x17\x03\x03\x00\x04\x01\x0e\x00\x02"
    writer.close()


async def test_the_client_half_closing_still_gets_the_whole_answer(start_relay, backend):
    site = await backend("reply_at_eof")
    relay = await start_relay("--fallback", site.address)
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    writer.write(b"POST / HTTP/1.0\r\n\r\n" + PAYLOAD)
    writer.write_eof()
    assert await read_all(reader) == b"got %d bytes" % (19 + len(PAYLOAD))
    writer.close()


async def test_the_backend_half_closing_lets_the_client_keep_sending(start_relay):
    """The backend answers and shuts its side down first; the client's later bytes still arrive."""
    got = asyncio.get_running_loop().create_future()

    async def serve(reader, writer):
        writer.write(b"bye")
        writer.write_eof()
        got.set_result(await reader.read())
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        relay = await start_relay("--fallback", f"127.0.0.1:{server.sockets[0].getsockname()[1]}")
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        writer.write(b"GET")
        assert await read_all(reader) == b"bye"  # EOF reached the client
        writer.write(b" more after your EOF")
        writer.write_eof()
        assert await asyncio.wait_for(got, 5) == b"GET more after your EOF"
        writer.close()
    finally:
        server.close()


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


async def _push_until_blocked(sock: socket.socket, limit: int) -> int:
    """Writes from a non-blocking socket until the kernel stops taking bytes for 0.5 s."""
    loop = asyncio.get_running_loop()
    chunk = b"x" * 65536
    sent = 0
    while sent < limit:
        try:
            sent += sock.send(chunk)
            continue
        except BlockingIOError:
            pass
        writable = loop.create_future()
        loop.add_writer(sock.fileno(), lambda: writable.done() or writable.set_result(None))
        try:
            await asyncio.wait_for(writable, 0.5)
        except asyncio.TimeoutError:
            break
        finally:
            loop.remove_writer(sock.fileno())
    return sent


@pytest.mark.parametrize("direction", ["client_to_backend", "backend_to_client"])
async def test_a_side_that_stops_reading_cannot_make_the_relay_buffer_without_bound(start_relay, direction):
    """200 MB offered toward a reader that never reads: the relay's memory grows by at
    most a few MiB (its bound plus one read), and the writer is stopped by TCP flow control."""
    loop = asyncio.get_running_loop()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    relay = await start_relay("--fallback", f"127.0.0.1:{listener.getsockname()[1]}")
    before = _rss_kib(relay.proc.pid)
    client = socket.create_connection(("127.0.0.1", relay.port))
    client.setblocking(False)
    await loop.sock_sendall(client, b"GET")
    peer, _ = await loop.sock_accept(listener)
    peer.setblocking(False)
    sent = await _push_until_blocked(client if direction == "client_to_backend" else peer, 200 << 20)
    grown = _rss_kib(relay.proc.pid) - before
    for s in (client, peer, listener):
        s.close()
    assert sent < 100 << 20, f"{sent} bytes taken: no backpressure"
    assert grown < 16 * 1024, f"relay grew by {grown} KiB"


async def test_an_unreachable_backend_closes_the_client_counts_the_reason_and_tunnels_work(start_relay, echo, connect):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # bound, never listening: connections are refused
        relay = await start_relay("--fallback", f"127.0.0.1:{dead}", *LOOPBACK)
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        writer.write(b"GET / HTTP/1.1\r\n\r\n")
        with contextlib.suppress(ConnectionResetError):
            assert await read_all(reader) == b""
        writer.close()
        value = await relay.wait_metric('zt_relay_fallback_connections_total{result="backend_refused"}', lambda v: v >= 1)
        assert value == 1
        client = await connect(relay.port)
        client.send(echo.host, echo.port, b"t" * 32)
        assert (await client.recv())[2] == b"t" * 32
        assert (await relay.http("/readyz"))[0] == 200


async def test_the_fallback_cap_refuses_extra_site_connections_but_never_tunnels(start_relay, backend, echo, connect):
    site = await backend("echo")
    relay = await start_relay("--fallback", site.address, "--fallback-max-connections", "1", *LOOPBACK)
    r1, w1 = await asyncio.open_connection("127.0.0.1", relay.port)
    w1.write(b"GET 1")
    assert await asyncio.wait_for(r1.readexactly(5), 5) == b"GET 1"
    r2, w2 = await asyncio.open_connection("127.0.0.1", relay.port)
    w2.write(b"GET 2")
    with contextlib.suppress(ConnectionResetError):
        assert await read_all(r2) == b""
    tunnels = [await connect(relay.port) for _ in range(3)]
    for i, t in enumerate(tunnels):
        t.send(echo.host, echo.port, bytes([i]) * 32)
        assert (await t.recv())[2] == bytes([i]) * 32
    metrics = await relay.metrics()
    assert metrics['zt_relay_fallback_connections_total{result="max_connections"}'] == 1
    assert metrics['zt_relay_fallback_connections_total{result="connected"}'] == 1
    assert metrics["zt_relay_fallback_connections_active"] == 1
    assert metrics["zt_relay_tunnels_active"] == 3
    for w in (w1, w2):
        w.close()


async def test_bytes_are_counted_by_direction_and_site_connections_are_not_tunnels(start_relay, backend):
    site = await backend("reply_at_eof")
    relay = await start_relay("--fallback", site.address)
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    writer.write(b"x" * 1000)
    writer.write_eof()
    assert await read_all(reader) == b"got 1000 bytes"
    writer.close()
    await relay.wait_metric('zt_relay_fallback_closed_total{reason="closed"}', lambda v: v >= 1)
    metrics = await relay.metrics()
    assert metrics['zt_relay_fallback_bytes_total{direction="to_backend"}'] == 1000
    assert metrics['zt_relay_fallback_bytes_total{direction="to_client"}'] == len(b"got 1000 bytes")
    assert metrics["zt_relay_tunnels_opened_total"] == 0
    assert metrics["zt_relay_fallback_connections_active"] == 0


async def test_an_idle_site_connection_is_closed_after_the_fallback_idle_timeout(start_relay, backend):
    site = await backend("echo")
    relay = await start_relay("--fallback", site.address, "--fallback-idle-timeout", "0.5")
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    writer.write(b"GET")
    assert await asyncio.wait_for(reader.readexactly(3), 5) == b"GET"
    assert await read_all(reader, timeout=5) == b""
    assert await relay.wait_metric('zt_relay_fallback_closed_total{reason="idle_timeout"}', lambda v: v >= 1) == 1
    writer.close()


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("behind_balancer", [False, True], ids=["direct", "relay_behind_proxy_protocol"])
async def test_the_backend_gets_a_proxy_header_with_the_real_client_address(start_relay, backend, version, behind_balancer):
    site = await backend("reply_at_eof")
    args = ["--fallback", site.address, "--fallback-proxy-protocol", version]
    if behind_balancer:
        args.append("--proxy-protocol")
    relay = await start_relay(*args)
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    local = writer.get_extra_info("sockname")
    client = ("198.18.0.7", 40123) if behind_balancer else (local[0], local[1])
    if behind_balancer:
        writer.write(proxy_protocol.encode_v1(client, ("198.18.0.1", 443)))
    writer.write(b"GET / HTTP/1.0\r\n\r\n")
    writer.write_eof()
    await read_all(reader)
    writer.close()
    received = site.received[0]
    parsed = proxy_protocol.parse(received)
    assert parsed is not None
    address, length = parsed
    assert address == client
    assert received[:length].startswith(b"PROXY TCP4 " if version == "v1" else proxy_protocol.V2_SIGNATURE)
    assert received[length:] == b"GET / HTTP/1.0\r\n\r\n"


async def test_a_not_yet_classified_connection_counts_against_the_per_ip_cap(start_relay, backend, echo, connect):
    """Sniffing is no bypass: a silent connection holds a per-IP slot until it is classified."""
    site = await backend("echo")
    relay = await start_relay("--fallback", site.address, "--max-connections-per-ip", "1", "--sniff-timeout", "30", *LOOPBACK)
    silent = await asyncio.open_connection("127.0.0.1", relay.port)
    refused = await asyncio.open_connection("127.0.0.1", relay.port)
    refused[1].write(b"GET")
    with contextlib.suppress(ConnectionResetError):
        assert await read_all(refused[0]) == b""
    metrics = await relay.metrics()
    assert metrics['zt_relay_connections_refused_total{reason="max_connections_per_ip"}'] == 1
    # Once classified as a site connection it moves to the fallback cap: a tunnel fits again.
    silent[1].write(b"GET")
    assert await asyncio.wait_for(silent[0].readexactly(3), 5) == b"GET"
    client = await connect(relay.port)
    client.send(echo.host, echo.port, b"t" * 32)
    assert (await client.recv())[2] == b"t" * 32
    for _, w in (silent, refused):
        w.close()


async def test_without_fallback_a_non_zerotier_connection_is_still_closed(start_relay, connect):
    relay = await start_relay()
    client = await connect(relay.port, hello=False)
    client.send_raw(b"GET / HTTP/1.1\r\n\r\n")
    assert await client.closed()
    assert (await relay.metrics())['zt_relay_tunnels_closed_total{reason="bad_record_header"}'] == 1


async def test_fallback_counters_are_exported_over_otlp_too(start_relay, backend):
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

    from tests.relay.test_operations import Collector

    latest: dict[tuple, float] = {}

    class MetricsCollector(Collector):
        async def handle(self, reader, writer):
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b": ")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
            body = await reader.readexactly(length)
            if b"content-encoding: gzip" in head.lower():
                import gzip
                body = gzip.decompress(body)
            if head.split(b" ")[1] == b"/v1/metrics":
                request = ExportMetricsServiceRequest()
                request.ParseFromString(body)
                for rm in request.resource_metrics:
                    for sm in rm.scope_metrics:
                        for metric in sm.metrics:
                            points = metric.sum.data_points or metric.gauge.data_points
                            for p in points:
                                labels = tuple(sorted((a.key, a.value.string_value) for a in p.attributes))
                                latest[(metric.name, labels)] = p.as_int or p.as_double
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            writer.close()

    server = await asyncio.start_server(MetricsCollector().handle, "127.0.0.1", 0)
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}",
           "OTEL_METRIC_EXPORT_INTERVAL": "200", "OTEL_TRACES_EXPORTER": "none"}
    try:
        site = await backend("reply_at_eof")
        relay = await start_relay("--fallback", site.address, env=env)
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        writer.write(b"x" * 1000)
        writer.write_eof()
        await read_all(reader)
        writer.close()
        key = ("zt_relay.fallback.bytes", (("direction", "to_backend"),))
        for _ in range(100):
            if latest.get(key) == 1000:
                break
            await asyncio.sleep(0.05)
        assert latest.get(key) == 1000, sorted(latest)
        assert latest[("zt_relay.fallback.connections", (("result", "connected"),))] == 1
    finally:
        server.close()


async def test_on_sigterm_site_connections_are_drained_like_tunnels(start_relay, backend):
    """An open site connection keeps the drain going (a download in flight finishes); one
    that outlives --drain-timeout is closed, and the relay exits 0."""
    site = await backend("echo")
    relay = await start_relay("--fallback", site.address, "--drain-timeout", "2")
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    writer.write(b"GET 1")
    assert await asyncio.wait_for(reader.readexactly(5), 5) == b"GET 1"
    relay.signal()
    await asyncio.sleep(0.5)  # inside the drain (2 s): the connection must still be served
    assert relay.proc.returncode is None
    writer.write(b"GET 2")
    assert await asyncio.wait_for(reader.readexactly(5), 5) == b"GET 2"
    with contextlib.suppress(ConnectionResetError):
        assert await read_all(reader) == b""  # closed when the drain timed out
    assert await relay.wait(timeout=10) == 0
    writer.close()


async def test_on_sigterm_the_drain_ends_when_the_last_site_connection_closes(start_relay, backend):
    site = await backend("echo")
    relay = await start_relay("--fallback", site.address, "--drain-timeout", "30")
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    writer.write(b"GET 1")
    assert await asyncio.wait_for(reader.readexactly(5), 5) == b"GET 1"
    relay.signal()
    await asyncio.sleep(0.3)
    writer.close()
    assert await relay.wait(timeout=10) == 0  # long before the 30 s drain timeout


async def test_with_workers_each_process_falls_back_and_the_metrics_add_up(start_relay, backend):
    site = await backend("echo")
    relay = await start_relay("--fallback", site.address, "--workers", "2", listen=f"127.0.0.1:{_free_port()}")
    for i in range(6):
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        writer.write(b"GET %d" % i)
        assert await asyncio.wait_for(reader.readexactly(5), 5) == b"GET %d" % i
        writer.close()
    value = await relay.wait_metric('zt_relay_fallback_connections_total{result="connected"}', lambda v: v == 6)
    relay.signal()  # the supervisor stops its workers (a kill would orphan them)
    assert await relay.wait(timeout=15) == 0
    assert value == 6


def _free_port() -> int:
    return ports.unused_port()  # outside the ephemeral range: see tests/ports.py


def _syn_sent_to(port: int) -> int:
    """Connections in SYN_SENT toward 127.0.0.1:``port`` (this network namespace)."""
    count = 0
    with open("/proc/net/tcp") as f:
        lines = f.read().splitlines()[1:]
    for line in lines:
        fields = line.split()
        if fields[2] == "0100007F:%04X" % port and fields[3] == "02":
            count += 1
    return count


@contextlib.contextmanager
def full_backlog():
    """A backend whose accept queue is full (one connection, never accepted, holds it), so
    its kernel drops new SYNs and a dial toward it waits in SYN_SENT, as toward a remote
    backend. Yields (listening socket, port)."""
    backend = socket.socket()
    backend.bind(("127.0.0.1", 0))
    backend.listen(0)  # holds one connection not yet accepted
    port = backend.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port))
    try:
        yield backend, port
    finally:
        filler.close()
        backend.close()


async def reset_while_dialed(relay_port: int, backend_port: int, dials: int) -> None:
    """A visitor sends a request, then resets once ``dials`` dials wait on the full backlog."""
    loop = asyncio.get_running_loop()
    quitter = socket.create_connection(("127.0.0.1", relay_port))
    quitter.sendall(b"GET /quit HTTP/1.1\r\n\r\n")
    deadline = loop.time() + 10
    while _syn_sent_to(backend_port) < dials:
        assert loop.time() < deadline, _syn_sent_to(backend_port)
        await asyncio.sleep(0.02)
    quitter.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    quitter.close()  # a reset while the backend is still being dialed


async def test_a_backend_that_does_not_answer_the_syn_at_once_still_gets_the_first_flight(start_relay):
    """The backend's accept queue is full, so its kernel drops the relay's SYN and the
    connect stays in SYN_SENT (as toward a remote backend): the first flight's send gets
    EAGAIN and must go once the connect completes. A visitor that resets meanwhile leaves
    no connection and no descriptor behind."""
    loop = asyncio.get_running_loop()
    with full_backlog() as (backend, port):
        relay = await start_relay("--fallback", f"127.0.0.1:{port}")
        fds = lambda: len(os.listdir(f"/proc/{relay.proc.pid}/fd"))  # noqa: E731
        baseline = fds()
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        writer.write(b"GET /first HTTP/1.1\r\n\r\n")
        deadline = loop.time() + 10
        await reset_while_dialed(relay.port, port, 2)  # both dials wait on the full queue
        backend.setblocking(False)
        peers = []
        for _ in range(3):  # the filler, then the relay's two dials as the queue frees up
            peer, _ = await asyncio.wait_for(loop.sock_accept(backend), 10)
            peers.append(peer)
        requests = set()
        for peer in peers[1:]:
            try:
                data = await asyncio.wait_for(loop.sock_recv(peer, 100), 5)
            except ConnectionResetError:
                data = b""
            requests.add(data)
            if data == b"GET /first HTTP/1.1\r\n\r\n":
                await loop.sock_sendall(peer, b"HTTP/1.1 200 OK\r\n\r\n")
        # The visitor who reset is not served: its dial is reset before its request goes.
        assert requests == {b"GET /first HTTP/1.1\r\n\r\n", b""}
        assert await asyncio.wait_for(reader.readexactly(19), 5) == b"HTTP/1.1 200 OK\r\n\r\n"
        writer.close()
        for peer in peers:
            peer.close()
        assert await relay.wait_metric("zt_relay_fallback_connections_active", lambda v: v == 0, timeout=10) == 0
        while fds() > baseline:  # the scrapes' own descriptors close just after them
            assert loop.time() < deadline + 10, (fds(), baseline)
            await asyncio.sleep(0.05)
        assert not relay.logged("Traceback"), "".join(relay.log)


async def test_a_visitor_that_resets_while_the_backend_is_dialed_is_counted_as_client_reset(start_relay):
    """The backend's accept queue is full, so the relay's dial waits in SYN_SENT; the visitor
    resets meanwhile. Once the dial completes, the connection is counted by what happened
    (``client_reset``), not ``connected``, and its request never reaches the backend."""
    loop = asyncio.get_running_loop()
    with full_backlog() as (backend, port):
        relay = await start_relay("--fallback", f"127.0.0.1:{port}")
        await reset_while_dialed(relay.port, port, 1)
        backend.setblocking(False)
        first, _ = await asyncio.wait_for(loop.sock_accept(backend), 10)
        dialed, _ = await asyncio.wait_for(loop.sock_accept(backend), 10)  # once the SYN is retried
        reset = await relay.wait_metric('zt_relay_fallback_connections_total{result="client_reset"}', lambda v: v == 1, timeout=10)
        samples = await relay.metrics()
        assert reset == 1, samples
        assert samples.get('zt_relay_fallback_connections_total{result="connected"}', 0) == 0, samples
        try:
            got = await asyncio.wait_for(loop.sock_recv(dialed, 100), 5)
        except ConnectionResetError:
            got = b""
        assert got == b"", got  # closed without the request of a visitor who is gone
        assert await relay.wait_metric("zt_relay_fallback_connections_active", lambda v: v == 0, timeout=10) == 0
        assert not relay.logged("Traceback"), "".join(relay.log)
        first.close()
        dialed.close()


#: Every label value the fallback's counters can take, as documented (README, Metrics).
FALLBACK_SERIES = {
    "zt_relay_fallback_connections_total": ("result", (
        "connected", "backend_refused", "backend_timeout", "backend_error", "max_connections", "max_connections_per_ip",
        "file_descriptors_exhausted", "memory_pressure", "client_gone", "client_reset")),
    "zt_relay_fallback_closed_total": ("reason", (
        "closed", "idle_timeout", "shutdown", "client_reset", "backend_reset", "evicted")),
}
FALLBACK_DNS_SERIES = ("zt_relay_fallback_dns_failures_total", "reason",
                       ("no_such_name", "temporary_failure", "no_address", "timeout", "error"))
FALLBACK_POOL_SERIES = ("zt_relay_fallback_preconnect_discarded_total", "reason",
                        ("bytes_waiting", "closed", "reset", "expired", "send_failed", "closed_unanswered"))


@pytest.mark.parametrize("backend_kind", ["address", "name", "pool"])
async def test_every_fallback_result_and_reason_is_exported_as_zero_before_the_first_connection(start_relay, backend_kind):
    """A series that appears only with its first increase has no earlier sample, so
    ``rate()``/``increase()`` miss that increase: the first backend failure of a relay's life
    never fires an alert. Each known label value is there, at 0, from the start."""
    relay = await start_relay("--fallback", "localhost:9" if backend_kind == "name" else "127.0.0.1:9",
                              *(["--fallback-preconnect", "2"] if backend_kind == "pool" else []))
    metrics = await relay.metrics()
    series = dict(FALLBACK_SERIES)
    if backend_kind == "name":
        series[FALLBACK_DNS_SERIES[0]] = FALLBACK_DNS_SERIES[1:]
    if backend_kind == "pool":
        series[FALLBACK_POOL_SERIES[0]] = FALLBACK_POOL_SERIES[1:]
    for name, (label, values) in series.items():
        for value in values:
            assert metrics.get(f'{name}{{{label}="{value}"}}') == 0, (name, value)
