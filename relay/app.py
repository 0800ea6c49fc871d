"""Running the relay: event loop, health server, signals and draining.

``serve`` is one relay process; ``run`` picks it or the worker supervisor. Tests drive the
real process through the console script, so this module stays thin.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import signal

import uvloop

from relay import logs, telemetry as telemetry_mod
from relay.config import RelayConfig
from relay.health import HealthServer
from relay.server import Relay

log = logging.getLogger("zt_relay")


def run(config: RelayConfig) -> int:
    """Runs until SIGTERM/SIGINT and a drain; returns the exit status."""
    logs.configure(config.log_format, config.log_level)
    raise_file_limit()
    try:
        telemetry = telemetry_mod.from_environment()
    except telemetry_mod.TelemetryConfigError as exc:
        log.error("telemetry configuration: %s", exc)
        return 2
    if config.workers > 1:
        from relay import workers

        return workers.supervise(config, telemetry)
    return uvloop.run(serve(config, telemetry))


async def serve(config: RelayConfig, telemetry=None, publisher=None) -> int:
    """One relay process. ``publisher`` (workers only) receives periodic snapshots."""
    # Handlers first: a SIGTERM that arrives while starting must drain, not kill.
    signals = stop_signals()
    relay = Relay(config, telemetry)
    try:
        await relay.start(reuse_port=config.workers > 1)
    except OSError as exc:
        log.error("%s", exc)
        return 1
    if telemetry is not None:
        telemetry.observe(relay.snapshot)
    health = None
    if config.health_listen is not None:
        health = HealthServer(relay)
        try:
            await health.start(config.health_listen.host, config.health_listen.port)
        except OSError as exc:
            log.error("cannot serve health on %s: %s", config.health_listen, exc)
            await relay.close()
            return 1
    publishing = asyncio.ensure_future(publisher(relay)) if publisher is not None else None
    try:
        await signals.get()
        log.info("stop signal: not ready, then draining (a second signal stops at once)")
        drain = asyncio.ensure_future(relay.shutdown())
        force = asyncio.ensure_future(signals.get())
        await asyncio.wait((drain, force), return_when=asyncio.FIRST_COMPLETED)
        force.cancel()
        if not drain.done():
            drain.cancel()
            await relay.close()
    finally:
        if publishing is not None:
            publishing.cancel()
        if health is not None:
            await health.close()
        if telemetry is not None:
            telemetry.shutdown()
    return 0


def stop_signals() -> asyncio.Queue:
    """A queue that receives SIGTERM and SIGINT for the rest of the process's life."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, queue.put_nowait, sig)
    return queue


def raise_file_limit() -> None:
    """Each tunnel holds two descriptors (TCP and UDP): lift the soft limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
