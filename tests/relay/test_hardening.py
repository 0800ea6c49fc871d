"""Hardening on the real process: filters, reply filter, bad input, limits and timeouts.

Every bad input must close or drop only what it concerns: a healthy tunnel opened before
it keeps relaying after it.
"""

import asyncio
import socket

import pytest

from relay import protocol, proxy_protocol

LOOPBACK = ("--allow-destination", "127.0.0.0/8", "--min-destination-port", "1")
PACKET = b"z" * 64


async def assert_still_relaying(client, echo):
    client.send(echo.host, echo.port, b"still here" * 4)
    assert (await client.recv())[2] == b"still here" * 4


async def test_loopback_is_refused_by_default_and_the_tunnel_stays_up(start_relay, echo, connect):
    relay = await start_relay()
    client = await connect(relay.port)
    client.send(echo.host, echo.port, PACKET)
    name = 'zt_relay_dropped_total{reason="destination_not_global"}'
    assert await relay.wait_metric(name, lambda v: v == 1) == 1
    assert echo.received == []
    assert (await relay.metrics())["zt_relay_tunnels_active"] == 1


async def test_denied_ranges_and_low_ports_are_dropped_and_counted_separately(start_relay, echo, connect):
    relay = await start_relay("--allow-destination", "127.0.0.0/8", "--deny-destination", "127.0.0.2/32")
    client = await connect(relay.port)
    client.send("127.0.0.2", echo.port, PACKET)
    client.send(echo.host, 1024, PACKET)
    await assert_still_relaying(client, echo)
    samples = await relay.metrics()
    assert samples['zt_relay_dropped_total{reason="destination_denied"}'] == 1
    assert samples['zt_relay_dropped_total{reason="destination_port"}'] == 1
    assert len(echo.received) == 1


async def test_datagrams_from_addresses_the_tunnel_never_sent_to_are_dropped(start_relay, echo, connect):
    relay = await start_relay(*LOOPBACK)
    client = await connect(relay.port)
    client.send(echo.host, echo.port, PACKET)
    await client.recv()
    tunnel_addr = echo.received[0][1]
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stranger.bind(("127.0.0.1", 0))
    stranger.sendto(b"unsolicited" * 3, tunnel_addr)
    stranger.close()
    name = 'zt_relay_dropped_total{reason="reply_not_allowed"}'
    assert await relay.wait_metric(name, lambda v: v == 1) == 1
    await assert_still_relaying(client, echo)
    assert client.records.empty()


async def test_replies_are_refused_once_the_reply_window_has_passed(start_relay, echo, connect):
    relay = await start_relay(*LOOPBACK, "--reply-window", "0.4")
    client = await connect(relay.port)
    client.send(echo.host, echo.port, PACKET)
    await client.recv()
    await asyncio.sleep(1.2)  # more than two windows
    await echo.stream.send(b"too late" * 4, echo.received[0][1])
    name = 'zt_relay_dropped_total{reason="reply_not_allowed"}'
    assert await relay.wait_metric(name, lambda v: v == 1) == 1


@pytest.mark.parametrize("bad, reason", [
    (b"\x16\x03\x01\x00\x05hello", "bad_record_header"),
    (b"\x17\x03\x03\xff\xff", "record_too_large"),
    (protocol.encode_record(b"\x05" + bytes(30)), "bad_address_type"),
    (protocol.encode_record(b"\x00" + bytes(30)), "bad_address_type"),
], ids=["not-tls", "oversize", "type-5", "type-0"])
async def test_bad_input_closes_only_its_own_tunnel(start_relay, echo, connect, bad, reason):
    relay = await start_relay(*LOOPBACK)
    healthy = await connect(relay.port)
    bad_client = await connect(relay.port)
    bad_client.send_raw(bad)
    assert await bad_client.closed()
    name = f'zt_relay_tunnels_closed_total{{reason="{reason}"}}'
    assert await relay.wait_metric(name, lambda v: v == 1) == 1
    await assert_still_relaying(healthy, echo)
    assert relay.logged(reason)


async def test_the_max_record_size_flag_bounds_records(start_relay, echo, connect):
    relay = await start_relay(*LOOPBACK, "--max-record-size", "1000")
    client = await connect(relay.port)
    client.send(echo.host, echo.port, b"x" * 993)  # 7 + 993 = 1000: allowed
    assert len((await client.recv())[2]) == 993
    client.send(echo.host, echo.port, b"x" * 994)
    assert await client.closed()
    assert (await relay.metrics())['zt_relay_tunnels_closed_total{reason="record_too_large"}'] == 1


async def test_packets_below_the_minimum_size_are_dropped(start_relay, echo, connect):
    relay = await start_relay(*LOOPBACK)
    client = await connect(relay.port)
    client.send(echo.host, echo.port, b"tiny")
    await assert_still_relaying(client, echo)
    assert (await relay.metrics())['zt_relay_dropped_total{reason="packet_too_small"}'] == 1


@pytest.mark.parametrize("payload", [b"\x04", b"\x04\x7f\x00", b"\x06" + bytes(10)], ids=["type-only", "v4-cut", "v6-cut"])
async def test_a_record_shorter_than_its_address_is_dropped_wherever_it_falls(start_relay, echo, connect, payload):
    relay = await start_relay(*LOOPBACK)
    client = await connect(relay.port)
    client.send_raw(protocol.encode_record(payload))  # last in its read: nothing follows it
    await client.writer.drain()
    await asyncio.sleep(0.1)
    client.send_raw(protocol.encode_record(payload) + protocol.encode_packet(echo.host, echo.port, b"next" * 8))
    assert (await client.recv())[2] == b"next" * 8
    assert (await relay.metrics())['zt_relay_dropped_total{reason="packet_too_small"}'] == 2


async def test_a_connection_that_never_completes_a_record_is_closed_after_the_handshake_timeout(start_relay, echo, connect):
    relay = await start_relay(*LOOPBACK, "--handshake-timeout", "0.5")
    healthy = await connect(relay.port)
    silent = await connect(relay.port, hello=False)
    silent.send_raw(b"\x17\x03")  # an incomplete header
    assert await silent.closed(timeout=3)
    assert (await relay.metrics())['zt_relay_tunnels_closed_total{reason="handshake_timeout"}'] == 1
    await assert_still_relaying(healthy, echo)


async def test_an_idle_tunnel_is_closed_after_the_idle_timeout(start_relay, echo, connect):
    relay = await start_relay(*LOOPBACK, "--idle-timeout", "1")
    client = await connect(relay.port)
    client.send(echo.host, echo.port, PACKET)
    await client.recv()
    started = asyncio.get_running_loop().time()
    assert await client.closed(timeout=4)
    assert asyncio.get_running_loop().time() - started >= 0.9
    assert (await relay.metrics())['zt_relay_tunnels_closed_total{reason="idle_timeout"}'] == 1


async def test_traffic_keeps_a_tunnel_open_past_the_idle_timeout(start_relay, echo, connect):
    relay = await start_relay(*LOOPBACK, "--idle-timeout", "1")
    client = await connect(relay.port)
    for _ in range(6):
        await assert_still_relaying(client, echo)
        await asyncio.sleep(0.4)
    assert (await relay.metrics())["zt_relay_tunnels_active"] == 1


async def test_connections_over_the_per_ip_limit_are_refused(start_relay, echo, connect):
    relay = await start_relay(*LOOPBACK, "--max-connections-per-ip", "2")
    first, second = await connect(relay.port), await connect(relay.port)
    third = await connect(relay.port)
    assert await third.closed()
    assert (await relay.metrics())['zt_relay_connections_refused_total{reason="max_connections_per_ip"}'] == 1
    await assert_still_relaying(first, echo)
    await second.close()
    await relay.wait_metric("zt_relay_tunnels_active", lambda v: v == 1)
    fourth = await connect(relay.port)
    await assert_still_relaying(fourth, echo)


async def test_connections_over_the_total_limit_are_refused(start_relay, connect):
    relay = await start_relay(*LOOPBACK, "--max-connections", "1")
    await connect(relay.port)
    second = await connect(relay.port)
    assert await second.closed()
    assert (await relay.metrics())['zt_relay_connections_refused_total{reason="max_connections"}'] == 1


async def test_the_tunnel_rate_limit_drops_packets_beyond_its_budget(start_relay, echo, connect):
    relay = await start_relay(*LOOPBACK, "--tunnel-rate-pps", "10")
    client = await connect(relay.port)
    client.send_raw(b"".join(protocol.encode_packet(echo.host, echo.port, PACKET) for _ in range(50)))
    await asyncio.sleep(0.5)
    samples = await relay.metrics()
    limited = samples['zt_relay_dropped_total{reason="tunnel_rate_limited"}']
    assert 35 <= limited <= 40  # a burst of 10, plus what refilled meanwhile
    assert samples['zt_relay_frames_total{direction="to_udp"}'] == 50 - limited


async def test_the_global_byte_rate_limit_applies_across_tunnels(start_relay, echo, connect):
    relay = await start_relay(*LOOPBACK, "--global-rate-bps", "1000")
    a, b = await connect(relay.port), await connect(relay.port)
    for client in (a, b):
        client.send_raw(b"".join(protocol.encode_packet(echo.host, echo.port, b"y" * 100) for _ in range(10)))
    await asyncio.sleep(0.5)
    samples = await relay.metrics()
    assert samples['zt_relay_frames_total{direction="to_udp"}'] <= 15
    assert samples['zt_relay_dropped_total{reason="global_rate_limited"}'] >= 5


async def test_a_client_that_stops_reading_gets_replies_dropped_not_buffered(start_relay):
    relay = await start_relay(*LOOPBACK, "--write-buffer-limit", "65536")
    flood = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    flood.bind(("127.0.0.1", 0))
    # A client with a tiny receive buffer that never reads.
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(("127.0.0.1", relay.port))
    client.sendall(protocol.encode_hello(1, 14, 2) + protocol.encode_packet("127.0.0.1", flood.getsockname()[1], PACKET))
    flood.settimeout(5)
    _, tunnel_addr = flood.recvfrom(100)
    flood.setblocking(False)
    sent = 0
    while sent < 20000:  # ~28 MB of replies toward a client that reads nothing
        try:
            flood.sendto(b"r" * 1400, tunnel_addr)
            sent += 1
        except BlockingIOError:
            await asyncio.sleep(0.001)
    flood.close()
    name = 'zt_relay_dropped_total{reason="write_buffer_full"}'
    dropped = await relay.wait_metric(name, lambda v: v > 1000)
    relayed = (await relay.metrics())['zt_relay_frames_total{direction="to_tcp"}']
    client.close()
    assert dropped > 1000
    assert relayed * 1412 < 8 * 1024 * 1024  # what was queued stayed within socket buffers + the limit
    status, _ = await relay.http("/healthz")
    assert status == 200


async def test_a_proxy_protocol_header_supplies_the_client_address_for_limits(start_relay, echo, connect):
    relay = await start_relay(*LOOPBACK, "--proxy-protocol", "--max-connections-per-ip", "1")
    v1 = proxy_protocol.encode_v1(("198.51.100.1", 5000), ("127.0.0.1", relay.port))
    v2 = proxy_protocol.encode_v2(("198.51.100.2", 5000), ("127.0.0.1", relay.port))
    a = await connect(relay.port, prefix=v1)
    b = await connect(relay.port, prefix=v2)  # another client address: allowed
    await assert_still_relaying(a, echo)
    await assert_still_relaying(b, echo)
    again = await connect(relay.port, prefix=proxy_protocol.encode_v2(("198.51.100.1", 6000), ("127.0.0.1", relay.port)))
    assert await again.closed()
    assert (await relay.metrics())['zt_relay_connections_refused_total{reason="max_connections_per_ip"}'] == 1


async def test_without_a_proxy_header_the_connection_is_refused_when_one_is_required(start_relay, connect):
    relay = await start_relay(*LOOPBACK, "--proxy-protocol")
    client = await connect(relay.port)
    assert await client.closed()
    assert relay.logged("proxy_protocol_error")
