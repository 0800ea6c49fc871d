"""``--workers N``: N relay processes sharing the listen ports with SO_REUSEPORT.

The kernel spreads new connections across the workers' sockets; each worker is a whole
relay (its own loop, tunnels and caches). The supervisor (the process started by the
user) forks them, restarts one that dies, serves the health endpoints for all of them,
and forwards SIGTERM/SIGINT so that every worker drains.

Workers publish their stats snapshot into a shared anonymous memory map (one slot each,
a seqlock around a JSON blob) twice a second; ``/metrics`` sums the slots, ``/readyz`` is
ready when every worker is, ``/healthz`` fails when a worker stops publishing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import mmap
import os
import signal
import struct
import time

import uvloop

from relay import metrics, stats
from relay.config import RelayConfig
from relay.health import HealthServer

log = logging.getLogger("zt_relay.workers")

SLOT_SIZE = 64 * 1024
PUBLISH_INTERVAL = 0.5
STALE_AFTER = 10.0
RESTART_DELAY = 1.0
_SLOT_HEADER = struct.Struct("<QdII")  # sequence, publish time (wall clock), ready, length


class Slots:
    """Per-worker snapshot slots in memory shared across fork."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.memory = mmap.mmap(-1, SLOT_SIZE * count)

    def write(self, index: int, ready: bool, snapshot: dict[str, int]) -> None:
        blob = json.dumps(snapshot).encode()[: SLOT_SIZE - _SLOT_HEADER.size]
        base = index * SLOT_SIZE
        seq = _SLOT_HEADER.unpack_from(self.memory, base)[0]
        # Odd sequence while writing, even when done: the reader retries on a change.
        _SLOT_HEADER.pack_into(self.memory, base, seq + 1, time.time(), int(ready), len(blob))
        self.memory[base + _SLOT_HEADER.size: base + _SLOT_HEADER.size + len(blob)] = blob
        _SLOT_HEADER.pack_into(self.memory, base, seq + 2, time.time(), int(ready), len(blob))

    def read(self, index: int) -> tuple[float, bool, dict[str, int]] | None:
        base = index * SLOT_SIZE
        for _ in range(10):
            seq, stamp, ready, length = _SLOT_HEADER.unpack_from(self.memory, base)
            if seq == 0:
                return None  # never published
            blob = self.memory[base + _SLOT_HEADER.size: base + _SLOT_HEADER.size + length]
            if seq % 2 == 0 and _SLOT_HEADER.unpack_from(self.memory, base)[0] == seq:
                return stamp, bool(ready), json.loads(blob)
        return None

    def clear(self, index: int) -> None:
        _SLOT_HEADER.pack_into(self.memory, index * SLOT_SIZE, 0, 0.0, 0, 0)


class Supervisor:
    """The health source for all workers, and their process table."""

    def __init__(self, config: RelayConfig, slots: Slots) -> None:
        self.config = config
        self.slots = slots
        self.pids: dict[int, int] = {}  # pid -> slot index
        self.draining = False

    def _slots(self):
        return [self.slots.read(i) for i in range(self.slots.count)]

    @property
    def live(self) -> bool:
        now = time.time()
        return all(s is not None and now - s[0] < STALE_AFTER for s in self._slots()) or self.draining

    @property
    def ready(self) -> bool:
        return not self.draining and all(s is not None and s[1] for s in self._slots())

    def metrics_text(self) -> str:
        snaps = [s[2] for s in self._slots() if s is not None]
        return metrics.render(stats.merge(snaps), {"zt_relay_workers": ("Worker processes publishing stats.", len(snaps))})


def supervise(config: RelayConfig, telemetry=None) -> int:
    slots = Slots(config.workers)
    supervisor = Supervisor(config, slots)
    for index in range(config.workers):
        _spawn(supervisor, index, telemetry)
    return uvloop.run(_supervise(supervisor, telemetry))


def _spawn(supervisor: Supervisor, index: int, telemetry) -> None:
    supervisor.slots.clear(index)
    pid = os.fork()
    if pid == 0:
        # Own process group: a terminal's Ctrl-C reaches the supervisor only, which then
        # forwards one SIGTERM (a second signal would mean "stop at once").
        os.setpgid(0, 0)
        code = 1
        try:
            code = uvloop.run(_worker(supervisor.config, supervisor.slots, index, telemetry))
        finally:
            os._exit(code)
    supervisor.pids[pid] = index
    log.info("worker %d started (pid %d)", index, pid)


async def _worker(config: RelayConfig, slots: Slots, index: int, telemetry) -> int:
    from relay.app import serve

    async def publish(relay) -> None:
        while True:
            slots.write(index, relay.ready, relay.snapshot())
            await asyncio.sleep(PUBLISH_INTERVAL)

    return await serve(config.replace(health_listen=None), telemetry, publisher=publish)


async def _supervise(supervisor: Supervisor, telemetry) -> int:
    from relay.app import stop_signals

    config = supervisor.config
    signals = stop_signals()
    health = None
    if config.health_listen is not None:
        health = HealthServer(supervisor)
        await health.start(config.health_listen.host, config.health_listen.port)
    stopping = asyncio.ensure_future(signals.get())
    status = 0
    while supervisor.pids:
        done, _ = await asyncio.wait((stopping,), timeout=0.2)
        if done and not supervisor.draining:
            supervisor.draining = True
            log.info("stop signal: draining %d workers", len(supervisor.pids))
            for pid in supervisor.pids:
                os.kill(pid, signal.SIGTERM)
            stopping = asyncio.ensure_future(signals.get())  # a second signal is forwarded too
        elif done:
            for pid in supervisor.pids:
                os.kill(pid, signal.SIGTERM)
            stopping = asyncio.ensure_future(signals.get())
        for pid, index in list(supervisor.pids.items()):
            waited, code = os.waitpid(pid, os.WNOHANG)
            if waited == 0:
                continue
            del supervisor.pids[pid]
            code = os.waitstatus_to_exitcode(code)
            if supervisor.draining:
                log.info("worker %d (pid %d) exited with %d", index, pid, code)
                status = status or code
            else:
                log.error("worker %d (pid %d) exited unexpectedly with %d; restarting", index, pid, code)
                await asyncio.sleep(RESTART_DELAY)
                _spawn(supervisor, index, telemetry)
    stopping.cancel()
    if health is not None:
        await health.close()
    return status
