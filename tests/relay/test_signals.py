"""Stop signals: ``at_once`` (readiness off) comes before anything else the process does."""

import asyncio
import os
import signal

import pytest
import uvloop

from relay.signals import STOP_SIGNALS, stop_signals


async def _callbacks_after_sigterm_see_not_ready() -> list[bool]:
    loop = asyncio.get_running_loop()
    ready = True

    def not_ready() -> None:
        nonlocal ready
        ready = False

    queue = stop_signals(at_once=not_ready)
    try:
        seen: list[bool] = []
        # Already due when the signal comes (a probe's request read in the same loop
        # iteration as the self-pipe, or while the signal's thread was descheduled):
        loop.call_soon(lambda: seen.append(ready))
        os.kill(os.getpid(), signal.SIGTERM)
        assert await asyncio.wait_for(queue.get(), 10) == signal.SIGTERM
        return seen
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)


@pytest.mark.parametrize("run", [uvloop.run, asyncio.run], ids=["uvloop", "asyncio"])
def test_sigterm_marks_not_ready_before_any_callback_runs(run):
    assert run(_callbacks_after_sigterm_see_not_ready()) == [False]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) == signal.default_int_handler
