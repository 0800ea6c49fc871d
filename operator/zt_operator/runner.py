"""Reconcile requests, serialised per relay, coalesced, retried with backoff.

Watch events of a relay and of its children, and the slow periodic resync, all ``request``
a reconcile of the relay. At most one reconcile of a relay runs at a time; requests
arriving meanwhile collapse into one more pass, which reads the latest spec. So a pass
that started before an edit can never apply after the edit's own pass (the old spec would
undo the edit and roll the pods twice). A failed pass is retried after ``backoff(n)``
seconds unless a new request comes first.

A pass runs in a thread and can't be cancelled (cancelling the task would leave the thread
applying): ``forget`` lets a pass in flight finish and ends its worker after it, and a
worker for the same key (the relay re-created under the same name) waits for it first.
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
        self._in_pass: set[asyncio.Task] = set()
        self._retiring: dict[str, asyncio.Task] = {}  # forgotten workers finishing a pass

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
        if task is None:
            return
        if task in self._in_pass:
            self._retiring[key] = task  # it ends after this pass
        else:
            task.cancel()

    def keys(self) -> list[str]:
        return list(self._wanted)

    async def close(self) -> None:
        tasks = list(self._tasks.values()) + list(self._retiring.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._retiring.clear()

    async def _worker(self, key: str, wanted: asyncio.Event) -> None:
        me = asyncio.current_task()
        earlier = self._retiring.get(key)
        if earlier is not None and earlier is not me:
            await asyncio.wait({earlier})  # the forgotten relay's last pass
            if self._retiring.get(key) is earlier:
                del self._retiring[key]
        failures = 0
        while True:
            await wanted.wait()
            wanted.clear()
            self._in_pass.add(me)
            try:
                ok = await self._work(key)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug in one pass must not end the relay's worker
                log.exception("reconcile of %s failed", key)
                ok = False
            finally:
                self._in_pass.discard(me)
            if self._tasks.get(key) is not me:
                if self._retiring.get(key) is me:
                    del self._retiring[key]
                return  # forgotten during the pass
            if ok:
                failures = 0
                continue
            failures += 1
            try:
                # A new request (an edit, a child event) ends the wait early.
                await asyncio.wait_for(wanted.wait(), timeout=self._backoff(failures))
            except asyncio.TimeoutError:
                wanted.set()
