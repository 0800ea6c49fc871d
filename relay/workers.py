"""``--workers N``: N relay processes sharing the listen ports with SO_REUSEPORT.

The kernel spreads new connections across the workers' sockets; each worker is a whole
relay (its own loop, tunnels and caches). The supervisor (the process started by the
user) starts them, restarts one that dies, serves the health endpoints for all of them,
and forwards SIGTERM/SIGINT so that every worker drains.

- **Fresh processes.** A worker is a new interpreter (``python -m relay.worker``) that
  reads its settings as JSON on stdin, never a fork of the supervisor's running event
  loop (a fork would copy the loop, its selector and signal wiring, and any exporter
  thread's locks in whatever state they were in).
- **Signals are never lost.** Workers are started with SIGTERM and SIGINT blocked (the
  mask survives exec) and unblock them once their handlers are installed
  (``signals.stop_signals``): a signal forwarded while a worker starts is handled, not
  fatal. Once draining, the supervisor restarts nothing.
- **Reports.** Each worker writes its stats snapshot to a pipe twice a second and once
  more when it exits, framed by ``ReportDecoder``'s length prefix: a report arrives
  whole or not at all (no shared memory to tear or truncate, on any CPU).
- **Monotonic counters.** When a worker exits, its last report's totals are kept
  (``Supervisor.retired``), so ``/metrics`` never goes down over a restart.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import struct
import subprocess
import sys
from collections import Counter

import uvloop

from relay import metrics, stats
from relay.config import RelayConfig
from relay.health import HealthServer
from relay.signals import STOP_SIGNALS, NotReady, stop_signals

log = logging.getLogger("zt_relay.workers")

PUBLISH_INTERVAL = 0.5
STALE_AFTER = 10.0
RESTART_DELAY = 1.0
#: A report is a few kilobytes; anything near this is not one.
MAX_REPORT = 1 << 20
_LENGTH = struct.Struct(">I")


class ReportError(ValueError):
    """The report stream is corrupt (a worker bug): the supervisor stops reading it."""


def encode_report(ready: bool, snapshot: dict[str, int]) -> bytes:
    body = json.dumps({"ready": ready, "stats": snapshot}, separators=(",", ":")).encode()
    if len(body) > MAX_REPORT:
        raise ReportError(f"report of {len(body)} bytes exceeds {MAX_REPORT}")
    return _LENGTH.pack(len(body)) + body


class ReportDecoder:
    """Sans-IO: ``feed(bytes)`` returns the complete reports, in order; keeps partial ones."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[dict]:
        self._buf += data
        reports = []
        offset = 0
        while len(self._buf) - offset >= _LENGTH.size:
            size = _LENGTH.unpack_from(self._buf, offset)[0]
            if size > MAX_REPORT:
                raise ReportError(f"report length {size} exceeds {MAX_REPORT}")
            end = offset + _LENGTH.size + size
            if len(self._buf) < end:
                break
            try:
                reports.append(json.loads(self._buf[offset + _LENGTH.size:end]))
            except ValueError as exc:
                raise ReportError(f"report is not JSON: {exc}") from None
            offset = end
        del self._buf[:offset]
        return reports


class Worker:
    """One worker process as the supervisor sees it."""

    def __init__(self, index: int, process: subprocess.Popen, fd: int, now: float) -> None:
        self.index = index
        self.process = process
        self.fd: int | None = fd  # the report pipe, None once closed
        self.stats: dict[str, int] | None = None
        self.ready = False
        self.reported_at = now
        self.decoder = ReportDecoder()

    def received(self, data: bytes, now: float) -> None:
        for report in self.decoder.feed(data):
            self.stats = report["stats"]
            self.ready = bool(report["ready"])
            self.reported_at = now


class Supervisor:
    """The health source for all workers, and their process table."""

    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self.workers: dict[int, Worker] = {}  # index -> the running worker
        #: totals left by workers that have exited
        self.retired: Counter[str] = Counter()
        self.draining = False
        #: set by the signal handler itself: /readyz fails before the main loop reaches the drain
        self.signalled = False
        self.loop = asyncio.get_running_loop()

    @property
    def live(self) -> bool:
        now = self.loop.time()
        return self.draining or (
            len(self.workers) == self.config.workers
            and all(w.stats is not None and now - w.reported_at < STALE_AFTER for w in self.workers.values())
        )

    @property
    def ready(self) -> bool:
        return not (self.draining or self.signalled) and len(self.workers) == self.config.workers and all(w.ready for w in self.workers.values())

    def metrics_text(self) -> str:
        snaps = [w.stats for w in self.workers.values() if w.stats is not None]
        total = stats.merge([*snaps, self.retired])
        return metrics.render(total, {"zt_relay_workers": ("Worker processes publishing stats.", len(snaps))})

    def retire(self, worker: Worker) -> None:
        if worker.stats is not None:
            self.retired.update(stats.counters(worker.stats))

    def spawn(self, index: int, exits: asyncio.Queue) -> None:
        """Starts worker ``index`` as a fresh interpreter, stop signals blocked (see above)."""
        read_fd, write_fd = os.pipe()
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "relay.worker", str(index), str(write_fd), str(os.getpid())],
                stdin=subprocess.PIPE, pass_fds=(write_fd,),
                # Own process group: a terminal's Ctrl-C reaches the supervisor only, which
                # then forwards one SIGTERM (a second signal would mean "stop at once").
                process_group=0,
            )
        except OSError:
            os.close(read_fd)
            raise
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            os.close(write_fd)
        try:
            process.stdin.write(self.config.to_json().encode())
            process.stdin.close()
        except OSError:
            pass  # it died at once: its exit is reported below
        worker = Worker(index, process, read_fd, self.loop.time())
        self.workers[index] = worker
        os.set_blocking(read_fd, False)
        self.loop.add_reader(read_fd, self._read_reports, worker)
        pidfd = os.pidfd_open(process.pid)
        self.loop.add_reader(pidfd, self._exited, worker, pidfd, exits)
        log.info("worker %d started (pid %d)", index, process.pid)

    def _read_reports(self, worker: Worker) -> None:
        """Reads what the pipe holds; closes it at EOF or when the stream is corrupt."""
        while worker.fd is not None:
            try:
                data = os.read(worker.fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            try:
                if data:
                    worker.received(data, self.loop.time())
                    continue
            except ReportError as exc:
                log.error("worker %d: %s; ignoring its reports", worker.index, exc)
            self.loop.remove_reader(worker.fd)
            os.close(worker.fd)
            worker.fd = None

    def _exited(self, worker: Worker, pidfd: int, exits: asyncio.Queue) -> None:
        self.loop.remove_reader(pidfd)
        os.close(pidfd)
        code = worker.process.wait()
        self._read_reports(worker)  # its last report, written just before it exited
        if worker.fd is not None:
            self.loop.remove_reader(worker.fd)
            os.close(worker.fd)
            worker.fd = None
        exits.put_nowait((worker, code))

    def signal_all(self, sig: int) -> None:
        for worker in self.workers.values():
            try:
                worker.process.send_signal(sig)
            except ProcessLookupError:
                pass


def supervise(config: RelayConfig) -> int:
    return uvloop.run(_supervise(config))


def exit_status(code: int) -> int:
    """A Popen return code as a shell would report it (killed by signal N: 128 + N)."""
    return 128 - code if code < 0 else code


async def _supervise(config: RelayConfig) -> int:
    events: asyncio.Queue = asyncio.Queue()  # stop signals (int) and exits (worker, code)
    not_ready = NotReady()
    stop_signals(events, at_once=not_ready)
    supervisor = Supervisor(config)

    def signalled() -> None:
        supervisor.signalled = True

    not_ready.attach(signalled)
    health = None
    if config.health_listen is not None:
        health = HealthServer(supervisor)
        await health.start(config.health_listen.host, config.health_listen.port)
    for index in range(config.workers):
        supervisor.spawn(index, events)
    restarts: dict[int, asyncio.TimerHandle] = {}

    def restart(index: int) -> None:
        del restarts[index]
        if not supervisor.draining:
            supervisor.spawn(index, events)

    status = 0
    while supervisor.workers or restarts:
        event = await events.get()
        if isinstance(event, int):  # a stop signal; a second one is forwarded too (stop at once)
            if not supervisor.draining:
                supervisor.draining = True
                log.info("stop signal: draining %d workers", len(supervisor.workers))
                for handle in restarts.values():
                    handle.cancel()
                restarts.clear()
            supervisor.signal_all(signal.SIGTERM)
            continue
        worker, code = event
        supervisor.workers.pop(worker.index, None)
        supervisor.retire(worker)
        code = exit_status(code)
        if supervisor.draining:
            log.info("worker %d (pid %d) exited with %d", worker.index, worker.process.pid, code)
            status = status or code
        else:
            log.error("worker %d (pid %d) exited unexpectedly with %d; restarting in %g s", worker.index, worker.process.pid, code, RESTART_DELAY)
            restarts[worker.index] = asyncio.get_running_loop().call_later(RESTART_DELAY, restart, worker.index)
    if health is not None:
        await health.close()
    return status
