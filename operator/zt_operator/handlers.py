"""Kopf handlers: thin wrappers around ``reconcile.run``.

Run with ``kopf run -m zt_operator.handlers`` (or the ``zt-relay-operator`` script, which
adds the liveness endpoint and standalone mode). Create, update, resume and a periodic
timer all run the same level-based pass; the timer is what repairs drift (a child edited
or deleted) and follows status (pods turning ready, the load balancer's address).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import time
from typing import Any

import kopf

from zt_operator import GROUP, PLURAL, VERSION, kube, metrics, reconcile, settings

SETTINGS = settings.from_environment(os.environ)
METRICS = metrics.Metrics()
_tasks: list[asyncio.Task] = []


class _QuietResync(logging.Filter):
    """Drops Kopf's "Timer 'resync' succeeded." line: it would repeat for every relay at
    every resync. Failures and everything else still get through."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.INFO and "Timer 'resync' succeeded" in record.getMessage())


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, logger: logging.Logger, **_: Any) -> None:
    logging.getLogger().setLevel(SETTINGS.log_level)
    logging.getLogger("kopf.objects").addFilter(_QuietResync())
    # Kopf's bookkeeping goes to annotations under our own group, not into status (the
    # schema would prune it) nor under kopf.zalando.org.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration")
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    # Watches end server-side every few minutes and reconnect; a client timeout above
    # that catches connections that die silently (Kopf >= 1.44 also detects stalls).
    settings.watching.server_timeout = 240
    settings.watching.client_timeout = 270
    settings.watching.connect_timeout = 30
    # Only warnings become Kubernetes Events; the operator posts its own transitions.
    settings.posting.level = logging.WARNING
    await asyncio.to_thread(kube.login)
    if SETTINGS.metrics_listen.lower() != "off":
        host, _, port = SETTINGS.metrics_listen.rpartition(":")
        _tasks.append(asyncio.create_task(metrics.serve(METRICS, host.strip("[]"), int(port))))
        logger.info("operator metrics on http://%s/metrics", SETTINGS.metrics_listen)


@kopf.on.cleanup()
async def stop(**_: Any) -> None:
    for task in _tasks:
        task.cancel()
    await asyncio.gather(*_tasks, return_exceptions=True)


def _reconcile(body: kopf.Body, patch: kopf.Patch, logger: logging.Logger) -> None:
    started = time.monotonic()
    outcome = reconcile.run(body, SETTINGS, _now)
    for key, value in outcome.status_patch.items():
        patch.status[key] = value
    for kind, reason, message in outcome.events:
        kopf.event(body, type=kind, reason=reason, message=message)
        (logger.info if kind == "Normal" else logger.warning)("%s: %s", reason, message)
    ready = next((c["status"] == "True" for c in outcome.status_patch.get("conditions") or [] if c["type"] == "Ready"), None)
    METRICS.record(f"{body.meta.namespace}/{body.meta.name}", outcome.result, time.monotonic() - started, ready)


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
def reconcile_on_change(body: kopf.Body, patch: kopf.Patch, logger: logging.Logger, **_: Any) -> None:
    _reconcile(body, patch, logger)


@kopf.timer(GROUP, VERSION, PLURAL, interval=SETTINGS.resync_seconds, initial_delay=SETTINGS.resync_seconds)
def resync(body: kopf.Body, patch: kopf.Patch, logger: logging.Logger, **_: Any) -> None:
    _reconcile(body, patch, logger)


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
def forget(body: kopf.Body, **_: Any) -> None:
    # Children go with the relay through their owner references; nothing to delete here.
    METRICS.forget(f"{body.meta.namespace}/{body.meta.name}")
