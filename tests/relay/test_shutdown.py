"""Shutdown the Kubernetes way: readiness fails at SIGTERM, listeners keep accepting for
``--shutdown-delay``, connections already in the kernel's accept queue are served, then the
drain runs as before.

The relay processes are stopped (SIGSTOP) while the clients connect, so every connection
sits in the accept queue, completed by the kernel but not yet accepted, when SIGTERM is
handled: the case where closing a listener resets them.
"""

import asyncio
import os
import signal
import subprocess

import pytest

from tests import ports
from tests.relay.conftest import Client, RelayProcess

LOOPBACK = ("--allow-destination", "127.0.0.0/8", "--min-destination-port", "1")
QUEUED = 50


def relay_pids(relay: RelayProcess, workers: int) -> list[int]:
    if workers == 1:
        return [relay.proc.pid]
    out = subprocess.run(["pgrep", "-P", str(relay.proc.pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def sigterm_pending(pid: int) -> bool:
    """Whether SIGTERM waits for the (stopped) process ``pid``: its shared or own pending set."""
    with open(f"/proc/{pid}/status") as f:
        masks = [int(line.split()[1], 16) for line in f if line.startswith(("ShdPnd:", "SigPnd:"))]
    return any(mask >> (signal.SIGTERM - 1) & 1 for mask in masks)


async def free_port() -> int:
    return ports.unused_port()  # outside the ephemeral range: see tests/ports.py


async def round_trip(client: Client, echo, payload: bytes) -> bytes:
    client.send(echo.host, echo.port, payload)
    return (await client.recv(timeout=10))[2]


@pytest.mark.parametrize("workers", [1, 2], ids=["one-worker", "two-workers"])
async def test_connections_queued_at_sigterm_are_served_and_listeners_accept_for_the_shutdown_delay(start_relay, echo, workers):
    port = await free_port()
    relay = await start_relay(*LOOPBACK, "--workers", str(workers), "--shutdown-delay", "2", "--drain-timeout", "20",
                              listen=f"127.0.0.1:{port}")
    await relay.wait_metric("zt_relay_workers", lambda v: v == workers) if workers > 1 else None
    pids = relay_pids(relay, workers)
    assert len(pids) == workers
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        queued = [await Client.connect(port) for _ in range(QUEUED)]  # the kernel completes these
        relay.signal(signal.SIGTERM)
        if workers > 1:  # the supervisor forwards SIGTERM to the stopped workers: pending in each
            deadline = asyncio.get_running_loop().time() + 10
            while not all(sigterm_pending(pid) for pid in pids):
                assert asyncio.get_running_loop().time() < deadline, "SIGTERM never forwarded to the stopped workers"
                await asyncio.sleep(0.01)
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    assert (await relay.http("/readyz"))[0] == 503  # out of the load balancer at once
    late = await Client.connect(port)  # within the delay, new connections are still accepted
    replies = await asyncio.gather(*(round_trip(c, echo, b"q%02d" % i * 8) for i, c in enumerate(queued)), return_exceptions=True)
    served = sum(1 for i, r in enumerate(replies) if r == b"q%02d" % i * 8)
    assert served == QUEUED, f"only {served} of {QUEUED} queued connections were served: {[r for r in replies if isinstance(r, BaseException)][:3]}"
    assert await round_trip(late, echo, b"late" * 8) == b"late" * 8
    # After the delay the listeners are closed: a new connection is refused.
    deadline = asyncio.get_running_loop().time() + 5
    while True:
        try:
            probe = await Client.connect(port)
        except ConnectionRefusedError:
            break
        await probe.close()
        assert asyncio.get_running_loop().time() < deadline, "still accepting 5 s after a 2 s shutdown delay"
        await asyncio.sleep(0.1)
    # The drain runs as before: live tunnels keep relaying until they close.
    assert await round_trip(queued[0], echo, b"draining" * 4) == b"draining" * 4
    for c in (*queued, late):
        await c.close()
    assert await relay.wait(timeout=10) == 0
    assert relay.logged("listeners closed")


async def test_a_second_signal_during_the_shutdown_delay_stops_at_once(start_relay, echo, connect):
    relay = await start_relay(*LOOPBACK, "--shutdown-delay", "30")
    client = await connect(relay.port)
    assert await round_trip(client, echo, b"x" * 20) == b"x" * 20
    relay.signal(signal.SIGTERM)
    await relay.wait_metric("zt_relay_tunnels_active", lambda v: v == 1)
    assert (await relay.http("/readyz"))[0] == 503
    relay.signal(signal.SIGTERM)
    assert await relay.wait(timeout=5) == 0
    assert await client.closed()
