"""A tunnel the relay closes is gone, whatever the client does.

The hard case is a client that stopped reading while replies are queued: a plain
``transport.close()`` waits for a flush that never comes. Every close path must give up
after a short grace (abort, and TCP_USER_TIMEOUT for the kernel), and within grace + 1 s
release the connection's descriptors, its UDP socket, its per-IP slot and its buffer.
Observed from outside only: metrics, ``/proc/<pid>/fd`` and the kernel's socket table.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket

import pytest

from relay import protocol, server
from relay.tunnel import CLOSE_GRACE

LOOPBACK = ("--allow-destination", "127.0.0.0/8", "--min-destination-port", "1")
REPLIES, REPLY_SIZE = 3000, 1400
#: The housekeeping tick runs every timeout / 4 at most: a close is due within this much
#: after its timeout.
TICK = 0.5


def small_window_client(port: int, rcvbuf: int = 4096) -> socket.socket:
    """A client of 127.0.0.1:``port`` whose receive buffer is set before it connects, so the
    window it announces is small from the handshake on."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    return sock


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


#: TCP states (``/proc/net/tcp``, hex) of a connection still being served or flushed:
#: ESTABLISHED, FIN_WAIT1, CLOSE_WAIT, LAST_ACK, CLOSING. FIN_WAIT2 (our FIN was
#: acknowledged, nothing left to send) is the kernel's to time out and holds no data.
HELD_STATES = {"01", "04", "08", "09", "0B"}


def held_sockets(local_port: int, remote_port: int) -> list[str]:
    return [row for row in kernel_sockets(local_port, remote_port) if row.split()[3] in HELD_STATES]


def kernel_sockets(local_port: int, remote_port: int) -> list[str]:
    """Rows of the kernel's TCP table for one connection as the relay sees it (orphans too)."""
    rows = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                local, remote = fields[1], fields[2]
                if int(local.rsplit(":", 1)[1], 16) == local_port and int(remote.rsplit(":", 1)[1], 16) == remote_port:
                    rows.append(line.strip())
    return rows


def kernel_send_queue(local_port: int, remote_port: int) -> int:
    """Bytes the kernel holds toward the client on that connection (``tx_queue``)."""
    return sum(int(row.split()[4].split(":")[0], 16) for row in kernel_sockets(local_port, remote_port))


async def queued(relay, client) -> int:
    """Bytes waiting for the client: in the relay's write buffers and the kernel's queue
    (on loopback the kernel's send buffer grows to megabytes and takes most of it)."""
    return (await relay.metrics())["zt_relay_write_buffer_bytes"] + kernel_send_queue(relay.port, client.port)


async def until(predicate, timeout: float, interval: float = 0.05) -> bool:
    """Waits for a condition (sync or async) up to ``timeout`` seconds; returns whether it held."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return True
        if loop.time() > deadline:
            return False
        await asyncio.sleep(interval)


class StuckClient:
    """A tunnel client with a 4 KiB receive buffer that sends one packet and never reads,
    and a UDP peer that answers with 3,000 x 1,400-byte datagrams (the issue's recipe)."""

    def __init__(self, relay_port: int) -> None:
        self.sock = small_window_client(relay_port)
        self.port = self.sock.getsockname()[1]
        self.peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.peer.bind(("127.0.0.1", 0))
        self.peer.setblocking(False)

    async def flood(self) -> None:
        loop = asyncio.get_running_loop()
        self.sock.sendall(protocol.encode_hello(1, 14, 2) + protocol.encode_packet("127.0.0.1", self.peer.getsockname()[1], b"p" * 64))
        _, tunnel_addr = await asyncio.wait_for(loop.sock_recvfrom(self.peer, 2048), 5)
        for _ in range(REPLIES):
            await loop.sock_sendto(self.peer, b"r" * REPLY_SIZE, tunnel_addr)

    def close(self) -> None:
        self.sock.close()
        self.peer.close()


@pytest.fixture
async def stuck():
    clients: list[StuckClient] = []

    def make(port: int) -> StuckClient:
        client = StuckClient(port)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


async def released(relay, baseline_fds: int, client_port: int) -> bool:
    samples = await relay.metrics()
    return (
        samples["zt_relay_tunnels_active"] == 0
        and samples["zt_relay_connections_open"] == 0
        and samples["zt_relay_client_addresses"] == 0
        and samples["zt_relay_write_buffer_bytes"] == 0
        and fd_count(relay.proc.pid) == baseline_fds
        and not held_sockets(relay.port, client_port)
    )


async def baseline(relay) -> int:
    await relay.metrics()  # the health connection is open and closed once before counting
    return fd_count(relay.proc.pid)


async def test_a_client_that_stops_reading_fills_the_write_buffer(start_relay, stuck):
    """The precondition of the close tests: replies really are queued."""
    relay = await start_relay(*LOOPBACK)
    client = stuck(relay.port)
    await client.flood()
    assert await queued(relay, client) > 64 * 1024
    samples = await relay.metrics()
    assert samples["zt_relay_connections_open"] == 1 and samples["zt_relay_client_addresses"] == 1


async def test_an_idle_tunnel_with_a_stuck_buffer_is_released_within_grace_plus_one_second(start_relay, stuck):
    relay = await start_relay(*LOOPBACK, "--idle-timeout", "2")
    fds = await baseline(relay)
    client = stuck(relay.port)
    await client.flood()
    assert await queued(relay, client) > 64 * 1024
    # closed by the idle timeout at the latest 2 s + one tick after the flood, then released
    assert await until(lambda: released(relay, fds, client.port), 2 + TICK + CLOSE_GRACE + 1)
    assert (await relay.metrics())['zt_relay_tunnels_closed_total{reason="idle_timeout"}'] == 1


async def test_bad_input_with_a_stuck_buffer_is_released_within_grace_plus_one_second(start_relay, stuck):
    relay = await start_relay(*LOOPBACK)
    fds = await baseline(relay)
    client = stuck(relay.port)
    await client.flood()
    assert await queued(relay, client) > 64 * 1024
    client.sock.sendall(b"\x16\x03\x01\x00\x05hello")
    assert await until(lambda: released(relay, fds, client.port), CLOSE_GRACE + 1)
    assert (await relay.metrics())['zt_relay_tunnels_closed_total{reason="bad_record_header"}'] == 1
    assert relay.logged("bad_record_header")


async def test_a_handshake_timeout_is_released_within_grace_plus_one_second(start_relay):
    relay = await start_relay(*LOOPBACK, "--handshake-timeout", "1")
    fds = await baseline(relay)
    sock = socket.create_connection(("127.0.0.1", relay.port))
    try:
        sock.sendall(b"\x17\x03")
        assert await until(lambda: released(relay, fds, sock.getsockname()[1]), 1 + TICK + CLOSE_GRACE + 1)
        assert (await relay.metrics())['zt_relay_tunnels_closed_total{reason="handshake_timeout"}'] == 1
    finally:
        sock.close()


async def test_refused_connections_leave_the_per_ip_map_empty(start_relay, connect):
    relay = await start_relay(*LOOPBACK, "--max-connections-per-ip", "2")
    fds = await baseline(relay)
    clients = [await connect(relay.port) for _ in range(5)]
    await relay.wait_metric('zt_relay_connections_refused_total{reason="max_connections_per_ip"}', lambda v: v == 3)
    samples = await relay.metrics()
    assert samples["zt_relay_client_addresses"] == 1 and samples["zt_relay_connections_open"] == 2
    for client in clients:
        await client.close()
    assert await until(lambda: released(relay, fds, 0), 1)


async def test_the_drain_gives_up_on_a_stuck_buffer_and_the_kernel_keeps_nothing(start_relay, stuck):
    relay = await start_relay(*LOOPBACK, "--drain-timeout", "1")
    client = stuck(relay.port)
    await client.flood()
    assert await queued(relay, client) > 64 * 1024
    started = asyncio.get_running_loop().time()
    relay.signal(signal.SIGTERM)
    assert await relay.wait(timeout=1 + CLOSE_GRACE + 1 + 1) == 0
    assert asyncio.get_running_loop().time() - started <= 1 + CLOSE_GRACE + 1
    # no orphan left in the kernel still trying to deliver the queue to a client that won't read
    assert held_sockets(relay.port, client.port) == []


def test_tunnel_sockets_tell_the_kernel_to_give_up_on_unacknowledged_data():
    listener = socket.create_server(("127.0.0.1", 0))
    conn = socket.create_connection(listener.getsockname())
    try:
        server.configure_stream(conn)
        assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == server.TCP_USER_TIMEOUT_MS
        assert 0 < server.TCP_USER_TIMEOUT_MS <= 60_000
    finally:
        conn.close()
        listener.close()
