"""``--workers``: the supervisor keeps metrics monotonic and signals unlost across restarts;
workers start from a clean process; their snapshots reach the supervisor intact."""

import asyncio
import os
import signal
import socket
import subprocess

import pytest

from tests import ports
from tests.relay.conftest import Client, RelayProcess

LOOPBACK = ("--allow-destination", "127.0.0.0/8", "--min-destination-port", "1")
FRAMES = 'zt_relay_frames_total{direction="to_udp"}'


def worker_pids(relay: RelayProcess) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(relay.proc.pid)], capture_output=True, text=True).stdout
    return sorted(int(p) for p in out.split())


async def free_port() -> int:
    return ports.unused_port()  # outside the ephemeral range: see tests/ports.py


async def start_workers(start_relay, *args: str, count: int = 2) -> RelayProcess:
    port = await free_port()
    relay = await start_relay(*LOOPBACK, "--workers", str(count), *args, listen=f"127.0.0.1:{port}")
    relay.port = port
    assert await relay.wait_metric("zt_relay_workers", lambda v: v == count) == count
    return relay


async def test_counters_stay_monotonic_when_a_worker_dies_and_restarts(start_relay, echo):
    relay = await start_workers(start_relay)
    clients = [await Client.connect(relay.port) for _ in range(16)]
    for c in clients:
        c.send(echo.host, echo.port, b"m" * 30)
        await c.recv()
    before = await relay.wait_metric(FRAMES, lambda v: v == 16)
    assert before == 16
    original = worker_pids(relay)
    os.kill(original[0], signal.SIGKILL)
    deadline = asyncio.get_running_loop().time() + 15
    seen = []
    settled = 0
    while settled < 10:  # until the replacement has published for a while
        samples = await relay.metrics()
        seen.append(samples.get(FRAMES, 0))
        if samples.get("zt_relay_workers") == 2 and set(worker_pids(relay)) - set(original):
            settled += 1
        assert asyncio.get_running_loop().time() < deadline, "the dead worker was not replaced"
        await asyncio.sleep(0.1)
    assert min(seen) >= 16, f"frames_total went down after a worker died: {seen[:5]}...{seen[-5:]}"
    for c in clients:
        await c.close()
    relay.signal(signal.SIGTERM)
    assert await relay.wait(timeout=15) == 0


async def test_a_sigterm_while_a_worker_restarts_is_not_lost_and_exits_0(start_relay):
    relay = await start_workers(start_relay)
    pids = worker_pids(relay)
    os.kill(pids[0], signal.SIGKILL)
    await asyncio.sleep(0.3)  # the supervisor has seen the death and waits to restart
    relay.signal(signal.SIGTERM)
    assert await relay.wait(timeout=15) == 0
    assert not any(os.path.exists(f"/proc/{p}") for p in pids)
    assert not relay.logged("Traceback")


async def test_a_sigterm_right_after_a_worker_was_replaced_drains_it_and_exits_0(start_relay):
    relay = await start_workers(start_relay)
    pids = worker_pids(relay)
    os.kill(pids[0], signal.SIGKILL)
    deadline = asyncio.get_running_loop().time() + 10
    while len(set(worker_pids(relay)) - set(pids)) < 1:  # the replacement exists, maybe still importing
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)
    relay.signal(signal.SIGTERM)
    assert await relay.wait(timeout=15) == 0


async def test_workers_are_started_as_fresh_processes_not_forked_from_the_running_loop(start_relay):
    relay = await start_workers(start_relay)
    for pid in worker_pids(relay):
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        assert b"relay.worker" in argv, argv
    relay.signal(signal.SIGTERM)
    assert await relay.wait(timeout=15) == 0


# -- the report stream (sans-IO) --------------------------------------------------------------

from relay import workers as workers_mod  # noqa: E402

BIG = {f"dropped:reason_{i}": i for i in range(5000)}  # larger than any fixed slot would hold


def test_reports_arrive_whole_when_fed_at_once_or_byte_by_byte():
    stream = workers_mod.encode_report(True, {"frames_to_udp": 3}) + workers_mod.encode_report(False, BIG)
    assert len(stream) > 64 * 1024
    whole = workers_mod.ReportDecoder().feed(stream)
    decoder = workers_mod.ReportDecoder()
    pieces = [r for i in range(len(stream)) for r in decoder.feed(stream[i:i + 1])]
    expected = [{"ready": True, "stats": {"frames_to_udp": 3}}, {"ready": False, "stats": BIG}]
    assert whole == pieces == expected


@pytest.mark.parametrize("stream", [b"\xff\xff\xff\xff", b"\x00\x00\x00\x03{x}"], ids=["too-long", "not-json"])
def test_a_corrupt_report_stream_is_an_error_not_a_wrong_number(stream):
    with pytest.raises(workers_mod.ReportError):
        workers_mod.ReportDecoder().feed(stream)


async def test_a_worker_killed_during_the_drain_makes_the_supervisor_exit_128_plus_the_signal(start_relay, echo):
    relay = await start_workers(start_relay, "--drain-timeout", "30")
    clients = [await Client.connect(relay.port) for _ in range(8)]  # on both workers, very likely
    for c in clients:
        c.send(echo.host, echo.port, b"k" * 20)
        await c.recv()
    pids = worker_pids(relay)
    relay.signal(signal.SIGTERM)
    await asyncio.sleep(0.5)  # the workers with tunnels are draining them
    # A worker that got none of the 8 (1 run in 256) has nothing to drain and has exited:
    # the one killed is one still draining, not whichever pid comes first.
    draining = [pid for pid in pids if pid in worker_pids(relay)]
    assert draining, f"no worker of {pids} is still draining 8 tunnels"
    os.kill(draining[0], signal.SIGKILL)
    for c in clients:
        await c.close()
    assert await relay.wait(timeout=15) == 128 + signal.SIGKILL


async def test_relay_workers_on_a_picked_port_refuse_to_share_it_with_a_stranger(start_relay):
    """With SO_REUSEPORT the kernel lets any same-user socket that set it join the port: the
    relay's workers started beside a stranger's listener, which then took half the test's
    connections. The harness fails the start instead, naming the other listener."""
    port = ports.unused_port()
    with socket.socket() as stranger:
        stranger.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        stranger.bind(("127.0.0.1", port))
        stranger.listen()
        with pytest.raises(RuntimeError, match=rf"port {port} .*pid {os.getpid()}"):
            await start_relay("--workers", "2", listen=f"127.0.0.1:{port}")
