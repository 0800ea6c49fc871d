"""Round trips through the real relay process: client -> relay -> UDP peer -> relay -> client."""

import asyncio


from relay import protocol
from tests.relay.conftest import Echo

PACKET = bytes(range(256)) * 5 + b"end"  # 1283 bytes


async def test_a_packet_round_trips_and_the_reply_carries_the_senders_address(relay, echo, connect):
    client = await connect(relay.port)
    client.send(echo.host, echo.port, PACKET)
    host, port, data = await client.recv()
    assert (host, port, data) == (echo.host, echo.port, PACKET)
    relayed_from = echo.received[0][1]
    assert relayed_from[1] != relay.port  # sent from the tunnel's own UDP socket


async def test_each_tunnel_sends_from_its_own_udp_socket(relay, echo, connect):
    a, b = await connect(relay.port), await connect(relay.port)
    a.send(echo.host, echo.port, b"a" * 32)
    await a.recv()
    b.send(echo.host, echo.port, b"b" * 32)
    await b.recv()
    assert echo.received[0][1] != echo.received[1][1]
    # and each reply went back to the tunnel that sent
    assert a.records.empty() and b.records.empty()


async def test_many_records_in_one_write_all_round_trip_in_order(relay, echo, connect):
    client = await connect(relay.port)
    packets = [bytes([i]) * (20 + i) for i in range(50)]
    client.send_raw(b"".join(protocol.encode_packet(echo.host, echo.port, p) for p in packets))
    got = [(await client.recv())[2] for _ in packets]
    assert got == packets


async def test_records_split_byte_by_byte_are_reassembled(relay, echo, connect):
    client = await connect(relay.port, hello=False)
    stream = protocol.encode_hello(1, 12, 0) + protocol.encode_packet(echo.host, echo.port, PACKET)
    for i in range(len(stream)):
        client.send_raw(stream[i:i + 1])
        await client.writer.drain()
        if i % 64 == 0:
            await asyncio.sleep(0.001)  # let the bytes leave as separate segments
    assert (await client.recv())[2] == PACKET


async def test_ipv6_destinations_round_trip_with_ipv6_reply_addresses(start_relay, connect):
    relay = await start_relay("--allow-destination", "::1/128", "--min-destination-port", "1")
    echo6 = await Echo.bind("::1")
    try:
        client = await connect(relay.port)
        client.send("::1", echo6.port, PACKET)
        payload = await asyncio.wait_for(client.records.get(), 5)
        assert payload[0] == protocol.ADDR_IPV6
        assert protocol.decode_address(payload)[:2] == ("::1", echo6.port)
        assert payload[19:] == PACKET
    finally:
        echo6.close()


async def test_the_relay_accepts_tunnels_over_ipv6(start_relay, echo, connect):
    relay = await start_relay("--allow-destination", "127.0.0.0/8", "--min-destination-port", "1", listen="[::1]:0")
    client = await connect(relay.port, host="::1")
    client.send(echo.host, echo.port, PACKET)
    assert (await client.recv())[2] == PACKET


async def test_replies_from_a_peer_reach_the_client_unsolicited_within_the_window(relay, echo, connect):
    client = await connect(relay.port)
    client.send(echo.host, echo.port, b"x" * 20)
    await client.recv()
    tunnel_addr = echo.received[0][1]
    await echo.stream.send(b"later" * 10, tunnel_addr)  # the peer talks first this time
    assert (await client.recv())[2] == b"later" * 10


async def test_a_pre_1_2_client_without_hello_is_relayed_to_the_legacy_target(start_relay, echo, connect):
    relay = await start_relay("--legacy-target", f"{echo.host}:{echo.port}")
    client = await connect(relay.port, hello=False)
    client.send_raw(protocol.encode_record(b"old-style packet" * 2))
    payload = await asyncio.wait_for(client.records.get(), 5)
    assert payload == b"old-style packet" * 2  # bare reply: no address prefix
    assert relay.logged("client version legacy")


async def test_a_client_without_hello_is_closed_when_no_legacy_target_is_set(relay, echo, connect):
    client = await connect(relay.port, hello=False)
    client.send(echo.host, echo.port, PACKET)
    assert await client.closed()
    assert await relay.wait_metric('zt_relay_tunnels_closed_total{reason="no_hello"}', lambda v: v == 1) == 1
    assert echo.received == []


async def test_the_hello_version_is_logged(relay, connect):
    await connect(relay.port)
    await relay.wait_metric("zt_relay_tunnels_active", lambda v: v == 1)
    for _ in range(50):
        if relay.logged("client version 1.14.2"):
            break
        await asyncio.sleep(0.05)
    assert relay.logged("client version 1.14.2")
