"""Stop signals for the relay's processes, delivered into the event loop."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def stop_signals(queue: asyncio.Queue | None = None, at_once: Callable[[], None] | None = None) -> asyncio.Queue:
    """A queue that receives SIGTERM and SIGINT for the rest of the process's life.

    ``at_once`` runs in Python's own handler, at the main thread's next bytecode after the
    signal (before any loop callback: the loop's handler only runs once the self-pipe is
    read, after what that loop iteration had already queued, and a signal taken by a libuv
    worker thread may write the pipe late): a readiness probe answered after it sees it.

    Unblocks them afterwards: a worker starts with them blocked (see workers.py), so one
    that arrived while it was starting is delivered now, to the handler, instead of being
    lost or killing it."""
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue() if queue is None else queue

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, queue.put_nowait, sig)  # sets the wakeup fd: the loop wakes
        if at_once is not None:
            signal.signal(sig, _first(at_once, signal.getsignal(sig)))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    return queue


def _first(at_once: Callable[[], None], loops: Callable) -> Callable:
    """A Python signal handler running ``at_once``, then the loop's own (uvloop records the
    signal in it; asyncio's does nothing: both read the wakeup fd)."""

    def handler(sig: int, frame) -> None:
        at_once()
        loops(sig, frame)

    return handler


class NotReady:
    """``at_once`` for a process whose readiness lives on an object made after the handlers
    (they come first: a signal while it starts must drain, not kill). A signal that came
    before that object existed (a worker's, forwarded while it started, is delivered when
    ``stop_signals`` unblocks it) is kept, and ``attach`` applies it at once."""

    def __init__(self) -> None:
        self.signalled = False
        self._apply: Callable[[], None] | None = None

    def __call__(self) -> None:
        self.signalled = True
        if self._apply is not None:
            self._apply()

    def attach(self, apply: Callable[[], None]) -> None:
        """``apply`` turns readiness off: now if a signal came, else at the signal."""
        self._apply = apply
        if self.signalled:
            apply()
