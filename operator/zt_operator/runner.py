"""Reconcile requests, serialised per relay, coalesced, retried with backoff.

Watch events of a relay and of its children, and the slow periodic resync, all ``request``
a reconcile of the relay. At most one reconcile of a relay runs at a time; requests
arriving meanwhile collapse into one more pass, which reads the latest spec. So a pass
that started before an edit can never apply after the edit's own pass (the old spec would
undo the edit and roll the pods twice). A failed pass is retried after ``backoff(n)``
seconds unless a new request comes first.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from zt_operator import plan

log = logging.getLogger(__name__)


class Runner:
    """Per-key workers; ``work(key)`` returns True when the pass succeeded."""

    def __init__(self, work: Callable[[str], Awaitable[bool]],
                 backoff: Callable[[int], float] = plan.backoff) -> None:
        self._work = work
        self._backoff = backoff
        self._wanted: dict[str, asyncio.Event] = {}
        self._tasks: dict[str, asyncio.Task] = {}

    def request(self, key: str) -> None:
        """Ask for a pass of ``key`` (starts its worker if it has none)."""
        wanted = self._wanted.setdefault(key, asyncio.Event())
        wanted.set()
        if key not in self._tasks or self._tasks[key].done():
            self._tasks[key] = asyncio.create_task(self._worker(key, wanted), name=f"reconcile {key}")

    def forget(self, key: str) -> None:
        """Stop the worker of ``key`` (the relay is gone)."""
        self._wanted.pop(key, None)
        task = self._tasks.pop(key, None)
        if task is not None:
            task.cancel()

    def keys(self) -> list[str]:
        return list(self._wanted)

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    async def _worker(self, key: str, wanted: asyncio.Event) -> None:
        failures = 0
        while True:
            await wanted.wait()
            wanted.clear()
            try:
                ok = await self._work(key)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug in one pass must not end the relay's worker
                log.exception("reconcile of %s failed", key)
                ok = False
            if ok:
                failures = 0
                continue
            failures += 1
            try:
                # A new request (an edit, a child event) ends the wait early.
                await asyncio.wait_for(wanted.wait(), timeout=self._backoff(failures))
            except asyncio.TimeoutError:
                wanted.set()
