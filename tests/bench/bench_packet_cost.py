"""What one hostile packet costs the relay, as ratios to a verdict-cache hit in the same run.

``python -m tests.bench.bench_packet_cost`` (no root, no network: refused packets are never
sent; also printed by ``python -m tests.bench.run`` unless ``--skip cost``). In-process, on
the real ``Relay`` and ``Tunnel`` with a stand-in TCP transport:

- ``hit``: the per-tunnel verdict cache lookup a known destination costs;
- ``miss v4`` / ``miss v6``: the compiled-filter verdict for an address never seen (the
  issue's goal: <= 2 us), and the rule walk it replaced (``rules v4`` / ``rules v6``);
- ``spray``: one refused packet to a new address through the whole TCP-side handler
  (record parse, budget, verdict, per-tunnel cache insert/evict, drop count), against
  ``repeat``: the same refused packet to one address (a cache hit all the way).

Times are the best of several repeats (the machine is shared: the minimum is the cost,
the rest is other load); compare ratios, not microseconds, between runs.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import struct
import sys
import time

from relay import protocol
from relay.config import RelayConfig
from relay.server import Relay
from relay.tunnel import Tunnel

SPRAY_V4 = int(ipaddress.IPv4Address("198.18.0.0"))  # benchmarking range: refused, never sent
GLOBAL_V4 = int(ipaddress.IPv4Address("84.0.0.0"))
GLOBAL_V6 = int(ipaddress.IPv6Address("2a00::"))


class _Transport:
    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 40000) if name == "peername" else default

    def set_write_buffer_limits(self, high=None, low=None):
        pass

    def writelines(self, data):
        pass

    def close(self):
        pass

    abort = close


def _best_ns(fn, count: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        fn()
        best = min(best, (time.perf_counter_ns() - t0) / count)
    return best


def _measure(count: int, repeats: int) -> dict[str, float]:
    relay = Relay(RelayConfig(health_listen=None))
    rules = RelayConfig().destination_filter()
    tunnel = Tunnel(relay)
    tunnel.connection_made(_Transport())
    tunnel.data_received(protocol.encode_hello(1, 14, 2))
    v4_keys = [b"\x04" + struct.pack(">IH", GLOBAL_V4 + i * 7919, 9993) for i in range(count)]
    v6_keys = [b"\x06" + (GLOBAL_V6 + (i * 7919 << 20)).to_bytes(16, "big") + b"\x27\x09" for i in range(count)]
    hit_key = v4_keys[0]
    tunnel.verdicts[hit_key] = relay.resolve(hit_key)
    verdicts = tunnel.verdicts
    resolve = relay.resolve

    def hit():
        get = verdicts.get
        for _ in range(count):
            get(hit_key)

    def miss(keys):
        return lambda: [resolve(k) for k in keys]

    def walk(keys, address):
        def run():
            for k in keys:
                size = len(k)
                rules.verdict(address(k[1:size - 2]), k[size - 2] << 8 | k[size - 1])
        return run

    spray = b"".join(protocol.encode_record(b"\x04" + struct.pack(">IH", SPRAY_V4 + i, 9993) + b"s" * 16) for i in range(count))
    repeat = protocol.encode_record(b"\x04" + struct.pack(">IH", SPRAY_V4, 9993) + b"s" * 16) * count
    results = {
        "hit": _best_ns(hit, count, repeats),
        "miss v4": _best_ns(miss(v4_keys), count, repeats),
        "miss v6": _best_ns(miss(v6_keys), count, repeats),
        "rules v4": _best_ns(walk(v4_keys, ipaddress.IPv4Address), count, repeats),
        "rules v6": _best_ns(walk(v6_keys, ipaddress.IPv6Address), count, repeats),
        "repeat": _best_ns(lambda: tunnel.data_received(repeat), count, repeats),
        "spray": _best_ns(lambda: tunnel.data_received(spray), count, repeats),
    }
    tunnel.connection_lost(None)
    return results


def measure(count: int = 20000, repeats: int = 7) -> dict[str, float]:
    """Nanoseconds per operation, by case (see the module docstring)."""
    return asyncio.run(_async(_measure, count, repeats))


async def _async(fn, *args):
    return fn(*args)


def format_table(ns: dict[str, float]) -> str:
    hit, repeat = ns["hit"], ns["repeat"]
    lines = ["per-packet cost (best of repeats)   us      x hit   x repeat"]
    for name, value in ns.items():
        lines.append(f"  {name:<32} {value / 1000:7.3f}  {value / hit:7.1f}  {value / repeat:7.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.bench_packet_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20000, help="operations per timed loop (default 20000)")
    parser.add_argument("--repeats", type=int, default=7, help="timed loops per case; the best is kept (default 7)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args(argv)
    ns = measure(args.count, args.repeats)
    print(json.dumps(ns) if args.json else format_table(ns))
    return 0


if __name__ == "__main__":
    sys.exit(main())
