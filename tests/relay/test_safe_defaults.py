"""An unconfigured relay is safe to expose: its own addresses are not destinations, and a
tunnel can't spray new destinations faster than a ZeroTier node ever needs."""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess

import pytest

from relay import interfaces, protocol, tunnel
from tests.relay.conftest import Echo

LOOPBACK = ("--allow-destination", "127.0.0.0/8", "--min-destination-port", "1")
PACKET = b"z" * 64


def machine_addresses() -> list[str]:
    """Non-loopback IPv4 addresses of this machine's interfaces, from ``ip`` (not from the
    code under test)."""
    if shutil.which("ip") is None:
        return []
    out = json.loads(subprocess.run(["ip", "-j", "-4", "addr", "show"], capture_output=True, text=True, check=True).stdout)
    return [a["local"] for link in out for a in link.get("addr_info", []) if not ipaddress.ip_address(a["local"]).is_loopback]


async def test_an_own_address_named_by_the_operator_is_refused_even_inside_an_allowed_range(start_relay, echo, connect):
    own = await Echo.bind("127.0.0.2")
    try:
        relay = await start_relay(*LOOPBACK, "--own-address", "127.0.0.2")
        client = await connect(relay.port)
        client.send(own.host, own.port, PACKET)
        client.send(echo.host, echo.port, PACKET)  # the tunnel stays up and relays elsewhere
        assert (await client.recv())[2] == PACKET
        assert (await relay.metrics())['zt_relay_dropped_total{reason="destination_own_address"}'] == 1
        assert own.received == []
    finally:
        own.close()


async def test_the_relays_interface_addresses_are_refused_by_default(start_relay, echo, connect):
    addresses = machine_addresses()
    if not addresses:
        pytest.skip("this machine has no non-loopback IPv4 address")
    own = await Echo.bind(addresses[0])  # local delivery: nothing leaves the machine
    try:
        relay = await start_relay(*LOOPBACK, "--allow-destination", f"{addresses[0]}/32")
        client = await connect(relay.port)
        client.send(own.host, own.port, PACKET)
        client.send(echo.host, echo.port, PACKET)
        assert (await client.recv())[2] == PACKET
        assert (await relay.metrics())['zt_relay_dropped_total{reason="destination_own_address"}'] == 1
        assert own.received == []
    finally:
        own.close()


def test_interface_addresses_are_read_from_the_kernels_tables():
    fib = """Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
     |-- 198.18.0.7
        /32 host LOCAL
     |-- 198.18.0.255
        /32 link BROADCAST
"""
    if_inet6 = (
        "00000000000000000000000000000001 01 80 10 80       lo\n"
        "20010db8000000000000000000000007 02 40 00 80     eth0\n"
        "fe800000000000000000000000000001 02 40 20 80     eth0\n"
    )
    assert interfaces.parse_fib_trie(fib) == {"198.18.0.7"}
    assert interfaces.parse_if_inet6(if_inet6) == {"2001:db8::7", "fe80::1"}


async def test_a_tunnel_spraying_new_destinations_is_capped(start_relay, connect):
    burst = 64 * tunnel.NEW_DESTINATION_BURST_SECONDS
    relay = await start_relay(*LOOPBACK)
    client = await connect(relay.port)
    # 1,000 distinct destinations at once: below the reply window's 1,024, far above any node's burst
    client.send_raw(b"".join(protocol.encode_packet("127.0.0.1", 20000 + i, PACKET) for i in range(1000)))
    name = 'zt_relay_dropped_total{reason="new_destination_rate_limited"}'
    dropped = await relay.wait_metric(name, lambda v: v >= 1000 - burst - 100)
    sent = (await relay.metrics())['zt_relay_frames_total{direction="to_udp"}']
    assert burst <= sent <= burst + 100
    assert sent + dropped == 1000


async def test_a_zerotier_like_burst_never_meets_the_default_cap(start_relay, connect):
    """Roots plus a multicast fan-out to 32 peers, each at 8 pushed paths, all at once."""
    relay = await start_relay(*LOOPBACK)
    client = await connect(relay.port)
    destinations = [("127.0.0.1", 9993 + i) for i in range(4)]  # the planet's roots
    destinations += [(f"127.0.{peer}.{path + 1}", 9993) for peer in range(1, 33) for path in range(8)]
    for _ in range(3):  # and again: known destinations are not new
        client.send_raw(b"".join(protocol.encode_packet(h, p, PACKET) for h, p in destinations))
    await relay.wait_metric('zt_relay_frames_total{direction="to_udp"}', lambda v: v == 3 * len(destinations))
    samples = await relay.metrics()
    assert samples['zt_relay_frames_total{direction="to_udp"}'] == 3 * len(destinations)
    assert samples.get('zt_relay_dropped_total{reason="new_destination_rate_limited"}', 0) == 0
