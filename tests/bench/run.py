"""Benchmark driver: ``python -m tests.bench.run [--relay zt-relay|cpp|all]``.

Builds the C load generator (loadgen.c), moves into a private network namespace (root;
see netns.py), starts the relays and measures, for each:

- throughput: round-trip frames/s with T tunnels, S-byte packets, K frames in flight per
  tunnel (default 128 x 1400 B x 8), median of several runs, with the relay's CPU share
  and the rest of the machine's load during each run (the machine is shared: a relay
  that got less than a full core was starved, not slow);
- ping-pong: one tunnel, one frame in flight: p50/p99 round-trip latency;
- both with the loadgen sleeping (like real peers) and busy-polling (see LOADGEN_MODES);
- idle memory: RSS growth per tunnel with N tunnels (default 8,000) open, each having sent
  the hello and one frame, measured on a freshly started relay;
- per-packet cost of hostile packets (bench_packet_cost.py): a verdict-cache miss and a
  tunnel spraying distinct addresses, as ratios to a cache hit in the same run.

Runs of different relays are interleaved so that background load hits them alike.
``--profile`` adds a run of zt-relay under py-spy and prints the hottest functions.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.bench import bench_packet_cost, build, netns, procfs, profile, relays

CPP = "tcp-proxy"
OURS = "zt-relay"
#: How the loadgen waits. "sleep": a client thread and an echo thread that block, like real
#: peers; on loopback the relay then pays (in its send syscalls) for waking them. "busy":
#: one thread spins over client and echo, so nobody sleeps: the relay's cost without the
#: wakeups, and latency without the loadgen's own wakeup time. It needs a whole core.
#: "block": one thread runs client and echo and blocks in epoll_wait (a ztload-style
#: blocking client): one wakeup per hop, as a real single-threaded node has.
LOADGEN_MODES = ("sleep", "busy", "block")
_BUSY_POLL = {"sleep": "0", "busy": "1", "block": "2"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--relay", choices=["zt-relay", "cpp", "all"], help="which relay(s) to measure (default: all if a C++ proxy is configured, else zt-relay)")
    parser.add_argument("--cpp-proxy", metavar="PATH", help="ZeroTier tcp-proxy binary (or env ZT_BENCH_CPP_PROXY)")
    parser.add_argument("--runs", type=int, default=5, help="runs per measurement; medians are reported (default 5)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per throughput run (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before measuring (default 2)")
    parser.add_argument("--tunnels", type=int, default=128, help="tunnels in the throughput run (default 128)")
    parser.add_argument("--size", type=int, default=1400, help="ZeroTier packet bytes per frame (default 1400)")
    parser.add_argument("--inflight", type=int, default=8, help="frames in flight per tunnel (default 8)")
    parser.add_argument("--pingpong-size", type=int, default=100, help="ZeroTier packet bytes of the ping-pong frame (default 100)")
    parser.add_argument("--pingpong-duration", type=float, default=5.0, help="seconds per ping-pong run (default 5)")
    parser.add_argument("--idle-tunnels", type=int, default=8000, help="tunnels held open for the memory run (default 8000)")
    parser.add_argument("--throughput-modes", default="sleep", help="loadgen modes for the throughput runs, comma-separated: sleep (client and echo threads block), busy (one thread spins over client and echo: no wakeups to pay, but it takes a core the relay then lacks) (default sleep)")
    parser.add_argument("--pingpong-modes", default="block,busy,sleep", help="loadgen modes for the ping-pong runs: block (one thread, blocking epoll: the latency goal's mode), busy, sleep (default block,busy,sleep)")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: throughput,pingpong,idle,cost")
    parser.add_argument("--zt-relay-command", metavar="CMD", help="how to start zt-relay instead of the installed script, e.g. to A/B a patched copy: 'python /tmp/variant.py' (split like a shell)")
    parser.add_argument("--relay-arg", action="append", default=[], metavar="ARG", help="extra argument for zt-relay (repeatable), e.g. --relay-arg=--workers=2")
    parser.add_argument("--profile", action="store_true", help="one more zt-relay throughput run under py-spy; print the hottest functions")
    parser.add_argument("--profile-native", action="store_true", help="with --profile: include native frames (uvloop, CPython)")
    parser.add_argument("--pin", metavar="RELAY:LOADGEN", help="pin relays and loadgen to CPU lists, e.g. 0:1 (cross-CPU wakeups) or 0:0; latency depends mostly on this placement")
    parser.add_argument("--nice", type=int, default=0, help="run relays and loadgen at this nice value, also for the autogroup; on a shared machine -10 gives them most of the CPU (negative needs root)")
    parser.add_argument("--json", metavar="PATH", help="also write all results as JSON here")
    parser.add_argument("--no-netns", action="store_true", help="stay in this network namespace (only zt-relay then; it listens on 127.0.0.1)")
    args = parser.parse_args(argv)
    args.cpp_binary = relays.cpp_proxy_binary(args.cpp_proxy)
    if args.relay is None:
        args.relay = "all" if args.cpp_binary else "zt-relay"
    if args.relay in ("cpp", "all") and args.cpp_binary is None:
        parser.error("--relay cpp/all needs --cpp-proxy PATH or ZT_BENCH_CPP_PROXY (a tcp-proxy binary built from ZeroTierOne's tcp-proxy/)")
    if args.relay in ("cpp", "all") and args.no_netns:
        parser.error("--no-netns: the C++ proxy binds 0.0.0.0:443 and is only run inside a private network namespace")
    for option in ("throughput_modes", "pingpong_modes"):
        modes = [m.strip() for m in getattr(args, option).split(",") if m.strip()]
        if not modes or set(modes) - set(LOADGEN_MODES):
            parser.error(f"--{option.replace('_', '-')}: use one or more of {', '.join(LOADGEN_MODES)}, got {','.join(modes) or 'nothing'}")
        setattr(args, option, modes)
    args.relay_cpus = args.loadgen_cpus = None
    if args.pin:
        try:
            relay_part, loadgen_part = args.pin.split(":")
            args.relay_cpus = {int(c) for c in relay_part.split(",")}
            args.loadgen_cpus = {int(c) for c in loadgen_part.split(",")}
        except ValueError:
            parser.error(f"--pin: expected RELAY_CPUS:LOADGEN_CPUS such as 0:1 or 0:0,1, got {args.pin!r}")
        available = os.sched_getaffinity(0)
        if not (args.relay_cpus | args.loadgen_cpus) <= available:
            parser.error(f"--pin: CPUs {sorted((args.relay_cpus | args.loadgen_cpus) - available)} are not available (have {sorted(available)})")
    args.skip = {part.strip() for part in args.skip.split(",") if part.strip()}
    unknown = args.skip - {"throughput", "pingpong", "idle", "cost"}
    if unknown:
        parser.error(f"--skip: unknown part(s) {', '.join(sorted(unknown))}; use throughput, pingpong, idle, cost")
    for name in ("runs", "tunnels", "inflight", "idle_tunnels"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 16 <= args.size <= 16384 - 7:
        parser.error("--size must be 16..16377 (ZeroTier's proxy ignores smaller packets; larger exceeds zt-relay's default record bound)")
    return args


# -- load runs --------------------------------------------------------------------------------


#: CPUs the loadgen is pinned to (None: unpinned); set from --pin.
LOADGEN_CPUS: set[int] | None = None


def _pin_loadgen() -> None:
    if LOADGEN_CPUS is not None:
        os.sched_setaffinity(0, LOADGEN_CPUS)


def run_frames(loadgen: Path, relay: relays.RunningRelay, tunnels: int, size: int, inflight: int, duration: float, warmup: float,
               mode: str = "sleep", on_start=None) -> dict:
    """One loadgen ``frames`` run; adds the relay's CPU and the machine's other load in the window."""
    command = [str(loadgen), "frames", "--target", relay.target, "--tunnels", str(tunnels), "--size", str(size),
               "--inflight", str(inflight), "--duration", str(duration), "--warmup", str(warmup),
               "--busy-poll", _BUSY_POLL[mode]]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_pin_loadgen)
    result = None
    for line in process.stdout:
        if line.startswith("# measure start"):
            cpu0, (busy0, all0, soft0) = procfs.tree_cpu_seconds(relay.pid), procfs.machine_busy_seconds()
            sys0 = procfs.tree_system_seconds(relay.pid)
            if on_start is not None:
                on_start()
        elif line.startswith("# measure end"):
            cpu1, (busy1, all1, soft1) = procfs.tree_cpu_seconds(relay.pid), procfs.machine_busy_seconds()
            sys1 = procfs.tree_system_seconds(relay.pid)
        elif line.startswith("{"):
            result = json.loads(line)
    stderr = process.stderr.read()
    if process.wait() != 0 or result is None:
        raise SystemExit(f"loadgen against {relay.name} failed ({process.returncode}): {stderr.strip()}")
    seconds = result["seconds"]
    cores = os.cpu_count() or 1
    result["relay_cpu_pct"] = round(100 * (cpu1 - cpu0) / seconds, 1)
    machine_pct = 100 * cores * (busy1 - busy0) / (all1 - all0)
    result["softirq_cpu_pct"] = round(100 * cores * (soft1 - soft0) / (all1 - all0), 1)
    result["other_cpu_pct"] = round(max(0.0, machine_pct - result["relay_cpu_pct"] - result["loadgen_cpu_pct"] - result["softirq_cpu_pct"]), 1)
    # Kernel time is the floor no Python change removes: recv/send syscalls and loopback.
    result["relay_kernel_share_pct"] = round(100 * (sys1 - sys0) / (cpu1 - cpu0), 1) if cpu1 > cpu0 else None
    result["frames_per_cpu_s"] = round(result["frames"] / (cpu1 - cpu0)) if cpu1 > cpu0 else None
    if relay.process.poll() is not None:
        raise SystemExit(f"{relay.name} died during the run")
    return result


def run_idle(loadgen: Path, relay: relays.RunningRelay, tunnels: int) -> dict:
    """RSS growth of a fresh relay per tunnel with ``tunnels`` open and idle."""
    time.sleep(1.0)  # let start-up allocations settle
    before = procfs.tree_rss_kib(relay.pid)
    command = [str(loadgen), "idle", "--target", relay.target, "--tunnels", str(tunnels)]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_pin_loadgen)
    opened = json.loads(process.stdout.readline() or "null")
    if not opened:
        raise SystemExit(f"loadgen idle against {relay.name} failed: {process.stderr.read().strip()}")
    time.sleep(1.0)
    after = procfs.tree_rss_kib(relay.pid)
    process.stdin.close()  # tells the loadgen to report and close every tunnel
    ended = json.loads(process.stdout.readline() or "null") or {}
    process.wait(timeout=60)
    ready = opened["ready"]
    return {
        "tunnels": tunnels, "ready": ready, "setup_s": opened["setup_s"],
        "closed_by_relay": ended.get("closed_by_relay", opened["closed_by_relay"]),
        "rss_before_kib": before, "rss_after_kib": after,
        "kib_per_tunnel": round((after - before) / ready, 2) if ready else None,
    }


# -- report -----------------------------------------------------------------------------------


def median_of(runs: list[dict], key: str):
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def spread(runs: list[dict], key: str) -> str:
    values = [r[key] for r in runs if r.get(key) is not None]
    if len(values) < 2:
        return ""
    med = statistics.median(values)
    return f"{min(values):,.0f}..{max(values):,.0f} (+-{100 * (max(values) - min(values)) / 2 / med:.0f}%)" if med else ""


def _fmt(value, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def table(results: dict, args: argparse.Namespace) -> str:
    names = list(results)
    rows: list[tuple[str, list[str], str]] = []

    def add(label: str, key: str, part: str, digits: int = 0, lower_is_better: bool = False, compare: bool = True) -> None:
        values = []
        for name in names:
            data = results[name].get(part)
            if part == "idle":
                values.append(data.get(key) if data else None)
            else:
                values.append(median_of(data, key) if data else None)
        ratio = ""
        if compare and OURS in results and CPP in results:
            ours, theirs = values[names.index(OURS)], values[names.index(CPP)]
            if ours and theirs:
                ratio = f"{ours / theirs:.2f}" + (" (lower is better)" if lower_is_better else "")
        rows.append((label, [_fmt(v, digits) for v in values], ratio))

    load = f"{args.tunnels}x{args.inflight}, {args.size} B"
    for mode in args.throughput_modes:
        part = f"throughput/{mode}"
        if "throughput" in args.skip:
            break
        add(f"frames/s ({load}, {mode} loadgen)", "frames_per_s", part)
        rows.append(("  min..max over runs", [spread(results[n].get(part) or [], "frames_per_s") for n in names], ""))
        add("  relay CPU %", "relay_cpu_pct", part)
        add("  frames per relay CPU-second", "frames_per_cpu_s", part)
        add("  relay CPU in the kernel, %", "relay_kernel_share_pct", part)
        add("  loadgen CPU %", "loadgen_cpu_pct", part, compare=False)
        add("  softirq (loopback delivery) CPU %", "softirq_cpu_pct", part, compare=False)
        add("  other load on the machine, CPU %", "other_cpu_pct", part, compare=False)
        add("  latency p50 us", "p50_us", part, lower_is_better=True)
        add("  latency p99 us", "p99_us", part, lower_is_better=True)
    for mode in args.pingpong_modes:
        part = f"pingpong/{mode}"
        if "pingpong" in args.skip:
            break
        add(f"ping-pong p50 us (1x1, {args.pingpong_size} B, {mode} loadgen)", "p50_us", part, lower_is_better=True)
        add("  p99 us", "p99_us", part, lower_is_better=True)
        add("  round trips/s", "frames_per_s", part)
    if "idle" not in args.skip:
        add(f"RSS KiB per idle tunnel ({args.idle_tunnels})", "kib_per_tunnel", "idle", digits=2, lower_is_better=True)
        add("  RSS before, KiB", "rss_before_kib", "idle", compare=False)
        add("  RSS after, KiB", "rss_after_kib", "idle", compare=False)
    header = ("", names, "ours/C++" if len(names) > 1 else "")
    widths = [max(len(r[0]) for r in [header, *rows])] + [max([len(header[1][i])] + [len(r[1][i]) for r in rows]) for i in range(len(names))]
    lines = []
    for label, values, ratio in [header, *rows]:
        cells = [label.ljust(widths[0])] + [v.rjust(widths[i + 1]) for i, v in enumerate(values)]
        lines.append("  ".join(cells) + ("  " + ratio if ratio else ""))
    return "\n".join(lines)


# -- main -------------------------------------------------------------------------------------


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(f"stopped by signal {signum}")  # runs the finally blocks that stop the relays


def claim_cpu(nice: int) -> None:
    """Lowers this process's nice value (inherited by children) and, with autogroup
    scheduling, its session group's: otherwise nice only ranks our own processes."""
    os.setpriority(os.PRIO_PROCESS, 0, nice)
    try:
        Path("/proc/self/autogroup").write_text(str(nice))
    except OSError:
        pass  # no autogroup (or not root): the process nice value is all there is


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    args = parse_args(argv)
    loadgen = build.loadgen_binary()
    if not args.no_netns:
        netns.enter_private_netns()
    if args.nice:
        claim_cpu(args.nice)
    global LOADGEN_CPUS
    LOADGEN_CPUS, relays.RELAY_CPUS = args.loadgen_cpus, args.relay_cpus
    names = {"zt-relay": [OURS], "cpp": [CPP], "all": [OURS, CPP]}[args.relay]
    workdir = Path(tempfile.mkdtemp(prefix="zt-relay-bench-"))
    results: dict[str, dict] = {name: {} for name in names}
    say = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731  progress, not results
    say(f"loadgen: {loadgen}; work dir: {workdir}; {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f}; "
        f"pinning: {args.pin or 'none'}; nice: {args.nice}")

    def start(name: str) -> relays.RunningRelay:
        if name == OURS:
            prefix = shlex.split(args.zt_relay_command) if args.zt_relay_command else None
            return relays.start_zt_relay(workdir, args.relay_arg, prefix)
        return relays.start_cpp_proxy(args.cpp_binary, workdir)

    if args.profile or not {"throughput", "pingpong"} <= args.skip:
        running = {name: start(name) for name in names}
        try:
            if "throughput" not in args.skip:
                for mode in args.throughput_modes:
                    for i in range(args.runs):
                        for name in names:
                            r = run_frames(loadgen, running[name], args.tunnels, args.size, args.inflight, args.duration, args.warmup, mode)
                            results[name].setdefault(f"throughput/{mode}", []).append(r)
                            say(f"throughput ({mode} loadgen) run {i + 1}/{args.runs} {name}: {r['frames_per_s']:,.0f} frames/s, relay CPU {r['relay_cpu_pct']}%, "
                                f"loadgen {r['loadgen_cpu_pct']}%, softirq {r['softirq_cpu_pct']}%, other {r['other_cpu_pct']}%, p50 {r['p50_us']:.0f} us, lost {r['lost']}")
            if "pingpong" not in args.skip:
                for mode in args.pingpong_modes:
                    for i in range(args.runs):
                        for name in names:
                            r = run_frames(loadgen, running[name], 1, args.pingpong_size, 1, args.pingpong_duration, 1.0, mode)
                            results[name].setdefault(f"pingpong/{mode}", []).append(r)
                            say(f"ping-pong ({mode} loadgen) run {i + 1}/{args.runs} {name}: p50 {r['p50_us']:.0f} us, p99 {r['p99_us']:.0f} us")
            if args.profile and OURS in running:
                output = workdir / "py-spy.txt"
                recorder: list = []
                start_profile = lambda: recorder.append(profile.start_recording(running[OURS].pid, args.duration, output, args.profile_native))  # noqa: E731
                r = run_frames(loadgen, running[OURS], args.tunnels, args.size, args.inflight, args.duration, args.warmup,
                               args.throughput_modes[0], on_start=start_profile)
                recorder[0].wait(timeout=60)
                if not output.exists():
                    say(f"py-spy wrote nothing: {recorder[0].stderr.read().decode(errors='replace').strip()}")
                else:
                    summary = profile.summarise(output.read_text())
                    results[OURS]["profile"] = {"frames_per_s_while_sampled": r["frames_per_s"], "samples": summary.samples,
                                                "self": summary.self_share, "inclusive": summary.inclusive_share}
                    say(f"profiled run: {r['frames_per_s']:,.0f} frames/s while sampled; raw stacks in {output}")
                    print(profile.format_profile(summary))
        finally:
            for relay in running.values():
                relay.stop()

    if "idle" not in args.skip:
        for name in names:
            relay = start(name)
            try:
                r = run_idle(loadgen, relay, args.idle_tunnels)
            finally:
                relay.stop()
            results[name]["idle"] = r
            say(f"idle {name}: {r['ready']}/{r['tunnels']} tunnels open in {r['setup_s']} s, {r['kib_per_tunnel']} KiB each, closed by relay {r['closed_by_relay']}")

    cost = bench_packet_cost.measure() if "cost" not in args.skip else None
    print(table(results, args))
    if cost is not None:
        print(bench_packet_cost.format_table(cost))
    if not args.profile:
        shutil.rmtree(workdir, ignore_errors=True)  # kept on failure (relay log) and with --profile (raw stacks)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": {k: v for k, v in vars(args).items() if k != "cpp_binary"}, "results": results, "packet_cost_ns": cost}, indent=2, default=sorted))
    return 0


if __name__ == "__main__":
    sys.exit(main())
