"""A hostile packet costs little: budgets before the verdict, and no tunnel can evict the
verdicts of the others.

The cost itself is measured by the benchmark (tests/bench/bench_packet_cost.py), as a ratio
to a cache hit; here we check which work is done, not how long it takes.
"""

import asyncio
import ipaddress
import struct

from relay import protocol
from relay.config import RelayConfig
from relay.server import Relay
from relay.tunnel import Tunnel

LOOPBACK = ("--allow-destination", "127.0.0.0/8", "--min-destination-port", "1")
#: The benchmarking range: refused by the default filter, so nothing is ever sent there.
SPRAY_BASE = int(ipaddress.IPv4Address("198.18.0.0"))


def spray(count: int, start: int = 0) -> bytes:
    """Records to ``count`` distinct refused addresses."""
    return b"".join(
        protocol.encode_record(b"\x04" + struct.pack(">IH", SPRAY_BASE + start + i, 9993) + b"s" * 16) for i in range(count)
    )


class FakeTransport:
    """Enough of a transport for Tunnel: the UDP side stays real."""

    def __init__(self, port: int) -> None:
        self.peer = ("127.0.0.1", port)
        self.written: list[bytes] = []
        self.closed = False

    def get_extra_info(self, name, default=None):
        return self.peer if name == "peername" else default

    def set_write_buffer_limits(self, high=None, low=None):
        pass

    def writelines(self, data):
        self.written.extend(data)

    def get_write_buffer_size(self):
        return 0

    def is_closing(self):
        return self.closed

    def close(self):
        self.closed = True

    abort = close


def open_tunnel(relay: Relay, port: int) -> Tunnel:
    tunnel = Tunnel(relay)
    tunnel.connection_made(FakeTransport(port))
    tunnel.data_received(protocol.encode_hello(1, 14, 2))
    return tunnel


async def test_a_tunnel_spraying_addresses_does_not_evict_the_verdicts_of_other_tunnels():
    relay = Relay(RelayConfig(allow_destination=("127.0.0.0/8",), min_destination_port=1, health_listen=None))
    resolved: list[bytes] = []
    original = relay.resolve

    def counting(key):
        resolved.append(key)
        return original(key)

    relay.resolve = counting
    quiet, noisy = open_tunnel(relay, 1001), open_tunnel(relay, 1002)
    root = protocol.encode_packet("127.0.0.1", 9, b"r" * 16)  # discard port: nothing answers
    quiet.data_received(root)
    assert len(resolved) == 1
    noisy.data_received(spray(70_000))  # more than any shared cache bound
    before = len(resolved)
    quiet.data_received(root)
    assert len(resolved) == before, "the quiet tunnel's verdict was evicted by the noisy one"
    assert quiet.frames_to_udp == 2
    for t in (quiet, noisy):
        t.connection_lost(None)


async def test_the_rate_budget_is_spent_before_any_verdict_is_computed():
    relay = Relay(RelayConfig(tunnel_rate_pps=5, health_listen=None))
    resolved: list[bytes] = []
    original = relay.resolve
    relay.resolve = lambda key: resolved.append(key) or original(key)
    tunnel = open_tunnel(relay, 1003)
    tunnel.data_received(spray(200))
    assert relay.stats.dropped["tunnel_rate_limited"] >= 194
    assert len(resolved) <= 6, f"{len(resolved)} verdicts computed for a tunnel allowed 5 packets/s"
    tunnel.connection_lost(None)


async def test_refused_packets_over_the_budget_are_counted_as_rate_limited(start_relay, echo, connect):
    relay = await start_relay(*LOOPBACK, "--tunnel-rate-pps", "5")
    client = await connect(relay.port)
    client.send_raw(spray(100))
    name = 'zt_relay_dropped_total{reason="tunnel_rate_limited"}'
    assert await relay.wait_metric(name, lambda v: v >= 94) >= 94
    samples = await relay.metrics()
    assert samples.get('zt_relay_dropped_total{reason="destination_not_global"}', 0) <= 6
    assert samples["zt_relay_tunnels_active"] == 1
