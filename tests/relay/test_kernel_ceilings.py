"""Resource ceilings with the real kernel limits, not stand-ins: a private network namespace
with a tiny ``ip_local_port_range`` or IPv6 disabled, a low ``RLIMIT_NOFILE``, a memory
cgroup with a hard limit. The real relay process runs inside them (tests/relay/kernel.py).

What the kernel really does there (found by these tests, unlike the in-process stand-ins in
test_resource_ceilings.py):
- UDP ``bind(port 0)`` with every ephemeral port taken fails with EADDRINUSE (an unbound
  ``sendto`` would fail with EAGAIN; TCP ``connect`` with EADDRNOTAVAIL).
- With ``disable_ipv6`` an IPv6 UDP socket still opens and binds; only ``sendto`` fails
  (EADDRNOTAVAIL toward ::1, ENETUNREACH elsewhere).
- With every descriptor taken, libuv's accept loop closes new connections itself (its
  EMFILE trick): uncounted, and the health scrape is reset with them.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import resource

import asyncio_dgram
import pytest

from relay import protocol
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
