"""Stop signals for the relay's processes, delivered into the event loop."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def stop_signals(queue: asyncio.Queue | None = None, at_once: Callable[[], None] | None = None) -> asyncio.Queue:
    """A queue that receives SIGTERM and SIGINT for the rest of the process's life.

    ``at_once`` runs in the handler itself, before whatever waits on the queue is woken (a
    few loop iterations later): a readiness probe answered in between already sees it.

    Unblocks them afterwards: a worker starts with them blocked (see workers.py), so one
    that arrived while it was starting is delivered now, to the handler, instead of being
    lost or killing it."""
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue() if queue is None else queue

    def handle(sig: int) -> None:
        if at_once is not None:
            at_once()
        queue.put_nowait(sig)

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, handle, sig)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    return queue
