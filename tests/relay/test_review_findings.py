"""Review of the hardening and fallback work (issues 15 and 13): each test states a promise
of the README or the issues that the landed relay does not keep, against the real process
on loopback. They fail on the reviewed commit; each names the finding it proves.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket

from relay import protocol
from relay.tunnel import CLOSE_GRACE
from tests.relay.test_close_paths import HELD_STATES, TICK, kernel_sockets, until

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
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", relay.port))
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

    async def hold(reader, writer):  # a backend that reads and never answers
        await reader.read()
        writer.close()

    site = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        relay = await start_relay("--fallback", f"127.0.0.1:{site.sockets[0].getsockname()[1]}")
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
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", relay.port))
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
