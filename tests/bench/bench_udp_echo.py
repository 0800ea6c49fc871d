"""Micro-benchmark: why the relay's per-tunnel UDP side is a plain socket + ``loop.add_reader``.

``python -m tests.bench.bench_udp_echo`` runs one UDP echo server per variant in a
subprocess and drives it with the C loadgen's ``udp`` mode (M sockets, K datagrams in
flight each). Variants, each on uvloop and on the default asyncio loop:

- ``add_reader``: non-blocking socket, ``loop.add_reader`` callback draining up to 32
  datagrams per wakeup with ``recvfrom``/``sendto`` (the relay's design, tunnel.py);
- ``protocol``: ``loop.create_datagram_endpoint`` with a ``DatagramProtocol`` whose
  ``datagram_received`` calls ``transport.sendto``;
- ``asyncio_dgram``: the ``asyncio-dgram`` package: ``await stream.recv()`` then
  ``await stream.send()`` in a task (one future per datagram).

It prints datagrams/s, datagrams per server CPU-second (robust to a busy machine) and
the RSS each variant needs per idle endpoint (N endpoints bound, each ready to receive,
as a tunnel's UDP side would be).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tests.bench import build, procfs

VARIANTS = ("add_reader", "protocol", "asyncio_dgram")
LOOPS = ("uvloop", "asyncio")
BATCH = 32


# -- servers (run in a subprocess) ---------------------------------------------------------------


#: Receive buffer of every server socket (capped by net.core.rmem_max): large enough that
#: all in-flight datagrams fit, so the loop is measured rather than kernel drops.
RCVBUF = 4 << 20


def _bound_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    sock.setblocking(False)
    sock.bind(("127.0.0.1", 0))
    return sock


def _add_reader_endpoint(loop: asyncio.AbstractEventLoop, echo: bool) -> socket.socket:
    sock = _bound_socket()

    def drain() -> None:
        for _ in range(BATCH):
            try:
                data, addr = sock.recvfrom(65536)
            except BlockingIOError:
                return
            if echo:
                sock.sendto(data, addr)

    loop.add_reader(sock.fileno(), drain)
    return sock


class _Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.transport.sendto(data, addr)


async def _protocol_endpoint(loop: asyncio.AbstractEventLoop):
    transport, _ = await loop.create_datagram_endpoint(_Echo, sock=_bound_socket())
    return transport


async def _dgram_endpoint(tasks: set):
    import asyncio_dgram

    stream = await asyncio_dgram.from_socket(_bound_socket())

    async def serve() -> None:
        while True:
            data, addr = await stream.recv()
            await stream.send(data, addr)

    task = asyncio.ensure_future(serve())
    tasks.add(task)  # keep a reference: the loop holds tasks only weakly
    return stream


async def _endpoint(variant: str, tasks: set) -> tuple[int, object]:
    """Creates one echo endpoint; returns its port and the object that keeps it alive."""
    loop = asyncio.get_running_loop()
    if variant == "add_reader":
        sock = _add_reader_endpoint(loop, echo=True)
        return sock.getsockname()[1], sock
    if variant == "protocol":
        transport = await _protocol_endpoint(loop)
        return transport.get_extra_info("sockname")[1], transport
    stream = await _dgram_endpoint(tasks)
    return stream.sockname[1], stream


async def _serve(variant: str, idle: int) -> None:
    tasks: set = set()
    keep = []
    if idle:
        await asyncio.sleep(0.2)
        before = procfs.tree_rss_kib(os.getpid())
        for _ in range(idle):
            keep.append(await _endpoint(variant, tasks))
        await asyncio.sleep(0.2)
        after = procfs.tree_rss_kib(os.getpid())
        print(json.dumps({"idle_endpoints": idle, "kib_per_endpoint": round((after - before) / idle, 2)}), flush=True)
        return
    port, handle = await _endpoint(variant, tasks)
    print(json.dumps({"port": port}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the driver closes stdin


def serve_main(variant: str, loop_name: str, idle: int) -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if loop_name == "uvloop":
        import uvloop

        uvloop.run(_serve(variant, idle))
    else:
        asyncio.run(_serve(variant, idle))


# -- driver ---------------------------------------------------------------------------------------


def _server(variant: str, loop_name: str, idle: int = 0) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.bench.bench_udp_echo", "--serve", variant, "--loop", loop_name, "--idle", str(idle)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2],
    )


def measure(loadgen: Path, variant: str, loop_name: str, args) -> dict:
    server = _server(variant, loop_name)
    try:
        port = json.loads(server.stdout.readline())["port"]
        cpu0 = procfs.tree_cpu_seconds(server.pid)
        started = time.monotonic()
        out = subprocess.run(
            [str(loadgen), "udp", "--target", f"127.0.0.1:{port}", "--tunnels", str(args.sockets), "--inflight", str(args.inflight),
             "--size", str(args.size), "--duration", str(args.duration), "--warmup", "1"],
            capture_output=True, text=True, check=True,
        )
        wall = time.monotonic() - started
        cpu = procfs.tree_cpu_seconds(server.pid) - cpu0
    finally:
        server.stdin.close()
        server.wait(timeout=10)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # The server's CPU covers warm-up too; scale datagrams by the whole wall time to match.
    result["server_cpu_pct"] = round(100 * cpu / wall, 1)
    result["datagrams_per_cpu_s"] = round(result["datagrams_per_s"] * wall / cpu) if cpu else None
    return result


def idle_cost(variant: str, loop_name: str, endpoints: int) -> float:
    server = _server(variant, loop_name, endpoints)
    line = server.stdout.readline()
    server.stdin.close()
    server.wait(timeout=30)
    return json.loads(line)["kib_per_endpoint"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.bench_udp_echo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per variant; medians reported (default 3)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run (default 5)")
    parser.add_argument("--sockets", type=int, default=16, help="loadgen UDP sockets (default 16)")
    parser.add_argument("--inflight", type=int, default=16, help="datagrams in flight per socket (default 16)")
    parser.add_argument("--size", type=int, default=1400, help="datagram bytes (default 1400)")
    parser.add_argument("--idle-endpoints", type=int, default=4000, help="endpoints for the memory measurement (default 4000)")
    parser.add_argument("--loop", choices=[*LOOPS, "both"], default="both")
    parser.add_argument("--nice", type=int, default=0, help="run servers and loadgen at this nice value (negative needs root)")
    parser.add_argument("--serve", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--idle", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve_main(args.serve, args.loop, args.idle)
        return 0
    loadgen = build.loadgen_binary()
    if args.nice:
        from tests.bench.run import claim_cpu

        claim_cpu(args.nice)
    loops = LOOPS if args.loop == "both" else (args.loop,)
    rows = []
    for loop_name in loops:
        for variant in VARIANTS:
            runs = [measure(loadgen, variant, loop_name, args) for _ in range(args.runs)]
            rate = statistics.median(r["datagrams_per_s"] for r in runs)
            per_cpu = statistics.median(r["datagrams_per_cpu_s"] for r in runs)
            cpu = statistics.median(r["server_cpu_pct"] for r in runs)
            p50 = statistics.median(r["p50_us"] for r in runs)
            lost = sum(r["lost"] for r in runs)
            gen = statistics.median(r["loadgen_cpu_pct"] for r in runs)
            kib = idle_cost(variant, loop_name, args.idle_endpoints)
            rows.append((loop_name, variant, rate, min(r["datagrams_per_s"] for r in runs), max(r["datagrams_per_s"] for r in runs), per_cpu, cpu, gen, p50, lost, kib))
            print(f"{loop_name} {variant}: {rate:,.0f} datagrams/s, {per_cpu:,.0f} per CPU-s, server CPU {cpu}%, idle {kib} KiB/endpoint", file=sys.stderr, flush=True)
    print(f"UDP echo, {args.sockets} sockets x {args.inflight} in flight, {args.size} B, median of {args.runs} x {args.duration:g} s")
    print(f"{'loop':8} {'variant':14} {'datagrams/s':>12} {'min..max':>17} {'per CPU-s':>10} {'srv CPU%':>8} {'gen CPU%':>8} {'p50 us':>7} {'lost':>5} {'KiB/idle endpoint':>18}")
    for loop_name, variant, rate, lo, hi, per_cpu, cpu, gen, p50, lost, kib in rows:
        print(f"{loop_name:8} {variant:14} {rate:12,.0f} {f'{lo:,.0f}..{hi:,.0f}':>17} {per_cpu:10,.0f} {cpu:8.0f} {gen:8.0f} {p50:7.0f} {lost:5d} {kib:18.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
