"""Running the relay: event loop, health server, signals and draining.

``serve`` is one relay process; ``run`` picks it or the worker supervisor. Tests drive the
real process through the console script, so this module stays thin.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource

import uvloop

from relay import limits, logs, telemetry as telemetry_mod
from relay.config import RelayConfig
from relay.health import HealthServer
from relay.server import Relay
from relay.signals import NotReady, stop_signals

log = logging.getLogger("zt_relay")


def run(config: RelayConfig) -> int:
    """Runs until SIGTERM/SIGINT and a drain; returns the exit status."""
    logs.configure(config.log_format, config.log_level)
    raise_file_limit()
    warn_about_ceilings(config)
    try:
        if config.workers > 1:
            telemetry_mod.check_environment()  # each worker sets up its own
        else:
            telemetry = telemetry_mod.from_environment()
    except telemetry_mod.TelemetryConfigError as exc:
        log.error("telemetry configuration: %s", exc)
        return 2
    if config.workers > 1:
        from relay import workers

        return workers.supervise(config)
    return uvloop.run(serve(config, telemetry))


async def serve(config: RelayConfig, telemetry=None, publisher=None) -> int:
    """One relay process. ``publisher`` (workers only) receives periodic snapshots."""
    # Handlers first: a SIGTERM that arrives while starting must drain, not kill.
    not_ready = NotReady()
    signals = stop_signals(at_once=not_ready)
    relay = Relay(config, telemetry)

    def drain() -> None:
        relay.draining = True

    not_ready.attach(drain)
    try:
        await relay.start(reuse_port=config.workers > 1)
    except OSError as exc:
        log.error("%s", exc)
        return 1
    if telemetry is not None:
        telemetry.observe(relay.snapshot)
    health = None
    if config.health_listen is not None:
        health = relay.health = HealthServer(relay)
        try:
            await health.start(config.health_listen.host, config.health_listen.port)
        except OSError as exc:
            log.error("cannot serve health on %s: %s", config.health_listen, exc)
            await relay.close()
            return 1
    warn_about_descriptors(config, relay)
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
            with contextlib.suppress(asyncio.CancelledError):
                await publishing  # its last report
        if health is not None:
            await health.close()
        if telemetry is not None:
            telemetry.shutdown()
    return 0


def warn_about_ceilings(config: RelayConfig) -> None:
    """Logs where --max-connections x workers exceeds the ephemeral ports (once, in the
    supervisor too; the descriptor ceiling is per process: ``warn_about_descriptors``)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(x) for x in f.read().split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    warning = limits.port_warning(config.max_connections, config.workers, (low, high))
    if warning is not None:
        log.warning("%s", warning)


def warn_about_descriptors(config: RelayConfig, relay: Relay) -> None:
    """Logs where --max-connections exceeds RLIMIT_NOFILE, counted from what this process
    holds once it listens (the ceiling the relay then enforces: Relay.fds_short)."""
    site = config.fallback_max_connections if config.fallback is not None else 0
    warning = limits.descriptor_warning(config.max_connections, relay.nofile, relay.count_fds(), site)
    if warning is not None:
        log.warning("%s", warning)


def raise_file_limit() -> None:
    """Each tunnel holds up to three descriptors (TCP, UDP over IPv4 and IPv6), each site
    connection two: lift the soft limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
