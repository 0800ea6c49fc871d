"""Stop signals: ``at_once`` (readiness off) comes before anything else the process does."""

import asyncio
import os
import signal
import threading

import pytest
import uvloop

from relay import app
from relay.config import Endpoint, RelayConfig
from relay.health import HealthServer
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


def test_a_stop_signal_pending_when_the_handlers_are_installed_leaves_the_relay_not_ready(monkeypatch):
    """A worker starts with the stop signals blocked: one forwarded while it started comes
    when ``stop_signals`` unblocks them, before the relay exists. The relay must still come
    up not ready (its health server's first answer is 503)."""
    seen = []

    async def health_start(self, host, port):
        seen.append(self.source.ready)
        raise OSError("the test stops here")

    monkeypatch.setattr(HealthServer, "start", health_start)
    config = RelayConfig(listen=(Endpoint("127.0.0.1", 0),), health_listen=Endpoint("127.0.0.1", 0))
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)  # pending for this thread only
        assert uvloop.run(app.serve(config)) == 1
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    assert seen == [False]
