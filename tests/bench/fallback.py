"""What ``--fallback`` costs a website: direct to nginx vs through the relay, same run.

    python -m tests.bench.fallback                 # 400 handshakes, 5 x 100 MB each way
    python -m tests.bench.fallback --handshakes 100 --downloads 2 --size-mb 20   # smoke
    python -m tests.bench.fallback --baseline-tree /tmp/main   # and main's relay, same run
    python -m tests.bench.fallback --c-reference   # and a minimal C forwarder (two variants), same run
    ZT_RELAY_FALLBACK_PRECONNECT=2 python -m tests.bench.fallback ...  # the relay with a pool
      (a variable, not --relay-args: an older --baseline-tree ignores it instead of refusing the flag)

Real nginx (Debian's package) serves HTTPS on loopback with a CA made for the run
(``tests/relay/nginx_site.py``); ``zt-relay --fallback`` runs in front of it. Direct and
relayed measurements alternate (in a shuffled order each round), so both see the same machine load.

- **time to the first TLS handshake**: TCP connect plus a verified TLS 1.3 handshake from a
  blocking Python client, one at a time; p50 and p90 in ms. Target: relayed p50 <= direct
  p50 + 0.3 ms.
- **HTTPS download**: ``curl --cacert`` fetching a 100 MB file; MB/s from curl's own
  ``speed_download``, median of the runs, and the relay's CPU seconds per download. Target:
  relayed >= 80 % of direct.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import resource
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.bench import build, procfs
from tests.relay.nginx_site import SERVER_NAME, Nginx

_LISTEN = re.compile(r"relay listening on \S+:(\d+)")


def start_relay(backend_port: int, extra: list[str], tree: str | None = None) -> tuple[subprocess.Popen, int]:
    """``tree``: run the relay of another checkout (its ``relay`` package) instead of this one."""
    env = {**os.environ, "PYTHONPATH": tree} if tree else None
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay", "127.0.0.1:0", "--health-listen", "off",
         "--fallback", f"127.0.0.1:{backend_port}", "--log-level", "WARNING", *extra],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        cwd=tree, env=env,
    )
    # The listening line is logged at INFO; with WARNING we wait for the port instead.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        port = _listening_port(proc.pid)
        if port:
            return proc, port
        if proc.poll() is not None:
            raise RuntimeError(f"relay exited: {proc.stderr.read()}")
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("relay did not start listening")


def _listening_port(pid: int) -> int:
    """The TCP port the process listens on, from /proc (0 if none yet)."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except FileNotFoundError:
        return 0
    with open("/proc/net/tcp") as f:
        for line in list(f)[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                return int(fields[1].split(":")[1], 16)
    return 0


#: A bare splice(2) forwarder (threads, blocking sockets, one pipe per direction): the
#: zero-copy reference the relay's Protocol splice is compared with (--splice-reference).
SPLICE_FORWARDER = r"""
import os, socket, sys, threading
backend = ("127.0.0.1", int(sys.argv[1]))
listener = socket.create_server(("127.0.0.1", 0))
print(listener.getsockname()[1], flush=True)
FLAGS = os.SPLICE_F_MOVE  # not SPLICE_F_MORE: it corks small TLS flights for 200 ms
def pump(src, dst):
    r, w = os.pipe()
    try:
        while True:
            n = os.splice(src.fileno(), w, 1 << 20, flags=FLAGS)
            if n == 0:
                dst.shutdown(socket.SHUT_WR)
                return
            while n:
                n -= os.splice(r, dst.fileno(), n, flags=FLAGS)
    except OSError:
        pass
    finally:
        os.close(r); os.close(w)
def serve(client):
    with client, socket.create_connection(backend) as server:
        for s in (client, server):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t = threading.Thread(target=pump, args=(server, client), daemon=True)
        t.start()
        pump(client, server)
        t.join()
while True:
    threading.Thread(target=serve, args=(listener.accept()[0],), daemon=True).start()
"""


def start_splice_forwarder(backend_port: int) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-c", SPLICE_FORWARDER, str(backend_port)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    return proc, int(proc.stdout.readline())


#: --c-reference's forwarders (forward.c), by target name: when each dials the site.
C_REFERENCES = {
    "c-accept": ("accept", "C forwarder, dials the site at accept: the floor of a relay that could dial early"),
    "c-first": ("first", "C forwarder, dials on the first bytes as the relay must (it sniffs them)"),
}


def start_c_forwarder(backend_port: int, mode: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([str(build.forward_binary()), str(backend_port), mode],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    return proc, int(proc.stdout.readline())


def handshake_ms(port: int, context: ssl.SSLContext) -> float:
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as raw:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with context.wrap_socket(raw, server_hostname=SERVER_NAME):
            elapsed = time.perf_counter() - start
    return elapsed * 1000


def download_mbps(port: int, ca: Path, size: int) -> float:
    out = subprocess.run(
        ["curl", "-sS", "--fail", "--cacert", str(ca), "--resolve", f"{SERVER_NAME}:{port}:127.0.0.1",
         "-o", "/dev/null", "-w", "%{size_download} %{speed_download}", f"https://{SERVER_NAME}:{port}/big"],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    if int(out[0]) != size:
        raise RuntimeError(f"downloaded {out[0]} bytes, expected {size}")
    return float(out[1]) / 1e6


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # waited-for children: the curls
    return usage.ru_utime + usage.ru_stime


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.fallback", description=__doc__.split("\n\n")[0])
    parser.add_argument("--handshakes", type=int, default=400, help="handshakes per target (default 400)")
    parser.add_argument("--downloads", type=int, default=5, help="downloads per target (default 5; 0: handshakes only)")
    parser.add_argument("--size-mb", type=int, default=100, help="download size in MB (default 100)")
    parser.add_argument("--nice", type=int, default=0, help="niceness for this run, nginx and the relay (root: e.g. -10)")
    parser.add_argument("--splice-reference", action="store_true", help="also measure a bare splice(2) forwarder")
    parser.add_argument("--c-reference", action="store_true",
                        help="also measure a minimal single-threaded epoll forwarder in C (forward.c), dialing the site"
                             " at accept and on the first bytes")
    parser.add_argument("--relay-args", default="", help="extra relay flags, space-separated")
    parser.add_argument("--baseline-tree", metavar="DIR",
                        help="also measure the relay of another checkout (e.g. `git worktree add /tmp/main main`), same run")
    args = parser.parse_args(argv)
    size = args.size_mb * 1_000_000
    if args.nice:
        os.nice(args.nice)  # inherited by nginx, the relay and curl
    with tempfile.TemporaryDirectory(prefix="zt-fallback-bench-") as tmp:
        site = Nginx(Path(tmp), big_size=size).start()
        relay, relay_port = start_relay(site.port, args.relay_args.split())
        forwarder = baseline = None
        c_forwarders: dict[str, subprocess.Popen] = {}
        try:
            context = ssl.create_default_context(cafile=str(site.ca))
            context.minimum_version = ssl.TLSVersion.TLSv1_3
            targets = {"direct": site.port, "relay": relay_port}
            if args.splice_reference:
                forwarder, targets["splice"] = start_splice_forwarder(site.port)
            if args.c_reference:
                for name, (mode, _) in C_REFERENCES.items():
                    c_forwarders[name], targets[name] = start_c_forwarder(site.port, mode)
            if args.baseline_tree:
                baseline, targets["baseline"] = start_relay(site.port, args.relay_args.split(), args.baseline_tree)
            for port in targets.values():  # warm up: page cache, nginx worker, relay code paths
                handshake_ms(port, context)
                download_mbps(port, site.ca, size)
            times: dict[str, list[float]] = {name: [] for name in targets}
            proxies = {"relay": relay, "baseline": baseline, **c_forwarders}
            before = {name: procfs.tree_cpu_seconds(proxies[name].pid) for name in targets if proxies.get(name)}
            # A new order each round: a handshake right after another target's pays for that
            # one's teardown (its relay or nginx closing on the other core), ~0.2 ms p50 for a
            # fixed order of three (measured relay against itself as --baseline-tree).
            order, shuffle = list(targets), random.Random(13).shuffle
            for _ in range(args.handshakes):
                shuffle(order)
                for name in order:
                    times[name].append(handshake_ms(targets[name], context))
            # CPU per handshake (no idle cost: an idle relay uses none)
            hs_cpu = {name: (procfs.tree_cpu_seconds(proxies[name].pid) - t0) / args.handshakes * 1e6
                      for name, t0 in before.items()}
            speeds: dict[str, list[float]] = {name: [] for name in targets}
            cpu: dict[str, list[float]] = {"relay": [], "baseline": [], "nginx": [], "curl": []}
            for _ in range(args.downloads):
                for name, port in targets.items():
                    proxy = baseline if name == "baseline" else c_forwarders.get(name, relay)
                    before = (procfs.tree_cpu_seconds(proxy.pid), procfs.tree_cpu_seconds(site.proc.pid), _children_cpu())
                    speeds[name].append(download_mbps(port, site.ca, size))
                    if name in ("relay", "baseline"):
                        cpu[name].append(procfs.tree_cpu_seconds(proxy.pid) - before[0])
                    if name == "direct":
                        cpu["nginx"].append(procfs.tree_cpu_seconds(site.proc.pid) - before[1])
                        cpu["curl"].append(_children_cpu() - before[2])
        finally:
            for proc in c_forwarders.values():
                proc.kill()
                proc.wait()
            if forwarder is not None:
                forwarder.kill()
                forwarder.wait()
            if baseline is not None:
                baseline.terminate()
                baseline.wait(10)
            relay.terminate()
            relay.wait(10)
            for proc in (relay, baseline, forwarder, *c_forwarders.values()):  # their pipes too
                for pipe in (proc.stdout, proc.stderr) if proc is not None else ():
                    if pipe is not None:
                        pipe.close()
            site.stop()
    d50, r50 = pct(times["direct"], 0.5), pct(times["relay"], 0.5)
    preconnect = os.environ.get("ZT_RELAY_FALLBACK_PRECONNECT")
    print(f"relay settings: {args.relay_args or 'defaults'}; --fallback-preconnect "
          f"{'as in the flags' if '--fallback-preconnect' in args.relay_args else 'from ZT_RELAY_FALLBACK_PRECONNECT=' + preconnect if preconnect else 'default (0: a dial per connection)'}")
    print(f"time to first TLS 1.3 handshake, {args.handshakes} each (ms):")
    print(f"  direct  p50 {d50:.3f}  p90 {pct(times['direct'], 0.9):.3f}")
    print(f"  relay   p50 {r50:.3f}  p90 {pct(times['relay'], 0.9):.3f}")
    if "baseline" in times:
        b50 = pct(times["baseline"], 0.5)
        print(f"  baseline p50 {b50:.3f}  p90 {pct(times['baseline'], 0.9):.3f}  ({args.baseline_tree}; baseline - direct p50 {b50 - d50:+.3f} ms)")
    if "splice" in times:
        print(f"  splice  p50 {pct(times['splice'], 0.5):.3f}  p90 {pct(times['splice'], 0.9):.3f}  (bare splice(2) forwarder, threads)")
    for name, (_, what) in C_REFERENCES.items():
        if name in times:
            c50 = pct(times[name], 0.5)
            print(f"  {name} p50 {c50:.3f}  p90 {pct(times[name], 0.9):.3f}  ({what}; {name} - direct p50 {c50 - d50:+.3f} ms)")
    print(f"  relay - direct p50: {r50 - d50:+.3f} ms (target <= +0.300)  {'MET' if r50 - d50 <= 0.3 else 'NOT MET'}")
    print("  CPU per handshake: " + ", ".join(f"{name} {us:.0f} us" for name, us in hs_cpu.items()))
    if args.downloads:
        _print_downloads(args, speeds, cpu)
    print(f"machine load average: {os.getloadavg()[0]:.1f}")
    return 0


def _print_downloads(args: argparse.Namespace, speeds: dict[str, list[float]], cpu: dict[str, list[float]]) -> None:
    dmb, rmb = statistics.median(speeds["direct"]), statistics.median(speeds["relay"])
    print(f"HTTPS download of {args.size_mb} MB, median of {args.downloads} (MB/s):")
    print(f"  direct  {dmb:.0f}   ({', '.join(f'{v:.0f}' for v in speeds['direct'])})")
    print(f"  relay   {rmb:.0f}   ({', '.join(f'{v:.0f}' for v in speeds['relay'])})")
    print(f"  relay / direct: {rmb / dmb:.2f} (target >= 0.80)  {'MET' if rmb / dmb >= 0.8 else 'NOT MET'}")
    if "baseline" in speeds:
        bmb = statistics.median(speeds["baseline"])
        print(f"  baseline {bmb:.0f}   ({', '.join(f'{v:.0f}' for v in speeds['baseline'])})  baseline / direct: {bmb / dmb:.2f},"
              f" CPU s per download {statistics.median(cpu['baseline']):.2f}")
    if "splice" in speeds:
        smb = statistics.median(speeds["splice"])
        print(f"  splice  {smb:.0f}   ({', '.join(f'{v:.0f}' for v in speeds['splice'])})  splice / direct: {smb / dmb:.2f}")
    for name in C_REFERENCES:
        if name in speeds:
            cmb = statistics.median(speeds[name])
            print(f"  {name} {cmb:.0f}   ({', '.join(f'{v:.0f}' for v in speeds[name])})  {name} / direct: {cmb / dmb:.2f}")
    med = {k: statistics.median(v) for k, v in cpu.items() if v}
    print(f"  CPU seconds per download: nginx {med['nginx']:.2f}, curl {med['curl']:.2f}, relay {med['relay']:.2f}"
          f" (the relay adds {med['relay'] / (med['nginx'] + med['curl']):.0%} to the CPU a download takes)")


if __name__ == "__main__":
    raise SystemExit(main())
