"""No limit can be bypassed: PROXY headers, legacy clients, tiny rates, IPv6 neighbours.

Each test is an attacker's attempt against the real process on loopback.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from relay import protocol, proxy_protocol
from tests.relay.test_close_paths import until

LOOPBACK = ("--allow-destination", "127.0.0.0/8", "--min-destination-port", "1")
PACKET = b"z" * 64
DST = ("127.0.0.1", 443)
#: The PROXY checks hold with --fallback too, where a sniffer reads the header first.
MODES = pytest.mark.parametrize("mode", [(), ("--fallback", "127.0.0.1:9")], ids=["tunnels", "with-fallback"])


def silent_connections(port: int, count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        socks.append(sock)
    return socks


# -- PROXY protocol ---------------------------------------------------------------------------

@MODES
async def test_connections_waiting_for_their_proxy_header_count_against_max_connections(start_relay, mode):
    relay = await start_relay(*LOOPBACK, *mode, "--proxy-protocol", "--max-connections", "20")
    socks = silent_connections(relay.port, 200)
    try:
        name = 'zt_relay_connections_refused_total{reason="max_connections"}'
        assert await relay.wait_metric(name, lambda v: v == 180) == 180
        assert (await relay.metrics())["zt_relay_connections_open"] == 20
    finally:
        for sock in socks:
            sock.close()


@MODES
async def test_connections_waiting_for_their_proxy_header_count_per_immediate_peer(start_relay, echo, connect, mode):
    relay = await start_relay(*LOOPBACK, *mode, "--proxy-protocol", "--max-connections-per-ip", "5")
    socks = silent_connections(relay.port, 8)
    try:
        name = 'zt_relay_connections_refused_total{reason="max_connections_per_ip"}'
        assert await relay.wait_metric(name, lambda v: v == 3) == 3
    finally:
        for sock in socks:
            sock.close()
    assert await until(lambda: relay.metrics(), 1)
    await relay.wait_metric("zt_relay_connections_open", lambda v: v == 0)
    # once the header names the client, the slot is the client's, not the balancer's
    clients = [await connect(relay.port, prefix=proxy_protocol.encode_v1((f"198.51.100.{i}", 5000), DST)) for i in range(1, 9)]
    for client in clients:
        client.send(echo.host, echo.port, PACKET)
        await client.recv()
    samples = await relay.metrics()
    assert samples["zt_relay_tunnels_active"] == 8 and samples["zt_relay_client_addresses"] == 8


@MODES
async def test_a_proxy_header_from_an_untrusted_source_is_refused_and_counted(start_relay, connect, mode):
    relay = await start_relay(*LOOPBACK, *mode, "--proxy-protocol", "--proxy-protocol-from", "10.0.0.0/8", "--proxy-protocol-from", "192.168.0.0/16")
    client = await connect(relay.port, prefix=proxy_protocol.encode_v1(("198.51.100.1", 5000), DST))
    assert await client.closed()
    name = 'zt_relay_connections_refused_total{reason="proxy_source_not_trusted"}'
    assert await relay.wait_metric(name, lambda v: v == 1) == 1
    assert (await relay.metrics())["zt_relay_tunnels_opened_total"] == 0


async def test_a_trusted_proxy_source_is_served(start_relay, echo, connect):
    relay = await start_relay(*LOOPBACK, "--proxy-protocol", "--proxy-protocol-from", "127.0.0.0/8")
    client = await connect(relay.port, prefix=proxy_protocol.encode_v2(("198.51.100.1", 5000), DST))
    client.send(echo.host, echo.port, PACKET)
    assert (await client.recv())[2] == PACKET


@MODES
async def test_an_ipv4_mapped_proxy_source_shares_the_ipv4_clients_slot(start_relay, echo, connect, mode):
    relay = await start_relay(*LOOPBACK, *mode, "--proxy-protocol", "--max-connections-per-ip", "1")
    first = await connect(relay.port, prefix=proxy_protocol.encode_v1(("198.51.100.1", 5000), DST))
    first.send(echo.host, echo.port, PACKET)
    await first.recv()
    mapped = await connect(relay.port, prefix=proxy_protocol.encode_v2(("::ffff:198.51.100.1", 5001), ("::ffff:127.0.0.1", 443)))
    assert await mapped.closed()
    assert (await relay.metrics())['zt_relay_connections_refused_total{reason="max_connections_per_ip"}'] == 1


@pytest.mark.parametrize("prefix_flag, second, refused", [
    ((), "2001:db8::2", 1),                     # same /64 by default
    ((), "2001:db8:0:1::1", 0),                 # the next /64
    (("--ipv6-per-ip-prefix", "128"), "2001:db8::2", 0),
    (("--ipv6-per-ip-prefix", "48"), "2001:db8:0:1::1", 1),
], ids=["same-64", "other-64", "prefix-128", "prefix-48"])
async def test_the_per_ip_cap_keys_ipv6_clients_by_prefix(start_relay, echo, connect, prefix_flag, second, refused):
    relay = await start_relay(*LOOPBACK, "--proxy-protocol", "--max-connections-per-ip", "1", *prefix_flag)
    first = await connect(relay.port, prefix=proxy_protocol.encode_v2(("2001:db8::1", 5000), ("2001:db8::ff", 443)))
    first.send(echo.host, echo.port, PACKET)
    await first.recv()
    other = await connect(relay.port, prefix=proxy_protocol.encode_v2((second, 5000), ("2001:db8::ff", 443)))
    if refused:
        assert await other.closed()
    else:
        other.send(echo.host, echo.port, PACKET)
        await other.recv()
    samples = await relay.metrics()
    assert samples.get('zt_relay_connections_refused_total{reason="max_connections_per_ip"}', 0) == refused


# -- legacy clients ---------------------------------------------------------------------------

@pytest.mark.parametrize("flags, reason", [
    (("--tunnel-rate-pps", "5"), "tunnel_rate_limited"),
    (("--global-rate-pps", "5"), "global_rate_limited"),
    (("--tunnel-rate-pps", "5", "--global-rate-pps", "5"), "tunnel_rate_limited"),
], ids=["tunnel", "global", "both"])
async def test_legacy_clients_obey_the_rate_limits(start_relay, echo, connect, flags, reason):
    relay = await start_relay("--legacy-target", f"{echo.host}:{echo.port}", *flags)
    client = await connect(relay.port, hello=False)
    client.send_raw(b"".join(protocol.encode_record(PACKET) for _ in range(200)))
    name = f'zt_relay_dropped_total{{reason="{reason}"}}'
    dropped = await relay.wait_metric(name, lambda v: v >= 185)
    sent = (await relay.metrics())['zt_relay_frames_total{direction="to_udp"}']
    assert dropped >= 185 and sent <= 15 and dropped + sent == 200


# -- rates below one packet -------------------------------------------------------------------

@pytest.mark.parametrize("flags", [
    ("--tunnel-rate-pps", "0.5"),
    ("--global-rate-pps", "0.2"),
    ("--tunnel-rate-bps", "100"),
    ("--global-rate-bps", "10"),
], ids=["tunnel-pps-half", "global-pps-fifth", "tunnel-bps-below-a-packet", "global-bps-below-a-packet"])
async def test_a_rate_below_one_packet_still_lets_a_first_packet_through(start_relay, echo, connect, flags):
    relay = await start_relay(*LOOPBACK, *flags)
    client = await connect(relay.port)
    client.send(echo.host, echo.port, b"b" * 200)
    assert (await client.recv())[2] == b"b" * 200
    client.send(echo.host, echo.port, b"c" * 200)  # the budget is spent for a while
    name = 'zt_relay_dropped_total{reason="%s_rate_limited"}' % flags[0].split("-")[2]
    assert await relay.wait_metric(name, lambda v: v == 1) == 1
