"""An operator that starts while the API server is unreachable (a restart mid-outage, an
upgrade during a control-plane blip) could not bring its CRD up to date, and never tried
again: the cluster kept the old schema until the next restart, and the API server pruned
the new fields from every relay silently (issue 14: "a new field is never pruned silently")."""

from __future__ import annotations

import asyncio
import logging

import kopf

from zt_operator import handlers, kube


async def test_a_crd_upgrade_that_failed_at_start_is_retried_until_it_succeeds(monkeypatch):
    calls: list[int] = []

    def ensure(get, apply):
        calls.append(1)
        if len(calls) < 3:
            raise kube.KubeError("getting the ZeroTierRelay CRD: timed out", "Timeout")
        return "brought the CRD up to date"

    monkeypatch.setattr(kube, "login", lambda: None)
    monkeypatch.setattr(handlers.crd, "ensure", ensure)
    monkeypatch.setattr(handlers, "SETTINGS", handlers.SETTINGS.__class__(metrics_listen="off"))
    monkeypatch.setattr(handlers, "_tasks", [])
    monkeypatch.setattr(handlers, "CRD_RETRY_SECONDS", 0.01, raising=False)
    await handlers.configure(settings=kopf.OperatorSettings(), logger=logging.getLogger("test"))
    try:
        for _ in range(300):
            if len(calls) >= 3:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        assert len(calls) == 3  # retried until it succeeded, then left alone
    finally:
        for task in handlers._tasks:
            task.cancel()
        await asyncio.gather(*handlers._tasks, return_exceptions=True)
