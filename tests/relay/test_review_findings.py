"""Review of the hardening and fallback work (issues 15 and 13): each test states a promise
of the README or the issues that the landed relay does not keep, against the real process
on loopback. They fail on the reviewed commit; each names the finding it proves.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket

from relay import protocol
from relay.tunnel import CLOSE_GRACE
from tests.relay.test_close_paths import HELD_STATES, TICK, kernel_sockets, small_window_client, until

LOOPBACK = ("--allow-destination", "127.0.0.0/8", "--min-destination-port", "1")


def held(relay_port: int, client_port: int) -> list[str]:
    return [row for row in kernel_sockets(relay_port, client_port) if row.split()[3] in HELD_STATES]


class FloodBackend:
    """A fallback backend that answers every connection with ``size`` bytes (a download),
    written with backpressure, so a client that stops reading stalls it."""

    def __init__(self, size: int = 64 << 20) -> None:
        self.size = size
        self.server: asyncio.AbstractServer | None = None
        self.port = 0
        self.connections = 0
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> FloodBackend:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        chunk = b"d" * 65536
        try:
            for _ in range(self.size // len(chunk)):
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        for writer in self._writers:
            writer.close()
        self.server.close()


async def silent_site() -> tuple[asyncio.Server, str]:
    """A site backend that reads until the visitor's EOF and never answers: the server and
    its HOST:PORT for --fallback."""

    async def hold(reader, writer):
        await reader.read()
        writer.close()

    site = await asyncio.start_server(hold, "127.0.0.1", 0)
    return site, f"127.0.0.1:{site.sockets[0].getsockname()[1]}"


# -- F1: a fallback connection whose client stopped reading is never released ---------------


async def test_fallback_idle_timeout_releases_a_client_that_stopped_reading(start_relay):
    """README: "no bytes either way for this long closes a backend connection", and issue 13:
    "neither side can make the relay buffer more than a bound" / "the site must never break".
    A visitor that starts a download and stops reading (4 KiB receive window, zero window
    from then on) stalls the splice; the idle timeout then calls ``transport.close()``, which
    waits forever for a flush that never comes: no abort after a grace (unlike tunnels), and
    fallback sockets get no TCP_USER_TIMEOUT or keepalive (``configure_stream`` only runs for
    tunnels). The connection, its 512 KiB+ buffer, two descriptors and a
    ``--fallback-max-connections`` slot are held for as long as the client acknowledges
    zero-window probes: 10,000 such clients take the site down for good."""
    site = await FloodBackend().start()
    try:
        relay = await start_relay("--fallback", f"127.0.0.1:{site.port}", "--fallback-idle-timeout", "1")
        sock = small_window_client(relay.port)
        try:
            sock.sendall(b"GET /big HTTP/1.1\r\nHost: site\r\n\r\n")
            assert await relay.wait_metric("zt_relay_fallback_connections_active", lambda v: v == 1)
            # stalled: nothing moves, so the idle timeout (1 s) closes it, then a grace
            released = await until(
                lambda: _fallback_released(relay, sock.getsockname()[1]), 1 + 2 * TICK + CLOSE_GRACE + 3)
            samples = await relay.metrics()
            assert released, (
                f"still held: fallback_connections_active={samples['zt_relay_fallback_connections_active']}, "
                f"kernel rows {held(relay.port, sock.getsockname()[1])}")
            assert samples['zt_relay_fallback_closed_total{reason="idle_timeout"}'] == 1
        finally:
            sock.close()
    finally:
        await site.close()


async def _fallback_released(relay, client_port: int) -> bool:
    samples = await relay.metrics()
    return samples["zt_relay_fallback_connections_active"] == 0 and not held(relay.port, client_port)


async def test_fallback_client_sockets_tell_the_kernel_to_give_up(start_relay):
    """The kernel side of F1: ``configure_stream`` (TCP_USER_TIMEOUT, keepalive) runs in
    ``Relay.connection_made``, which a ``Sniffer`` never calls: a connection sent to the
    fallback backend has neither, while a tunnel on the same listener has both. Keepalive
    is visible from outside as the keepalive timer (``02``) in /proc/net/tcp."""

    site, site_address = await silent_site()
    try:
        relay = await start_relay("--fallback", site_address)
        tunnel = socket.create_connection(("127.0.0.1", relay.port))
        visitor = socket.create_connection(("127.0.0.1", relay.port))
        try:
            tunnel.sendall(protocol.encode_hello(1, 14, 2))
            visitor.sendall(b"GET / HTTP/1.1\r\n")
            assert await relay.wait_metric("zt_relay_fallback_connections_active", lambda v: v == 1)
            assert await relay.wait_metric("zt_relay_tunnels_active", lambda v: v == 1)
            await asyncio.sleep(0.2)

            def timer(client: socket.socket) -> str:
                rows = kernel_sockets(relay.port, client.getsockname()[1])
                return rows[0].split()[5].split(":")[0]

            assert timer(tunnel) == "02"  # the control: a tunnel's socket has keepalive
            assert timer(visitor) == "02", "no keepalive (nor TCP_USER_TIMEOUT) on a fallback connection's socket"
        finally:
            tunnel.close()
            visitor.close()
    finally:
        site.close()


# -- F2: a client's half-close leaves the kernel's queue behind, outside every cap -------------


async def _stuck_tunnel_then_half_close(relay, replies: int = 1000) -> tuple[socket.socket, socket.socket, int]:
    """A tunnel client with a 4 KiB receive buffer that gets ``replies`` x 1,400 bytes it never
    reads (the kernel's send queue absorbs them: the relay's own buffer is empty), then
    shuts down its sending half."""
    sock = small_window_client(relay.port)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.setblocking(False)
    loop = asyncio.get_running_loop()
    sock.sendall(protocol.encode_hello(1, 14, 2) + protocol.encode_packet("127.0.0.1", peer.getsockname()[1], b"p" * 64))
    _, tunnel_addr = await asyncio.wait_for(loop.sock_recvfrom(peer, 2048), 5)
    client_port = sock.getsockname()[1]
    # In batches until the queue is there: one burst overflows the relay's UDP receive
    # buffer on a loaded machine (the datagrams are dropped before the relay sees them).
    deadline = loop.time() + 10
    while _queue(relay.port, client_port) <= 512 * 1024 and loop.time() < deadline:
        for _ in range(replies // 10):
            await loop.sock_sendto(peer, b"r" * 1400, tunnel_addr)
        await asyncio.sleep(0.02)
    assert await until(lambda: _queue(relay.port, client_port) > 512 * 1024, 1), _queue(relay.port, client_port)
    sock.shutdown(socket.SHUT_WR)  # half-close; still never reads
    return sock, peer, client_port


def _queue(relay_port: int, client_port: int) -> int:
    return sum(int(row.split()[4].split(":")[0], 16) for row in kernel_sockets(relay_port, client_port))


async def test_a_half_closing_client_leaves_no_kernel_queue_behind(start_relay):
    """README (Closing): "a client that isn't reading then gets a reset, so neither the relay's
    buffer nor the kernel's send queue outlives the close"; issue 15: whatever the client
    does, within grace + 1 s. A client that stops reading and then half-closes makes
    ``eof_received`` return False: uvloop closes the socket as soon as the relay's own buffer
    is empty, without ``Tunnel.close`` (no grace, no zero linger). The kernel keeps the
    connection as an orphan (LAST_ACK) with megabytes queued, probing a zero window until
    TCP_USER_TIMEOUT (30 s), after the relay has already released the tunnel's slot."""
    relay = await start_relay(*LOOPBACK)
    sock, peer, client_port = await _stuck_tunnel_then_half_close(relay)
    try:
        ok = await until(lambda: not held(relay.port, client_port), CLOSE_GRACE + 1)
        samples = await relay.metrics()
        assert ok, (f"connections_open={samples['zt_relay_connections_open']}, but the kernel still holds "
                    f"{_queue(relay.port, client_port)} bytes for the client: {held(relay.port, client_port)}")
    finally:
        sock.close()
        peer.close()


async def test_half_closing_clients_cannot_pile_up_kernel_queues_past_the_per_ip_cap(start_relay):
    """The consequence of the above: the orphans count against nothing. With
    ``--max-connections-per-ip 1`` one address opens a tunnel, fills its kernel queue,
    half-closes, and is admitted again at once, leaving megabytes behind each time."""
    relay = await start_relay(*LOOPBACK, "--max-connections-per-ip", "1")
    opened = []
    try:
        for _ in range(3):
            sock, peer, client_port = await _stuck_tunnel_then_half_close(relay)
            opened += [sock, peer]
            assert await relay.wait_metric("zt_relay_client_addresses", lambda v: v == 0, timeout=CLOSE_GRACE + 1) == 0
        rows = _relay_rows(relay.port)
        queued = sum(int(row.split()[4].split(":")[0], 16) for row in rows)
        assert len(rows) <= 1, f"{len(rows)} connections from one address held by the kernel, {queued} bytes queued: {rows}"
    finally:
        for s in opened:
            s.close()


def _relay_rows(relay_port: int) -> list[str]:
    """Held rows of the kernel's TCP table whose local port is the relay's (not the listener)."""
    rows = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == relay_port and fields[3] in HELD_STATES:
                    rows.append(line.strip())
    return rows


# -- F3: SIGTERM with --fallback resets connections still being sniffed ---------------------


async def test_the_drain_serves_connections_still_being_sniffed(start_relay):
    """README (SIGTERM): the listeners keep accepting *and serving* for --shutdown-delay, and
    "connections the kernel had already queued are accepted and served rather than reset";
    the drain lasts "until the last tunnel and the last site connection have closed".
    ``Relay.idle`` counts tunnels and splices but not ``fallback.sniffers``: a connection
    accepted during the delay whose first bytes haven't arrived yet when the delay ends
    (a visitor's ClientHello one RTT later, or a ZeroTier client's hello: with --fallback
    every connection is a sniffer first) is aborted by ``Relay.close`` at once, although
    the drain has 10 s left. Without --fallback the same client (a tunnel awaiting its
    hello) is drained."""

    async def echo(reader, writer):
        while data := await reader.read(65536):
            writer.write(data)
        writer.close()

    site = await asyncio.start_server(echo, "127.0.0.1", 0)
    try:
        relay = await start_relay(*LOOPBACK, "--fallback", f"127.0.0.1:{site.sockets[0].getsockname()[1]}",
                                  "--shutdown-delay", "1", "--drain-timeout", "10")
        visitor_r, visitor_w = await asyncio.open_connection("127.0.0.1", relay.port)
        zt = socket.create_connection(("127.0.0.1", relay.port))
    except BaseException:
        site.close()
        raise
    try:
        await asyncio.sleep(0.1)
        relay.signal(signal.SIGTERM)
        await asyncio.sleep(1.2)  # connected during the 1 s delay; first bytes 0.2 s after it ends
        request = b"GET / HTTP/1.0\r\n\r\n"
        visitor_w.write(request)
        try:
            answer = await asyncio.wait_for(visitor_r.read(len(request)), 5)
        except ConnectionResetError:
            answer = b"<reset>"
        assert answer == request, f"a visitor accepted during the shutdown delay got {answer!r}"
        zt.sendall(protocol.encode_hello(1, 14, 2))
        zt.settimeout(2)
        try:
            zt_state = zt.recv(1)  # a live tunnel sends nothing: a timeout
        except socket.timeout:
            zt_state = "open"
        except ConnectionResetError:
            zt_state = "reset"
        assert zt_state == "open", f"a ZeroTier client accepted during the shutdown delay: {zt_state!r}"
    finally:
        visitor_w.close()
        with contextlib.suppress(Exception):
            await visitor_w.wait_closed()
        zt.close()
        site.close()


# -- F4/F5: worker metrics: a dead worker's gauge is kept forever; a pod-wide gauge is summed ---


async def _start_workers(start_relay, *args: str):
    from tests.relay.test_workers import start_workers
    return await start_workers(start_relay, *args)


async def test_a_dead_workers_fallback_gauge_is_not_kept(start_relay):
    """``stats.GAUGES`` lists the gauges an exited worker must not leave behind, but not
    ``fallback_active`` (``zt_relay_fallback_connections_active``): ``Supervisor.retire``
    keeps it like a counter, so after workers die with site connections open the gauge
    stays up forever (an alert on it, or an HPA reading it, never recovers)."""
    from tests.relay.test_workers import worker_pids

    site, site_address = await silent_site()
    visitors = []
    try:
        relay = await _start_workers(start_relay, "--fallback", site_address)
        for _ in range(4):
            s = socket.create_connection(("127.0.0.1", relay.port))
            s.sendall(b"GET / HTTP/1.1\r\n")
            visitors.append(s)
        assert await relay.wait_metric("zt_relay_fallback_connections_active", lambda v: v == 4, timeout=5) == 4
        original = worker_pids(relay)
        for pid in original:
            os.kill(pid, signal.SIGKILL)  # their connections die with them
        assert await until(lambda: len(set(worker_pids(relay)) - set(original)) == 2, 15)
        assert await relay.wait_metric("zt_relay_workers", lambda v: v == 2, timeout=10) == 2
        await asyncio.sleep(1.5)  # a few reports from the replacements
        active = (await relay.metrics())["zt_relay_fallback_connections_active"]
        assert active == 0, f"zt_relay_fallback_connections_active is {active} with no site connection open"
    finally:
        for s in visitors:
            s.close()
        site.close()


def _cgroup_working_set() -> int | None:
    from relay import memory
    budget = memory.MemoryBudget(1 << 40, "test")
    return budget.usage() if budget.version else None


async def test_memory_gauge_is_not_multiplied_by_the_workers(start_relay):
    """``zt_relay_memory_bytes`` is the cgroup's working set, which already covers every
    worker of the pod (memory.py), yet with --workers the supervisor sums it over workers
    like a per-process value (README: "with --workers, the sum over workers"): N workers
    report N times the pod's memory."""
    import pytest
    used = _cgroup_working_set()
    if used is None:
        pytest.skip("not in a memory cgroup")
    relay = await _start_workers(start_relay, "--max-memory", "1000G")
    await asyncio.sleep(1.5)  # each worker has sampled once a second
    reported = (await relay.metrics())["zt_relay_memory_bytes"]
    used = _cgroup_working_set()
    assert reported <= 1.5 * used, f"zt_relay_memory_bytes {reported:.0f} for a cgroup working set of {used}"


# -- F6: a malformed PROXY header, or none in time, is counted nowhere (without --fallback) ----


async def test_a_malformed_proxy_header_is_counted(start_relay):
    """README: "Malformed input closes the tunnel ... with a named reason
    (zt_relay_tunnels_closed_total{reason} ...)". With --proxy-protocol, a connection waiting
    for its header is not admitted, and ``Relay.tunnel_lost`` counts only admitted tunnels:
    a bad header (``proxy_protocol_error``) and a silent connection
    (``handshake_timeout``) close with a log line and no metric at all, where the same
    connection with --fallback is counted in zt_relay_connections_refused_total."""
    relay = await start_relay(*LOOPBACK, "--proxy-protocol", "--handshake-timeout", "1")
    bad = socket.create_connection(("127.0.0.1", relay.port))
    silent = socket.create_connection(("127.0.0.1", relay.port))
    try:
        bad.sendall(b"PROXY TCP4 1.2.3.4 5.6.7.8 +80 443\r\n")
        assert await until(lambda: relay.logged("proxy_protocol_error"), 5)
        # Until the silent one has timed out (1 s, then the next tick): logged, counted or not.
        assert await until(lambda: relay.logged("handshake_timeout"), 10), "".join(relay.log)
        samples = await relay.metrics()
        counted = {k: v for k, v in samples.items() if "proxy_protocol_error" in k or "handshake_timeout" in k}
        assert any("proxy_protocol_error" in k for k in counted), f"a malformed PROXY header is counted nowhere: {counted}"
        assert any("handshake_timeout" in k for k in counted), f"a connection without its PROXY header is counted nowhere: {counted}"
    finally:
        bad.close()
        silent.close()


# -- F7: one address can take every fallback slot: the site is down for everyone else --------


async def test_one_address_cannot_take_every_fallback_slot(start_relay):
    """Issue 13: "the site must never break because the relay is there"; issue 15: no limit
    can be bypassed. --max-connections-per-ip only covers the sniff phase: a connection
    leaves it as soon as its first byte (or --sniff-timeout of silence) sends it to the
    backend, and --fallback-max-connections has no per-address share. So one address
    holding idle connections (one byte each, or none: silence is forwarded too) fills
    every fallback slot and every other visitor gets a closed connection
    (``max_connections``). Here: a per-IP cap of 2, a fallback cap of 5, one address opens 5."""

    site, site_address = await silent_site()
    hogs = []
    try:
        relay = await start_relay("--fallback", site_address,
                                  "--max-connections-per-ip", "2", "--fallback-max-connections", "5")
        for _ in range(5):
            s = socket.create_connection(("127.0.0.1", relay.port))
            s.sendall(b"G")
            hogs.append(s)
            await relay.wait_metric("zt_relay_fallback_connections_active", lambda v: v == len(hogs))
        assert (await relay.metrics())["zt_relay_fallback_connections_active"] == 5
        visitor = socket.create_connection(("127.0.0.1", relay.port), source_address=("127.0.0.2", 0))
        hogs.append(visitor)
        visitor.sendall(b"GET / HTTP/1.1\r\n")
        await asyncio.sleep(0.5)
        samples = await relay.metrics()
        assert samples.get('zt_relay_fallback_connections_total{result="max_connections"}', 0) == 0, (
            "a visitor from another address was turned away: one address holds all 5 fallback slots "
            f"although --max-connections-per-ip is 2 ({samples['zt_relay_fallback_connections_active']:.0f} active)")
    finally:
        for s in hogs:
            s.close()
        site.close()


# -- F8: site connections take the descriptors the tunnels were promised ----------------------


async def test_fallback_connections_cannot_starve_tunnels_of_descriptors(start_relay):
    """Issue 13: fallback connections "never block tunnels"; README: at start the relay warns
    when --max-connections exceeds RLIMIT_NOFILE (3 descriptors per tunnel). The check
    (``limits.ceiling_warnings``) ignores --fallback-max-connections (2 descriptors each:
    client and backend, 20,000 by default), so a limit that "fits" the tunnels is eaten by
    site connections and a tunnel can't be opened. Here RLIMIT_NOFILE is 100, enough for
    --max-connections 10 by the relay's own rule, and 45 idle site connections take it."""
    import resource

    from relay import limits

    site, site_address = await silent_site()
    socks = []
    try:
        relay = await start_relay(*LOOPBACK, "--fallback", site_address,
                                  "--max-connections", "10", "--max-connections-per-ip", "100")
        await relay.metrics()
        # less the spare backend socket (fallback.py), which the first visitor's dial takes: the
        # silent site ends no connection, and none is remade this close to the ceiling
        base = len(os.listdir(f"/proc/{relay.proc.pid}/fd")) - 1
        visitors = 40
        nofile = base + 2 * visitors + 1  # one descriptor left for a tunnel's TCP (or a scrape)
        assert limits.ceiling_warnings(10, 1, nofile, (32768, 60999)) == []  # the relay's rule: it fits
        resource.prlimit(relay.proc.pid, resource.RLIMIT_NOFILE, (nofile, nofile))
        for _ in range(visitors):
            s = socket.create_connection(("127.0.0.1", relay.port))
            s.sendall(b"G")
            socks.append(s)
        assert await relay.wait_metric("zt_relay_fallback_connections_active", lambda v: v == visitors) == visitors
        tunnel = socket.create_connection(("127.0.0.1", relay.port))
        socks.append(tunnel)
        tunnel.sendall(protocol.encode_hello(1, 14, 2))
        await asyncio.sleep(0.5)
        samples = await relay.metrics()
        active = samples["zt_relay_tunnels_active"]
        refused = {k: v for k, v in samples.items() if k.startswith("zt_relay_connections_refused_total")}
        assert active == 1, f"a tunnel (1 of --max-connections 10) could not be opened: site connections hold the descriptors ({refused})"
    finally:
        for s in socks:
            s.close()
        site.close()


# -- F9: --max-memory protects against tunnels only; site connections grow memory unchecked ---


async def test_memory_pressure_also_stops_new_site_connections(start_relay):
    """README: --max-memory refuses new tunnels from 90 % of the budget "before the kernel's
    OOM killer would cut every tunnel at once". A site connection can hold more than a
    tunnel's worst case (512 KiB of write buffer plus a 256 KiB read, each way: about
    1.5 MiB against about 1 MiB), yet ``Sniffer`` never looks at ``relay.memory_pressure``:
    under pressure, tunnels are refused while visitors keep being spliced, until the OOM
    kill the budget exists to prevent. Here the budget is 1 byte (always under pressure)."""

    site, site_address = await silent_site()
    socks = []
    try:
        relay = await start_relay(*LOOPBACK, "--fallback", site_address, "--max-memory", "1")
        tunnel = socket.create_connection(("127.0.0.1", relay.port))
        socks.append(tunnel)
        tunnel.sendall(protocol.encode_hello(1, 14, 2))
        refused = 'zt_relay_connections_refused_total{reason="memory_pressure"}'
        assert await relay.wait_metric(refused, lambda v: v == 1) == 1  # tunnels: refused
        visitor = socket.create_connection(("127.0.0.1", relay.port))
        socks.append(visitor)
        visitor.sendall(b"GET / HTTP/1.1\r\n")
        await asyncio.sleep(0.5)
        samples = await relay.metrics()
        assert samples["zt_relay_fallback_connections_active"] == 0, (
            "under memory pressure a site connection was still spliced (tunnels are refused)")
    finally:
        for s in socks:
            s.close()
        site.close()


# -- F10: the backend's PROXY header loses the destination the balancer reported --------------


async def test_the_backend_proxy_header_keeps_the_balancers_destination(start_relay):
    """README: "--fallback-proxy-protocol v1|v2 sends the backend a PROXY header with the
    client's address (the one from --proxy-protocol if the relay itself is behind a
    balancer)". The source is carried over, but ``proxy_protocol.parse`` drops the
    header's destination and ``fallback.proxy_header`` writes the relay's own socket
    address instead (the pod's 8443, not the public 443 the visitor reached): a backend
    that uses the server address or port (nginx ``$proxy_protocol_server_port``, redirects,
    virtual servers by address) sees the wrong one."""
    got = asyncio.get_running_loop().create_future()

    async def record(reader, writer):
        line = await reader.readline()
        if not got.done():
            got.set_result(line)
        await reader.read()
        writer.close()

    site = await asyncio.start_server(record, "127.0.0.1", 0)
    sock = None
    try:
        relay = await start_relay("--proxy-protocol", "--fallback", f"127.0.0.1:{site.sockets[0].getsockname()[1]}",
                                  "--fallback-proxy-protocol", "v1")
        sock = socket.create_connection(("127.0.0.1", relay.port))
        sock.sendall(b"PROXY TCP4 198.18.0.7 198.19.0.9 50000 443\r\nGET / HTTP/1.1\r\n")
        header = await asyncio.wait_for(got, 5)
        assert header == b"PROXY TCP4 198.18.0.7 198.19.0.9 50000 443\r\n", header
    finally:
        if sock is not None:
            sock.close()
        site.close()


# -- F11: the gauges added for issue 15 exist on /metrics only, not in OpenTelemetry -----------


def test_opentelemetry_exports_the_resource_gauges():
    """README (OpenTelemetry): "Metrics are OTel observable instruments reading the same
    counters". ``Telemetry.observe`` registers the tunnel and fallback series but none of
    the gauges issue 15 added for closes and resource ceilings: connections_open,
    client_addresses, write_buffer_bytes, udp_sockets_open, memory_bytes. An operator on
    OTLP cannot see a port or memory ceiling coming."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from relay.telemetry import Telemetry

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    telemetry = Telemetry(None, provider)
    snapshot = {"tunnels_active": 1, "connections_open": 2, "client_addresses": 1, "write_buffer_bytes": 10,
                "udp_sockets_open": 2, "memory_bytes": 1000}
    telemetry.observe(lambda: dict(snapshot))
    data = reader.get_metrics_data()
    names = {m.name for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    provider.shutdown()
    missing = [n for n in ("connections_open", "client_addresses", "write_buffer_bytes", "udp_sockets_open", "memory_bytes")
               if not any(n.replace("_", ".") in name.replace("_", ".") for name in names)]
    assert not missing, f"no OTel instrument for {missing}; exported: {sorted(names)}"
