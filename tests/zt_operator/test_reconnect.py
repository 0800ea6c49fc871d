"""After an API-server outage the operator is back within seconds of the API (issue 14).

Seen on the real cluster (30 s outage): the API's address drops packets while it is down,
so each watch reconnect hung for Kopf's 30 s connect timeout, then backed off; the watches
came back 27 s after the API did, and a child deleted right after the return was repaired
only then. A reconnect attempt must end (and a new one start) every few seconds."""

from __future__ import annotations

import itertools
import logging

import kopf

from zt_operator import handlers, kube


async def configured(monkeypatch) -> kopf.OperatorSettings:
    monkeypatch.setattr(kube, "login", lambda: None)
    monkeypatch.setattr(handlers.crd, "ensure", lambda get, apply: "ok")
    monkeypatch.setattr(handlers, "SETTINGS", handlers.SETTINGS.__class__(metrics_listen="off"))
    monkeypatch.setattr(handlers, "_tasks", [])
    settings = kopf.OperatorSettings()
    await handlers.configure(settings=settings, logger=logging.getLogger("test"))
    for task in handlers._tasks:
        task.cancel()
    return settings


async def test_a_watch_reconnects_within_10_seconds_of_the_api_answering_again(monkeypatch):
    settings = await configured(monkeypatch)
    backoffs = list(settings.networking.error_backoffs)
    # The longest gap between the API answering and a reconnect attempt reaching it: one
    # attempt that started just before (its connect timeout) plus the backoff after it.
    assert settings.watching.connect_timeout + max(backoffs) <= 10
    assert settings.networking.connect_timeout + max(backoffs) <= 10
    # ... and the attempts cover a 5-minute outage before Kopf gives up.
    assert sum(backoffs) + len(backoffs) * settings.watching.connect_timeout >= 300
    assert list(itertools.islice(backoffs, 3)) == sorted(itertools.islice(backoffs, 3))
