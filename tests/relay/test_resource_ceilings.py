"""Resource ceilings are known and refused cleanly: IPv6 sockets that can't be opened,
ephemeral-port exhaustion, descriptor and port ceilings at start, and a memory budget."""

import errno
import socket

import pytest

from relay import limits, protocol
from relay.config import Endpoint, RelayConfig
from relay.server import Relay
from tests.relay.conftest import Client
from tests.relay.test_hostile_packets import FakeTransport, open_tunnel

LOOPBACK = ("--allow-destination", "127.0.0.0/8", "--allow-destination", "::1/128", "--min-destination-port", "1")


def failing_family(family: int, err: int):
    """A Tunnel._udp_socket stand-in failing for one address family, as a kernel without
    IPv6 (EAFNOSUPPORT) or without free ports (EADDRINUSE) does."""
    from relay.tunnel import Tunnel

    real = Tunnel._udp_socket

    def udp_socket(self, fam, host, callback):
        if fam == family:
            raise OSError(err, errno.errorcode[err])
        return real(self, fam, host, callback)
    return udp_socket


async def test_an_ipv6_packet_without_an_ipv6_socket_is_dropped_and_counted_and_the_tunnel_stays(monkeypatch):
    from relay.tunnel import Tunnel

    monkeypatch.setattr(Tunnel, "_udp_socket", failing_family(socket.AF_INET6, errno.EAFNOSUPPORT))
    relay = Relay(RelayConfig(allow_destination=("127.0.0.0/8", "::1/128"), min_destination_port=1, health_listen=None))
    tunnel = open_tunnel(relay, 2001)
    tunnel.data_received(protocol.encode_packet("::1", 9, b"6" * 16) * 3)
    tunnel.data_received(protocol.encode_packet("127.0.0.1", 9, b"4" * 16))
    assert tunnel.reason is None and not tunnel.transport.closed
    assert relay.stats.dropped["udp_socket_unavailable"] == 3
    assert tunnel.frames_to_udp == 1
    tunnel.connection_lost(None)


async def test_ephemeral_port_exhaustion_refuses_new_tunnels_with_a_counted_reason_and_one_log_line(monkeypatch, caplog):
    from relay.tunnel import Tunnel

    monkeypatch.setattr(Tunnel, "_udp_socket", failing_family(socket.AF_INET, errno.EADDRINUSE))
    relay = Relay(RelayConfig(health_listen=None))
    tunnels = [Tunnel(relay) for _ in range(20)]
    for i, t in enumerate(tunnels):
        t.connection_made(FakeTransport(3000 + i))
    assert relay.stats.refused["ephemeral_ports_exhausted"] == 20
    assert all(t.transport.closed for t in tunnels)
    lines = [r for r in caplog.records if "ephemeral_ports_exhausted" in r.getMessage() or "port" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in caplog.records]
    for t in tunnels:
        t.connection_lost(None)  # what the abort leads to
    assert len(relay.limiter.per_ip) == 0


async def test_open_udp_sockets_are_exported(relay, echo, connect):
    clients = [await connect(relay.port) for _ in range(3)]
    for c in clients:
        c.send(echo.host, echo.port, b"a" * 20)
        await c.recv()
    clients[0].send("::1", echo.port, b"b" * 20)  # opens its IPv6 socket
    assert await relay.wait_metric("zt_relay_udp_sockets_open", lambda v: v == 4) == 4
    await clients[0].close()
    assert await relay.wait_metric("zt_relay_udp_sockets_open", lambda v: v == 2) == 2


def test_ceilings_name_the_real_maximum_when_descriptors_or_ports_are_short():
    warnings = limits.ceiling_warnings(max_connections=20000, workers=2, nofile=4096, ports=(32768, 60999))
    text = " ".join(warnings)
    assert "4096" in text and "ephemeral" in text and "28232" in text
    assert limits.ceiling_warnings(max_connections=1000, workers=2, nofile=65536, ports=(32768, 60999)) == []


async def test_a_relay_whose_connection_cap_exceeds_the_ports_warns_at_start(start_relay):
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low, high = (int(x) for x in f.read().split())
    relay = await start_relay("--max-connections", str(2 * (high - low + 1)))
    assert relay.logged(f"{high - low + 1} ephemeral"), "".join(relay.log)


async def test_new_tunnels_are_refused_under_memory_pressure(start_relay):
    relay = await start_relay("--max-memory", "1000000")  # less than the interpreter itself
    client = await Client.connect(relay.port)
    assert await client.closed()
    samples = await relay.metrics()
    assert samples['zt_relay_connections_refused_total{reason="memory_pressure"}'] == 1
    await client.close()


@pytest.mark.parametrize("text, value", [("268435456", 268435456), ("256Mi", 256 << 20), ("1G", 10**9), ("0", 0)])
def test_max_memory_takes_bytes_with_units(text, value):
    from relay.cli import parse_config

    assert parse_config(["--max-memory", text], {}).max_memory == value


async def test_under_a_budget_admission_keeps_every_tunnel_a_write_buffer_floor():
    """Idle tunnels cost ~3 KiB, so memory samples alone admit any number; then the
    write-buffer share drops to 0 and the tunnels' fixed worst case (kernel send buffer,
    one read's replies) outgrows the budget. New tunnels are refused before that."""
    from relay import server

    relay = Relay(RelayConfig(max_memory=256 << 20, health_listen=None))
    room = 10 << 20
    relay.write_room = room  # as a memory sample would leave it
    floor = 4 * relay.config.max_record_size  # a few full records
    kernel = 2 * (server.TUNNEL_SEND_BUFFER + server.TUNNEL_RECEIVE_BUFFER + server.UDP_SOCKETS * server.UDP_RECEIVE_BUFFER)
    per_tunnel = kernel + 32 * relay.config.max_record_size + floor
    tunnels = [open_tunnel(relay, 4000 + i) for i in range(20)]
    admitted = [t for t in tunnels if t.admitted]
    assert len(admitted) == room // per_tunnel, len(admitted)  # 6 of 20
    assert relay.stats.refused["memory_pressure"] == 20 - len(admitted)
    for t in tunnels:
        if not t.admitted:
            t.connection_lost(None)  # what the refusal's abort leads to
    relay.apply_write_share()
    assert relay.write_high >= floor
    for t in admitted:
        t.connection_lost(None)


async def test_site_connections_do_not_take_the_tunnels_admission_floor():
    """Site traffic never blocks tunnels: visitors are admitted against the memory room on
    their own terms (``site_room``) and shrink the tunnels' write buffers, but the tunnels'
    floor at admission counts tunnels only (a visitor counted as two shares there would let
    100 visitors shut every tunnel out)."""
    from relay import server
    from relay.config import Endpoint
    from relay.fallback import FallbackRouter

    class Visitor:  # enough of a splice for the share arithmetic
        def set_write_limits(self, high):
            pass

        def buffered(self):
            return 0

    relay = Relay(RelayConfig(max_memory=256 << 20, fallback=Endpoint("127.0.0.1", 9), health_listen=None))
    relay.fallback = FallbackRouter(relay)
    relay.fallback.splices = {Visitor() for _ in range(100)}
    try:
        room = 10 << 20
        relay.write_room = room
        kernel = 2 * (server.TUNNEL_SEND_BUFFER + server.TUNNEL_RECEIVE_BUFFER + server.UDP_SOCKETS * server.UDP_RECEIVE_BUFFER)
        per_tunnel = kernel + relay._batch + 4 * relay.config.max_record_size
        tunnels = [open_tunnel(relay, 5000 + i) for i in range(20)]
        assert sum(t.admitted for t in tunnels) == room // per_tunnel
        for t in tunnels:
            t.connection_lost(None)
    finally:
        relay.fallback.splices = set()
        relay.fallback.close()


async def test_with_workers_each_process_shares_out_only_its_part_of_the_pods_memory_room():
    """Every worker samples the same cgroup: each must set aside only its part of the room,
    or N workers admit N times what the pod can hold."""
    relay = Relay(RelayConfig(listen=(Endpoint("127.0.0.1", 8443),), workers=4, max_memory=256 << 20, health_listen=None))
    relay.memory.used = 100 << 20
    relay._share_write_buffers()
    assert relay.write_room == ((256 << 20) * 0.9 - (100 << 20)) / 4


async def test_under_a_budget_a_tunnels_kernel_receive_buffer_is_part_of_its_reserved_worst_case():
    """cgroup v2 charges a socket's receive queue to the pod. A client that sends fast makes
    the kernel autotune its tunnel's receive buffer (1.5 MiB measured on loopback, up to
    tcp_rmem's max); while the relay's loop is busy (many such tunnels, one CPU) every such
    queue fills up to it. Admission reserves per tunnel only the send buffer, one read of
    replies and a share (``Relay._fixed``): what a receive queue may hold must be in it."""
    import asyncio

    from relay import server

    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))  # takes the datagrams, never read: the kernel drops the excess
    # A budget far above what this (test) process uses: admission never refuses here.
    relay = Relay(RelayConfig(listen=(Endpoint("127.0.0.1", 0),), max_memory=1 << 40, health_listen=None,
                              allow_destination=("127.0.0.0/8",), min_destination_port=1))
    await relay.start()
    client = await Client.connect(relay.addresses[0][1])
    try:
        packet = protocol.encode_packet("127.0.0.1", sink.getsockname()[1], b"z" * 1400)
        burst = packet * 400  # ~570 KiB
        for _ in range(200):  # ~110 MiB: the kernel autotunes a fast reader's buffer upwards
            client.send_raw(burst)
            await client.writer.drain()
        (tunnel,) = relay.tunnels
        received = tunnel.transport.get_extra_info("socket").getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        reserved = relay._fixed - relay._batch - 2 * (server.TUNNEL_SEND_BUFFER + server.UDP_SOCKETS * server.UDP_RECEIVE_BUFFER)
        assert received <= reserved, (received, reserved)
    finally:
        await client.close()
        await relay.close()
        sink.close()


async def test_under_a_budget_a_tunnels_udp_receive_buffers_are_bounded_and_part_of_its_reserved_worst_case():
    """cgroup v2 charges a UDP socket's receive queue to the pod too. A tunnel's sockets (its
    IPv4 one, and its IPv6 one once the client sends an IPv6 record) kept the kernel's
    default (rmem_default, 208 KiB each) while admission reserved nothing for them: peers
    flooding a tunnel whose loop is behind fill both. Under a budget each is fixed, and what
    the kernel holds for both is in the tunnel's reserved worst case (``Relay._fixed``)."""
    from relay import server
    from tests.relay.conftest import Echo

    echo4, echo6 = await Echo.bind(), await Echo.bind("::1")
    # A budget far above what this (test) process uses: admission never refuses here.
    relay = Relay(RelayConfig(listen=(Endpoint("127.0.0.1", 0),), max_memory=1 << 40, health_listen=None,
                              allow_destination=("127.0.0.0/8", "::1/128"), min_destination_port=1))
    await relay.start()
    client = await Client.connect(relay.addresses[0][1])
    try:
        client.send("127.0.0.1", echo4.port, b"v4" * 20)
        assert (await client.recv())[2] == b"v4" * 20
        client.send("::1", echo6.port, b"v6" * 20)
        assert (await client.recv())[2] == b"v6" * 20
        (tunnel,) = relay.tunnels
        held = [sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) for sock in (tunnel.udp4, tunnel.udp6)]
        # what _fixed sets aside besides one read of replies and the TCP socket's two buffers
        reserved = relay._fixed - relay._batch - 2 * (server.TUNNEL_SEND_BUFFER + server.TUNNEL_RECEIVE_BUFFER)
        assert sum(held) <= reserved, (held, reserved)
    finally:
        await client.close()
        await relay.close()
        echo4.close()
        echo6.close()


def site_reservation(relay: Relay) -> int:
    """What ``site_room`` sets aside per site connection, from its answers: the least room
    in which it admits one more, divided among them all."""
    count = len(relay.fallback.splices) + 1
    saved, low, high = relay.write_room, 0, 1 << 40
    try:
        while low < high:
            relay.write_room = mid = (low + high) // 2
            low, high = (low, mid) if relay.site_room() else (mid + 1, high)
    finally:
        relay.write_room = saved
    return low // count


@pytest.mark.parametrize("preconnect", [0, 2], ids=["dialed", "pooled"])
async def test_under_a_budget_a_site_connections_backend_send_buffer_is_bounded_and_part_of_its_reservation(preconnect, monkeypatch):
    """Under a budget the visitor's two kernel buffers and the backend socket's receive buffer
    are fixed and reserved per site connection (``site_room``), but the backend socket's send
    buffer was autotuned (up to tcp_wmem's 4 MiB toward a backend that reads slower than the
    visitor uploads) and reserved nowhere, while cgroup v2 charges it to the pod. A backend
    connection taken from the --fallback-preconnect pool gets the same bounds."""
    import asyncio

    from relay import backend_pool, splice

    # The pooled connection waits for the second visitor however slow the machine (aged out
    # and redialed, it was not the one recorded below, or a new one on a reused descriptor).
    monkeypatch.setattr(backend_pool, "MAX_AGE", 60.0)

    async def sink(reader, writer):
        while await reader.read(1 << 20):
            pass
        writer.close()

    backend = await asyncio.start_server(sink, "127.0.0.1", 0)
    # A budget far above what this (test) process uses: admission never refuses here.
    relay = Relay(RelayConfig(listen=(Endpoint("127.0.0.1", 0),), max_memory=1 << 40, health_listen=None,
                              fallback=Endpoint("127.0.0.1", backend.sockets[0].getsockname()[1]), fallback_preconnect=preconnect))
    await relay.start()
    pooled = set()
    if preconnect:  # two first visitors warm the pool up (a lone visit owes none): wait for a pooled connection
        firsts = [(await asyncio.open_connection("127.0.0.1", relay.addresses[0][1]))[1] for _ in range(2)]
        for first in firsts:
            first.write(b"GET / HTTP/1.1\r\nHost: site\r\n\r\n")
        deadline = asyncio.get_running_loop().time() + 10
        while not len(relay.fallback.preconnect):
            assert asyncio.get_running_loop().time() < deadline, "no pooled connection within 10 s"
            await asyncio.sleep(0.01)
        pooled = {entry.conn.fileno() for entry in relay.fallback.preconnect.pool.entries}
        for first in firsts:
            first.close()
        while relay.fallback.splices:  # the first visitors' splices are gone
            assert asyncio.get_running_loop().time() < deadline, "the first visitors' connections stayed"
            await asyncio.sleep(0.01)
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.addresses[0][1])
    try:
        writer.write(b"PUT /upload HTTP/1.1\r\nHost: site\r\n\r\n")
        chunk = b"u" * (1 << 20)
        for _ in range(64):  # 64 MiB: the kernel autotunes a fast connection's send buffer upwards
            writer.write(chunk)
            await writer.drain()
        (site,) = relay.fallback.splices
        if preconnect:
            assert site.backend.transport.get_extra_info("socket").fileno() in pooled, "not a pooled connection"
        held = {}
        for side in (site.client, site.backend):
            sock = side.transport.get_extra_info("socket")
            for name, option in (("send", socket.SO_SNDBUF), ("receive", socket.SO_RCVBUF)):
                held[f"{side.name} {name}"] = sock.getsockopt(socket.SOL_SOCKET, option)
        # what site_room sets aside besides both directions' write buffers and a read past each
        reserved = site_reservation(relay) - 2 * (relay.site_high + splice.READ_SIZE)
        assert sum(held.values()) <= reserved, (held, reserved)
    finally:
        writer.close()
        await relay.close()
        backend.close()
        # The backend's side of the relay's connections (the pool's too) ends with the EOF
        # relay.close() sent: waited for, or a transport left open at the loop's end was
        # reported (ResourceWarning, "loop is closed") in whichever later test collected it.
        sinks = [t for t in asyncio.all_tasks() if t.get_coro().__name__ == "sink"]
        if sinks:
            await asyncio.wait(sinks, timeout=10)
        assert all(t.done() for t in sinks), "the backend's connections never saw the relay close"
