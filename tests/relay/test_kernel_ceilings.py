"""Resource ceilings with the real kernel limits, not stand-ins: a private network namespace
with a tiny ``ip_local_port_range`` or IPv6 disabled, a low ``RLIMIT_NOFILE``, a memory
cgroup with a hard limit. The real relay process runs inside them (tests/relay/kernel.py).

What the kernel really does there (found by these tests, unlike the in-process stand-ins in
test_resource_ceilings.py):
- UDP ``bind(port 0)`` with every ephemeral port taken fails with EADDRINUSE (an unbound
  ``sendto`` would fail with EAGAIN; TCP ``connect`` with EADDRNOTAVAIL).
- With ``disable_ipv6`` an IPv6 UDP socket still opens and binds; only ``sendto`` fails
  (EADDRNOTAVAIL toward ::1, ENETUNREACH elsewhere, which is dropped as ``unreachable``
  like any destination without a route).
- With every descriptor taken, libuv's accept loop closes new connections itself (its
  EMFILE trick): uncounted, and the health scrape is reset with them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import resource
import select
import socket
import subprocess
import time

import asyncio_dgram
import pytest

from relay import protocol
from tests import ports
from tests.relay import kernel
from tests.relay.conftest import Client, Echo

pytestmark = pytest.mark.skipif(not kernel.is_root(), reason="needs root: network namespaces, rlimits and cgroups")

LOOPBACK = ("--allow-destination", "127.0.0.0/8", "--allow-destination", "::1/128", "--min-destination-port", "1")
#: 8 ephemeral ports in the test's namespace; clients and the echo peer bind below them
PORT_RANGE = (40000, 40007)
_client_ports = itertools.count(20000)


async def connect_from_fixed_port(port: int) -> Client:
    """A tunnel client whose TCP source port is not ephemeral (the namespace has 8)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.1", next(_client_ports)))
    client = Client(reader, writer)
    client.send_raw(protocol.encode_hello(1, 14, 2))
    return client


async def round_trip(client: Client, echo: Echo, payload: bytes, host: str = "127.0.0.1") -> bytes:
    client.send(host, echo.port, payload)
    return (await client.recv())[2]


async def logged_lines(relay, text: str, timeout: float = 5.0) -> list[str]:
    """The relay's log lines with ``text``, once there is one (or the timeout passed)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not relay.logged(text) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.02)
    return [line for line in relay.log if text in line]


def refusal_lines(relay, reason: str) -> list[str]:
    return [line for line in relay.log if "refusing connection" in line and reason in line]


async def test_ephemeral_port_exhaustion_for_real_refuses_new_tunnels_and_recovers(start_relay):
    with kernel.private_netns(ipv4__ip_local_port_range="%d %d" % PORT_RANGE):
        echo = Echo(await asyncio_dgram.bind(("127.0.0.1", 30000)))
        try:
            relay = await start_relay(*LOOPBACK)
            ports = PORT_RANGE[1] - PORT_RANGE[0] + 1
            assert relay.logged(f"only {ports} ephemeral ports ({PORT_RANGE[0]}-{PORT_RANGE[1]}"), "".join(relay.log)
            tunnels = [await connect_from_fixed_port(relay.port) for _ in range(ports)]
            for i, client in enumerate(tunnels):
                assert await round_trip(client, echo, b"%02d" % i * 10) == b"%02d" % i * 10
            assert (await relay.metrics())["zt_relay_udp_sockets_open"] == ports

            refused = [await connect_from_fixed_port(relay.port) for _ in range(3)]
            for client in refused:
                assert await client.closed()
            samples = await relay.metrics()
            assert samples['zt_relay_connections_refused_total{reason="ephemeral_ports_exhausted"}'] == 3
            assert len(refusal_lines(relay, "ephemeral_ports_exhausted")) == 1, "".join(relay.log)
            assert not relay.logged("Traceback"), "".join(relay.log)

            # The tunnels that have their port keep working, both ways.
            assert await round_trip(tunnels[0], echo, b"still here" * 3) == b"still here" * 3
            assert await round_trip(tunnels[-1], echo, b"and here" * 3) == b"and here" * 3

            # A close gives its port back: the next tunnel gets it.
            await tunnels.pop(0).close()
            assert await relay.wait_metric("zt_relay_udp_sockets_open", lambda v: v == ports - 1) == ports - 1
            newcomer = await connect_from_fixed_port(relay.port)
            tunnels.append(newcomer)
            assert await round_trip(newcomer, echo, b"new tunnel" * 3) == b"new tunnel" * 3
            assert (await relay.metrics())['zt_relay_connections_refused_total{reason="ephemeral_ports_exhausted"}'] == 3
            for client in tunnels + refused:
                await client.close()
        finally:
            echo.close()


async def test_an_ipv6_frame_without_ipv6_is_dropped_as_unavailable_and_ipv4_flows_on(start_relay):
    with kernel.private_netns(ipv6__conf__all__disable_ipv6="1", ipv6__conf__default__disable_ipv6="1"):
        echo = await Echo.bind()
        try:
            relay = await start_relay(*LOOPBACK)
            client = await connect_from_fixed_port(relay.port)
            assert await round_trip(client, echo, b"v4 first" * 3) == b"v4 first" * 3
            for _ in range(5):
                client.send("::1", echo.port, b"v6 frame" * 3)
            assert await round_trip(client, echo, b"v4 after" * 3) == b"v4 after" * 3
            samples = await relay.metrics()
            assert samples.get('zt_relay_dropped_total{reason="udp_socket_unavailable"}') == 5, samples
            assert samples.get("zt_relay_udp_send_errors_total", 0) == 0, samples
            assert samples["zt_relay_tunnels_active"] == 1
            assert not relay.logged("Traceback"), "".join(relay.log)
            await client.close()
        finally:
            echo.close()


async def test_an_unreachable_destination_is_a_per_packet_drop_and_other_destinations_work(start_relay):
    """IPv6 works in the namespace, but 2001:db8::/32 has no route (ENETUNREACH) and
    2001:db8:1::/48 and 198.18.1.0/24 have unreachable routes (EHOSTUNREACH): those packets
    are dropped as ``unreachable``, not blamed on a missing IPv6 socket, and the tunnel goes
    on to ::1 and 127.0.0.1."""
    with kernel.private_netns():
        subprocess.run(["ip", "-6", "route", "add", "unreachable", "2001:db8:1::/48"], check=True, timeout=10)
        subprocess.run(["ip", "route", "add", "unreachable", "198.18.1.0/24"], check=True, timeout=10)
        echo4, echo6 = await Echo.bind(), await Echo.bind("::1")
        try:
            relay = await start_relay(*LOOPBACK, "--allow-destination", "2001:db8::/32", "--allow-destination", "198.18.0.0/15")
            client = await connect_from_fixed_port(relay.port)
            assert await round_trip(client, echo6, b"v6 first" * 3, "::1") == b"v6 first" * 3
            for host in ("2001:db8::1", "2001:db8:1::1", "198.18.1.1"):
                for _ in range(4):
                    client.send(host, 4000, b"no route" * 3)
            assert await round_trip(client, echo6, b"v6 after" * 3, "::1") == b"v6 after" * 3
            assert await round_trip(client, echo4, b"v4 after" * 3) == b"v4 after" * 3
            samples = await relay.metrics()
            assert samples.get('zt_relay_dropped_total{reason="unreachable"}') == 12, samples
            assert samples.get('zt_relay_dropped_total{reason="udp_socket_unavailable"}', 0) == 0, samples
            assert samples.get("zt_relay_udp_send_errors_total", 0) == 0, samples
            assert samples["zt_relay_tunnels_active"] == 1
            assert len([line for line in relay.log if "unreachable" in line]) == 1, "".join(relay.log)  # once per tunnel
            assert not relay.logged("Traceback"), "".join(relay.log)
            await client.close()
        finally:
            echo4.close()
            echo6.close()


async def test_unreachable_destinations_do_not_fill_the_reply_window(start_relay):
    """An attacker's next try: spray more destinations without a route than a tunnel may
    have in its reply window (1,024). They hold no reply-window entry, so the tunnel can
    still reach a new, routable destination afterwards (not too_many_destinations)."""
    with kernel.private_netns():
        echo = await Echo.bind()
        try:
            relay = await start_relay(*LOOPBACK, "--allow-destination", "198.18.0.0/15", "--new-destination-rate", "0")
            client = await connect_from_fixed_port(relay.port)
            for i in range(1100):  # 198.18.0.0/15 has no route in the namespace: ENETUNREACH
                client.send(f"198.18.{i >> 8}.{i & 255}", 4000, b"no route" * 3)
            assert await round_trip(client, echo, b"new peer" * 3) == b"new peer" * 3
            samples = await relay.metrics()
            assert samples.get('zt_relay_dropped_total{reason="unreachable"}') == 1100, samples
            assert samples.get('zt_relay_dropped_total{reason="too_many_destinations"}', 0) == 0, samples
            await client.close()
        finally:
            echo.close()



async def test_a_destination_denied_by_a_local_firewall_is_a_per_packet_drop_and_other_destinations_work(start_relay):
    """A local egress deny (an iptables OUTPUT DROP, which is what a NetworkPolicy's egress
    rules become on many CNIs) makes sendto fail with EPERM. That one destination's packets
    are dropped as ``egress_denied`` (logged once per tunnel), not counted as send errors,
    and hold no reply-window slot: the tunnel's other destinations, and new ones after a
    spray of more denied destinations than the window holds, go on."""
    with kernel.private_netns():
        echo4, echo6, late = await Echo.bind(), await Echo.bind("::1"), await Echo.bind()
        denied4, denied6 = await Echo.bind(), await Echo.bind("::1")
        for tool, host, ports in (("iptables", "127.0.0.1", str(denied4.port)), ("ip6tables", "::1", str(denied6.port)),
                                  ("iptables", "127.0.0.1", "5000:6099")):
            subprocess.run([tool, "-A", "OUTPUT", "-p", "udp", "-d", host, "--dport", ports, "-j", "DROP"], check=True, timeout=10)
        try:
            relay = await start_relay(*LOOPBACK, "--new-destination-rate", "0")
            client = await connect_from_fixed_port(relay.port)
            assert await round_trip(client, echo4, b"v4 first" * 3) == b"v4 first" * 3
            for _ in range(4):
                client.send("127.0.0.1", denied4.port, b"denied" * 4)
                client.send("::1", denied6.port, b"denied" * 4)
            assert await round_trip(client, echo6, b"v6 after" * 3, "::1") == b"v6 after" * 3
            assert await round_trip(client, echo4, b"v4 after" * 3) == b"v4 after" * 3
            samples = await relay.metrics()
            assert samples.get('zt_relay_dropped_total{reason="egress_denied"}') == 8, samples
            assert samples.get("zt_relay_udp_send_errors_total", 0) == 0, samples
            assert samples["zt_relay_tunnels_active"] == 1

            for port in range(5000, 6100):  # 1,100 denied destinations: more than the reply window holds
                client.send("127.0.0.1", port, b"denied" * 4)
            assert await round_trip(client, late, b"new peer" * 3) == b"new peer" * 3
            samples = await relay.metrics()
            assert samples.get('zt_relay_dropped_total{reason="egress_denied"}') == 8 + 1100, samples
            assert samples.get('zt_relay_dropped_total{reason="too_many_destinations"}', 0) == 0, samples
            assert len([line for line in relay.log if "egress_denied" in line]) == 1, "".join(relay.log)  # once per tunnel
            assert not relay.logged("Traceback"), "".join(relay.log)
            await client.close()
        finally:
            for echo in (echo4, echo6, late, denied4, denied6):
                echo.close()

def nofile(limit: int):
    def lower() -> None:  # in the relay's child before exec: soft and hard (it lifts soft to hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    return lower


async def test_a_low_rlimit_nofile_is_warned_with_the_real_ceiling_and_refused_cleanly(start_relay, echo):
    relay = await start_relay(*LOOPBACK, preexec_fn=nofile(64))
    warned = await logged_lines(relay, "RLIMIT_NOFILE is 64")  # counted once it listens
    assert len(warned) == 1, "".join(relay.log)
    ceiling = int(re.search(r"at most (\d+) tunnels", warned[0]).group(1))

    # Tunnels (IPv4 only: 2 descriptors each) until the first refusal: exactly the warned ceiling.
    tunnels: list[Client] = []
    while True:
        client = await Client.connect(relay.port)
        client.send(echo.host, echo.port, b"t%03d" % len(tunnels) * 5)
        try:
            assert (await client.recv(timeout=2))[2] == b"t%03d" % len(tunnels) * 5
        except asyncio.TimeoutError:
            assert await client.closed()
            await client.close()
            break
        tunnels.append(client)
        assert len(tunnels) <= 64
    assert len(tunnels) == ceiling, "".join(relay.log)

    # At the ceiling: tunnels that now want IPv6 sockets, a scrape, more new tunnels. Each
    # new tunnel is refused and counted, the scrape is answered (not reset with them).
    for client in tunnels[:4]:
        client.send("::1", echo.port, b"six" * 8)
    assert await round_trip(tunnels[0], echo, b"v4 still" * 3) == b"v4 still" * 3
    late = [await Client.connect(relay.port) for _ in range(5)]
    for client in late:
        assert await client.closed()
        await client.close()
    samples = await relay.metrics()
    assert samples['zt_relay_connections_refused_total{reason="file_descriptors_exhausted"}'] == 6, samples
    assert samples["zt_relay_tunnels_active"] == ceiling
    # An odd descriptor left over may still take one IPv6 socket; the others are dropped.
    opened = samples["zt_relay_udp_sockets_open"] - ceiling
    assert opened in (0, 1), samples
    assert samples['zt_relay_dropped_total{reason="udp_socket_unavailable"}'] == 4 - opened, samples
    assert len(refusal_lines(relay, "file_descriptors_exhausted")) == 1, "".join(relay.log)
    assert not relay.logged("Traceback"), "".join(relay.log)
    for client in tunnels[4:]:
        assert await round_trip(client, echo, b"others ok" * 3) == b"others ok" * 3

    # Closes give descriptors back: new tunnels work again.
    for client in tunnels[-2:]:
        await client.close()
    assert await relay.wait_metric("zt_relay_tunnels_active", lambda v: v == ceiling - 2) == ceiling - 2
    again = await Client.connect(relay.port)
    assert await round_trip(again, echo, b"recovered" * 3) == b"recovered" * 3
    for client in tunnels[:-2] + [again]:
        await client.close()


# -- memory: a real memory cgroup ---------------------------------------------------------------

MEMORY_LIMIT = 96 << 20
BIG_REPLY = b"f" * 16000
needs_memory_cgroup = pytest.mark.skipif(kernel.memory_hierarchy() is None, reason="no writable memory cgroup hierarchy")


@pytest.fixture
def memory_cgroup():
    cgroup = kernel.MemoryCgroup(MEMORY_LIMIT)
    yield cgroup
    cgroup.remove()


def free_port() -> int:
    return ports.unused_port()  # outside the ephemeral range: see tests/ports.py


class Flood:
    """A UDP peer that answers each tunnel with far more than it asked for."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.sock.settimeout(5)

    def stuck_tunnel(self, relay_port: int) -> tuple[socket.socket, tuple]:
        """A client that stops reading (tiny receive buffer) after sending one packet here;
        returns it and the relay's UDP address for it."""
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(("127.0.0.1", relay_port))
        client.sendall(protocol.encode_hello(1, 14, 2) + protocol.encode_packet("127.0.0.1", self.port, b"p" * 20))
        return client

    def sources(self, count: int) -> list[tuple]:
        return [self.sock.recvfrom(100)[1] for _ in range(count)]

    def source_unless_closed(self, client: socket.socket) -> list[tuple]:
        """``sources(1)`` for that tunnel, or [] as soon as the relay has closed the client
        (refused it): no need to wait out the timeout for a packet that will never come.
        TimeoutError if neither happens."""
        deadline = time.monotonic() + self.sock.gettimeout()
        watched = [self.sock, client]
        while (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select(watched, [], [], left)
            if self.sock in readable:
                return self.sources(1)
            if client in readable:
                try:
                    if client.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                        return []
                except ConnectionResetError:
                    return []
                watched = [self.sock]  # bytes for the client, not a close: wait for the packet only
        raise TimeoutError("neither the tunnel's packet nor its close came")

    async def pour(self, sources: list[tuple], rounds: int) -> None:
        for _ in range(rounds):
            for source in sources:
                for _ in range(8):
                    self.sock.sendto(BIG_REPLY, source)
            await asyncio.sleep(0.005)  # the relay reads; its UDP buffer would drop the rest

    def close(self) -> None:
        self.sock.close()


async def refused(relay_port: int) -> bool:
    client = await Client.connect(relay_port)
    try:
        return await client.closed(timeout=3)
    finally:
        await client.close()


@needs_memory_cgroup
async def test_the_default_budget_is_the_cgroups_limit_and_refuses_before_an_oom_kill(start_relay, echo, memory_cgroup):
    relay = await start_relay(*LOOPBACK, "--write-buffer-limit", str(4 << 20), preexec_fn=memory_cgroup.enter)
    assert relay.logged(f"memory budget: {MEMORY_LIMIT} bytes (the cgroup's memory limit)"), "".join(relay.log)
    healthy = await Client.connect(relay.port)
    assert await round_trip(healthy, echo, b"healthy" * 3) == b"healthy" * 3
    flood = Flood()
    stuck = []
    try:
        # One stuck tunnel at a time, each filled before the next: refused from 90 % on.
        for _ in range(MEMORY_LIMIT // (1 << 20)):
            stuck.append(flood.stuck_tunnel(relay.port))
            try:
                source = flood.source_unless_closed(stuck[-1])
            except TimeoutError:
                break  # refused: its packet never came
            if not source:
                break  # refused: closed by the relay
            await flood.pour(source, 40)
            await relay.wait_metric("zt_relay_write_buffer_bytes", lambda v: v > 0)
        samples = await relay.metrics()
        assert samples.get('zt_relay_connections_refused_total{reason="memory_pressure"}', 0) >= 1, samples
        assert samples["zt_relay_memory_bytes"] < MEMORY_LIMIT
        assert await refused(relay.port)
        assert memory_cgroup.oom_kills() == 0 and relay.proc.returncode is None
        assert await round_trip(healthy, echo, b"still ok" * 3) == b"still ok" * 3

        for client in stuck:
            client.close()
        assert await relay.wait_metric("zt_relay_tunnels_active", lambda v: v == 1, timeout=10) == 1
        # Back under the low-water mark (85 %): what the closed tunnels held is given back,
        # to the kernel too (freed heap kept by malloc would keep the relay refusing).
        assert await relay.wait_metric("zt_relay_memory_bytes", lambda v: v < 0.85 * MEMORY_LIMIT, timeout=10) < 0.85 * MEMORY_LIMIT
        # Refused at 90 % of the budget, or before it by the per-tunnel floor of admission
        # (each tunnel's worst case, 1.56 MiB, set aside): which comes first depends on how
        # far the loop is behind when the last tunnels fill. A pressure that began must end.
        if relay.logged("memory pressure: "):
            assert await logged_lines(relay, "memory pressure over"), "".join(relay.log)
        else:
            assert relay.logged("each may hold"), "".join(relay.log)
        again = await Client.connect(relay.port)
        assert await round_trip(again, echo, b"again" * 4) == b"again" * 4
        await again.close()
        assert memory_cgroup.oom_kills() == 0
    finally:
        for client in stuck:
            client.close()
        flood.close()
        await healthy.close()


@needs_memory_cgroup
async def test_tunnels_admitted_in_one_burst_and_flooded_are_not_oom_killed(start_relay, echo, memory_cgroup):
    """Admission alone can't stop this: every tunnel is admitted before the next memory sample,
    then their peers fill the write buffers (4 MiB each, 32 tunnels: 1.3 x the limit; the room
    that admission keeps fits 45 x the per-tunnel worst case of 1.56 MiB, measured with idle
    tunnels, so 33 leave a margin for the relay's own memory; 60 no longer fit). Before
    the write buffers shared the budget, the relay was OOM-killed without one sample seeing
    90 %: one loop iteration queued tens of MB."""
    relay = await start_relay(*LOOPBACK, "--write-buffer-limit", str(4 << 20), "--max-connections-per-ip", "1000",
                              preexec_fn=memory_cgroup.enter)
    healthy = await Client.connect(relay.port)
    assert await round_trip(healthy, echo, b"healthy" * 3) == b"healthy" * 3
    flood = Flood()
    stuck = [flood.stuck_tunnel(relay.port) for _ in range(32)]
    try:
        sources = flood.sources(len(stuck))
        await flood.pour(sources, 40)
        # Until the relay has read what the kernel queued for it, or has been killed.
        await relay.wait_metric("zt_relay_dropped_total{reason=\"write_buffer_full\"}", lambda v: v > 0)
        assert memory_cgroup.oom_kills() == 0 and relay.proc.returncode is None, f"OOM-killed ({relay.proc.returncode})"
        samples = await relay.metrics()
        assert samples["zt_relay_tunnels_active"] == 33
        assert samples["zt_relay_memory_bytes"] < MEMORY_LIMIT
        assert await round_trip(healthy, echo, b"still ok" * 3) == b"still ok" * 3
        assert not relay.logged("Traceback"), "".join(relay.log)
    finally:
        for client in stuck:
            client.close()
        flood.close()
        await healthy.close()
    assert memory_cgroup.oom_kills() == 0


@needs_memory_cgroup
@pytest.mark.parametrize("workers", [1, 2])
async def test_idle_tunnels_admitted_then_flooded_stay_within_the_budget(start_relay, echo, memory_cgroup, workers):
    """An idle tunnel costs ~3 KiB, so memory samples alone admitted any number: 200 in a
    96 MiB cgroup (the write-buffer share of each was 0 from about 150 on). Flooded by their
    peers, their kernel send buffers (512 KiB each under a budget) held 101.6 MiB, which
    cgroup v2 charges to the pod. Admission keeps a floor per tunnel instead: refused as
    memory_pressure before the room can't give each its fixed worst case and a few full
    records of write buffer. With workers, each shares the pod's one cgroup."""
    tcp_usage = None
    if memory_cgroup.version == 1:  # v2 charges socket memory to the pod; v1 only with this on
        tcp_usage = memory_cgroup.path / "memory.kmem.tcp.usage_in_bytes"
        (memory_cgroup.path / "memory.kmem.tcp.limit_in_bytes").write_text(str(8 << 30))
    listen = "127.0.0.1:0" if workers == 1 else f"127.0.0.1:{free_port()}"
    relay = await start_relay(*LOOPBACK, "--max-connections-per-ip", "1000", "--workers", str(workers), listen=listen,
                              preexec_fn=memory_cgroup.enter)
    healthy = await Client.connect(relay.port)
    assert await round_trip(healthy, echo, b"healthy" * 3) == b"healthy" * 3
    flood = Flood()
    stuck = []
    try:
        for _ in range(200):
            stuck.append(flood.stuck_tunnel(relay.port))
        settled = lambda s: s.get("zt_relay_tunnels_opened_total", 0) + s.get("zt_relay_connections_refused_total{reason=\"memory_pressure\"}", 0)  # noqa: E731
        deadline = asyncio.get_running_loop().time() + 20
        while settled(samples := await relay.metrics()) < 201:  # every tunnel admitted or refused
            assert asyncio.get_running_loop().time() < deadline, samples
            await asyncio.sleep(0.05)
        admitted = int(samples["zt_relay_tunnels_active"]) - 1
        await flood.pour(flood.sources(admitted), 16)
        # Until the relay has read what the kernel queued for it, or has been killed.
        await relay.wait_metric("zt_relay_dropped_total{reason=\"write_buffer_full\"}", lambda v: v > 0, timeout=20)
        assert memory_cgroup.oom_kills() == 0 and relay.proc.returncode is None, f"OOM-killed ({relay.proc.returncode}), {admitted} admitted"
        samples = await relay.metrics()
        held = samples["zt_relay_memory_bytes"] + (int(tcp_usage.read_text()) if tcp_usage else 0)
        print(f"{admitted} admitted, {held / 2**20:.1f} MiB held")
        assert held < 0.95 * MEMORY_LIMIT, f"{held / 2**20:.1f} MiB with the socket memory v2 charges ({admitted} tunnels admitted)"
        assert samples.get('zt_relay_connections_refused_total{reason="memory_pressure"}', 0) > 0, admitted
        assert await round_trip(healthy, echo, b"still ok" * 3) == b"still ok" * 3
        assert not relay.logged("Traceback"), "".join(relay.log)
    finally:
        for client in stuck:
            client.close()
        flood.close()
        await healthy.close()
    assert memory_cgroup.oom_kills() == 0


class Firehose:
    """A fallback backend that answers every connection with ``size`` bytes at once (a big
    download) and then waits: a site visitor that never reads leaves them to the relay."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.connections = 0
        self.server: asyncio.AbstractServer | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        writer.write(b"d" * self.size)
        with contextlib.suppress(ConnectionError):
            await reader.read()  # until the relay closes

    def close(self) -> None:
        for writer in self._writers:
            writer.close()
        self.server.close()


@needs_memory_cgroup
async def test_stalled_site_downloads_cannot_push_the_relay_past_its_budget(start_relay, echo, memory_cgroup):
    """Site connections buffer up to 2 x 512 KiB plus a read each, and only the tunnels'
    write buffers shared the budget: 150 visitors that request a big download and never
    read (one address, far under --fallback-max-connections) pushed the relay of a 96 MiB
    cgroup past its limit (OOM-killed, every tunnel with it)."""
    site = Firehose(4 << 20)
    relay = await start_relay(*LOOPBACK, "--fallback", await site.start(), preexec_fn=memory_cgroup.enter)
    healthy = await Client.connect(relay.port)
    assert await round_trip(healthy, echo, b"healthy" * 3) == b"healthy" * 3
    visitors = []
    try:
        for _ in range(150):
            v = socket.socket()
            v.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            v.connect(("127.0.0.1", relay.port))
            v.sendall(b"GET /big HTTP/1.1\r\nHost: site\r\n\r\n")
            visitors.append(v)
        settled = 'zt_relay_fallback_connections_total{result="connected"}', 'zt_relay_fallback_connections_total{result="memory_pressure"}'

        async def state() -> dict[str, float]:
            try:
                if not memory_cgroup.oom_kills():
                    return await relay.metrics()
            except OSError:  # a scrape reset: killed?
                if not memory_cgroup.oom_kills():
                    raise
            raise AssertionError(f"OOM-killed (oom_kill {memory_cgroup.oom_kills()})")

        # Every visitor connected or refused, and each connected one's download under way
        # (the relay has read at least 32 KiB for each), or the relay was killed.
        while True:
            s = await state()
            connected = s.get(settled[0], 0)
            if connected + s.get(settled[1], 0) == len(visitors) and \
                    s.get('zt_relay_fallback_bytes_total{direction="to_client"}', 0) >= connected * (32 << 10):
                break
            await asyncio.sleep(0.05)
        s = await state()
        assert s["zt_relay_memory_bytes"] < MEMORY_LIMIT, s
        assert await round_trip(healthy, echo, b"still ok" * 3) == b"still ok" * 3
        assert memory_cgroup.oom_kills() == 0 and relay.proc.returncode is None
    finally:
        for v in visitors:
            v.close()
        site.close()
        await healthy.close()


@needs_memory_cgroup
async def test_many_idle_tunnels_do_not_shut_site_visitors_out(start_relay, memory_cgroup):
    """The tunnels' write-buffer shares set aside each one's worst case (a read's worth of
    replies and the kernel's send buffer, ~1 MiB): 150 idle tunnels fill a 96 MiB budget's
    room (admission stops at its floor). Site admission must not reserve that too, or a few
    hundred idle tunnels (3 KiB each) would have every visitor refused."""
    site = Firehose(1000)
    relay = await start_relay(*LOOPBACK, "--fallback", await site.start(), "--max-connections-per-ip", "1000",
                              preexec_fn=memory_cgroup.enter)
    idle = []
    try:
        for _ in range(150):
            idle.append(await Client.connect(relay.port))
        settled = lambda s: s.get("zt_relay_tunnels_opened_total", 0) + s.get("zt_relay_connections_refused_total{reason=\"memory_pressure\"}", 0)  # noqa: E731
        deadline = asyncio.get_running_loop().time() + 20
        while settled(samples := await relay.metrics()) < 150:  # every tunnel admitted or refused
            assert asyncio.get_running_loop().time() < deadline, samples
            await asyncio.sleep(0.05)
        assert samples["zt_relay_tunnels_active"] >= 32, samples  # the budget's tunnels, at the floor
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: site\r\n\r\n")
        assert await asyncio.wait_for(reader.readexactly(1000), 10) == b"d" * 1000
        writer.close()
        assert memory_cgroup.oom_kills() == 0
    finally:
        for client in idle:
            await client.close()
        site.close()


async def test_with_a_fallback_site_connections_leave_the_descriptor_headroom_too(start_relay, echo):
    """Tunnels keep limits.FD_HEADROOM descriptors free, but site connections (two each)
    and connections still being sniffed were not counted: they took the descriptors up to
    the last, and libuv then closed new connections itself (uncounted) and reset scrapes."""
    site = Firehose(5)
    relay = await start_relay(*LOOPBACK, "--fallback", await site.start(), preexec_fn=nofile(64))
    visitors, tunnels, refused = [], [], 0
    try:
        # Site visitors until refused, then tunnels until refused, then more of both.
        while len(visitors) < 40:
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
            writer.write(b"GET / HTTP/1.1\r\n\r\n")
            got = await asyncio.wait_for(reader.read(5), 5)
            if got != b"d" * 5:
                writer.close()
                refused += 1
                break
            visitors.append(writer)
        while len(tunnels) < 40:
            client = await Client.connect(relay.port)
            client.send(echo.host, echo.port, b"t%03d" % len(tunnels) * 5)
            try:
                assert (await client.recv(timeout=2))[2] == b"t%03d" % len(tunnels) * 5
            except asyncio.TimeoutError:
                assert await client.closed()
                await client.close()
                refused += 1
                break
            tunnels.append(client)
        # Site traffic never takes the tunnels' last descriptors (server.FD_RESERVE: 8, two per tunnel).
        assert len(visitors) >= 1 and len(tunnels) >= 3, (len(visitors), len(tunnels), "".join(relay.log))
        # A burst at the ceiling: every one refused and counted (libuv accepts them all in
        # one go; with no descriptor left it closes the rest itself, uncounted).
        late = await asyncio.gather(*(Client.connect(relay.port) for _ in range(6)))
        for client in late:
            assert await client.closed()
            await client.close()
        refused += len(late)
        samples = await relay.metrics()  # answered, not reset with the refused connections
        counted = samples.get('zt_relay_connections_refused_total{reason="file_descriptors_exhausted"}', 0) + sum(
            v for k, v in samples.items() if k.startswith("zt_relay_fallback_connections_total") and "connected" not in k)
        assert counted >= refused, (refused, samples)
        assert not relay.logged("Traceback"), "".join(relay.log)
        for client in tunnels:
            assert await round_trip(client, echo, b"others ok" * 3) == b"others ok" * 3
    finally:
        for writer in visitors:
            writer.close()
        for client in tunnels:
            await client.close()
        site.close()


@needs_memory_cgroup
async def test_stuck_tunnels_kernel_send_buffers_stay_small_under_a_budget(start_relay, echo, memory_cgroup):
    """The kernel's send buffer of a tunnel whose client stops reading (with a normal,
    autotuned receive buffer) grows to tcp_wmem's 4 MiB. cgroup v2 charges it to the pod
    (``sock``): 30 such tunnels from one address held 121.5 MiB of socket memory beside
    an 18 MiB working set, past a 96 MiB budget the relay never saw (v1 charges it only to
    memory.kmem.tcp, turned on here to measure it)."""
    if memory_cgroup.version != 1:
        pytest.skip("measures socket memory through v1's memory.kmem.tcp")
    tcp_usage = memory_cgroup.path / "memory.kmem.tcp.usage_in_bytes"
    (memory_cgroup.path / "memory.kmem.tcp.limit_in_bytes").write_text(str(8 << 30))  # accounting on
    relay = await start_relay(*LOOPBACK, preexec_fn=memory_cgroup.enter)
    flood = Flood()
    stuck = []
    try:
        for _ in range(30):
            client = socket.socket()
            client.connect(("127.0.0.1", relay.port))  # default (autotuned) receive buffer, never read
            client.sendall(protocol.encode_hello(1, 14, 2) + protocol.encode_packet("127.0.0.1", flood.port, b"p" * 20))
            stuck.append(client)
        await flood.pour(flood.sources(len(stuck)), 60)
        # Until the relay has filled what the kernel takes and its own buffers overflow.
        await relay.wait_metric('zt_relay_dropped_total{reason="write_buffer_full"}', lambda v: v > 0)
        samples = await relay.metrics()
        held = samples["zt_relay_memory_bytes"] + int(tcp_usage.read_text())
        assert held < 0.9 * MEMORY_LIMIT, f"{held / 2**20:.1f} MiB with the socket memory v2 charges"
        assert memory_cgroup.oom_kills() == 0
    finally:
        for client in stuck:
            client.close()
        flood.close()


@needs_memory_cgroup
async def test_stalled_site_downloads_kernel_buffers_stay_within_the_budget(start_relay, memory_cgroup):
    """What a stalled download leaves in the kernel: autotuned, the relay's send buffer
    toward the visitor grew to ~4 MiB, and 60 visitors from one address held 236 MiB of
    socket memory beside an 18 MiB working set: past a 96 MiB budget once cgroup v2
    charges it (v1 charges it only to memory.kmem.tcp, turned on here to measure it)."""
    if memory_cgroup.version != 1:
        pytest.skip("measures socket memory through v1's memory.kmem.tcp")
    tcp_usage = memory_cgroup.path / "memory.kmem.tcp.usage_in_bytes"
    (memory_cgroup.path / "memory.kmem.tcp.limit_in_bytes").write_text(str(8 << 30))  # accounting on
    site = Firehose(4 << 20)
    relay = await start_relay(*LOOPBACK, "--fallback", await site.start(), preexec_fn=memory_cgroup.enter)
    visitors = []
    try:
        for _ in range(60):
            v = socket.socket()
            v.connect(("127.0.0.1", relay.port))  # default (autotuned) receive buffer, never read
            v.sendall(b"GET /big HTTP/1.1\r\nHost: site\r\n\r\n")
            visitors.append(v)
        counted = 'zt_relay_fallback_connections_total{result="connected"}', 'zt_relay_fallback_connections_total{result="memory_pressure"}'
        deadline = asyncio.get_running_loop().time() + 20
        while True:  # every visitor admitted or refused, and each admitted one's download under way
            s = await relay.metrics()
            connected = s.get(counted[0], 0)
            if connected + s.get(counted[1], 0) == len(visitors) and \
                    s.get('zt_relay_fallback_bytes_total{direction="to_client"}', 0) >= connected * (256 << 10):
                break
            assert asyncio.get_running_loop().time() < deadline, s
            await asyncio.sleep(0.05)
        held = s["zt_relay_memory_bytes"] + int(tcp_usage.read_text())
        print(f"{connected:.0f} of {len(visitors)} visitors connected, {held / 2**20:.1f} MiB held")
        assert held < 0.9 * MEMORY_LIMIT, f"{held / 2**20:.1f} MiB with the socket memory v2 charges ({connected:.0f} visitors)"
        assert memory_cgroup.oom_kills() == 0
    finally:
        for v in visitors:
            v.close()
        site.close()
