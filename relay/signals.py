"""Stop signals for the relay's processes, delivered into the event loop."""

from __future__ import annotations

import asyncio
import signal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def stop_signals(queue: asyncio.Queue | None = None) -> asyncio.Queue:
    """A queue that receives SIGTERM and SIGINT for the rest of the process's life.

    Unblocks them afterwards: a worker starts with them blocked (see workers.py), so one
    that arrived while it was starting is delivered now, to the handler, instead of being
    lost or killing it."""
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue() if queue is None else queue
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, queue.put_nowait, sig)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    return queue
