"""A site connection whose natural end (both EOFs) is under way waits
while its visitor makes progress; the idle timeout, an eviction and the shutdown must not
wait for it (splice.py: "the idle timeout and shutdown don't wait for progress")."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket

from relay.tunnel import CLOSE_GRACE
from tests.relay.test_close_paths import TICK, held_sockets, small_window_client, until


async def download_site(size: int) -> tuple[asyncio.Server, int]:
    """A backend that reads the request to its EOF, answers ``size`` bytes and closes."""

    async def serve(reader, writer):
        await reader.read()
        writer.write(b"d" * size)
        await writer.drain()
        writer.close()

    site = await asyncio.start_server(serve, "127.0.0.1", 0)
    return site, site.sockets[0].getsockname()[1]


@contextlib.contextmanager
def _visitor(relay_port: int, rcvbuf: int = 4096):
    """A visitor with a ``rcvbuf`` receive buffer that has sent its request and its EOF."""
    sock = small_window_client(relay_port, rcvbuf)
    try:
        sock.sendall(b"GET /big HTTP/1.0\r\nHost: site\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        yield sock
    finally:
        sock.close()


async def _slow_reader(sock: socket.socket, seconds: float, chunk: int = 1024, every: float = 0.2) -> tuple[int, str]:
    """Reads ``chunk`` bytes ``every`` s (by default 1 KiB every 0.2 s: steady progress, far
    slower than the queue) for up to ``seconds``; returns the bytes read and how it ended."""
    loop = asyncio.get_running_loop()
    got = 0
    end = loop.time() + seconds
    sock.setblocking(False)
    while loop.time() < end:
        await asyncio.sleep(every)
        try:
            data = sock.recv(chunk)
        except BlockingIOError:
            continue
        except ConnectionResetError:
            return got, "reset"
        if not data:
            return got, "eof"
        got += len(data)
    return got, "still open"


async def test_a_slow_reader_of_a_finished_download_is_still_released_by_the_idle_timeout(start_relay):
    """The backend sends 384 KiB and closes, the visitor has sent its request and its EOF:
    the splice's close is the patient one (``CLOSED``: it waits while the peer makes
    progress). The visitor then reads 1 KiB every 0.2 s (hours for that queue). No byte is
    read from either side meanwhile, so --fallback-idle-timeout (1 s) is due: it must end
    the connection within a grace, as it ends the same slow reader before the backend's EOF."""
    site, site_port = await download_site(384 << 10)
    try:
        relay = await start_relay("--fallback", f"127.0.0.1:{site_port}", "--fallback-idle-timeout", "1")
        with _visitor(relay.port) as sock:
            assert await relay.wait_metric("zt_relay_fallback_connections_active", lambda v: v == 1)
            budget = 1 + 2 * TICK + CLOSE_GRACE + 3
            got, how = await _slow_reader(sock, budget + 2)
            samples = await relay.metrics()
            assert how != "still open", (
                f"a slow reader held the finished splice past the idle timeout for {budget + 2:g} s ({got} bytes read; "
                f"fallback_connections_active={samples['zt_relay_fallback_connections_active']})")
            assert await until(lambda: _released(relay), 2)
    finally:
        site.close()


async def _released(relay) -> bool:
    return (await relay.metrics())["zt_relay_fallback_connections_active"] == 0


async def test_the_drain_resets_a_slow_reader_of_a_finished_download_and_the_kernel_keeps_nothing(start_relay):
    """The same visitor at SIGTERM: once --drain-timeout (1 s) has passed, the shutdown
    closes it within a grace, and no orphan is left in the kernel still feeding it."""
    site, site_port = await download_site(384 << 10)
    try:
        relay = await start_relay("--fallback", f"127.0.0.1:{site_port}", "--shutdown-delay", "0", "--drain-timeout", "1")
        with _visitor(relay.port) as sock:
            assert await relay.wait_metric("zt_relay_fallback_connections_active", lambda v: v == 1)
            await asyncio.sleep(0.5)  # the backend's answer and EOF are read: the patient close runs
            relay.signal(signal.SIGTERM)
            reading = asyncio.ensure_future(_slow_reader(sock, 1 + CLOSE_GRACE + 1 + 2))
            assert await relay.wait(timeout=1 + CLOSE_GRACE + 1 + 2) == 0
            got, how = await reading
            assert how == "reset", f"the visitor was {how} after the relay stopped ({got} bytes read)"
            assert held_sockets(relay.port, sock.getsockname()[1]) == []
    finally:
        site.close()


async def test_a_natural_end_waits_for_a_visitor_still_reading(start_relay):
    """The other half of the promise: the visitor sent its EOF and the site its 1 MiB and
    its EOF, so the splice is closing (``CLOSED``); the visitor reads 16 KiB every 0.1 s, so
    what the relay still holds for it takes longer than CLOSE_GRACE to go: it gets every
    byte and the EOF, not a reset (streams.Closing's patience; no test failed without it)."""
    size = 1 << 20
    site, site_port = await download_site(size)
    try:
        relay = await start_relay("--fallback", f"127.0.0.1:{site_port}")
        with _visitor(relay.port, 16384) as sock:
            loop = asyncio.get_running_loop()
            started = loop.time()
            got, how = await _slow_reader(sock, 20, chunk=16384, every=0.1)
            assert (got, how) == (size, "eof")
            assert loop.time() - started > CLOSE_GRACE + 1  # the close really had to wait
            samples = await relay.metrics()
            assert samples['zt_relay_fallback_closed_total{reason="closed"}'] == 1
    finally:
        site.close()
