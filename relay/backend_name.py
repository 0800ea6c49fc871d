"""A ``--fallback`` backend given by name, resolved off the connection path.

Visitors never wait for DNS once the name has been resolved: ``current()`` returns the last
good address at once. The name is refreshed every ``fresh`` seconds in the background, with
or without visitors (refreshed only on demand, the first visitors after a quiet spell went
to an address hours old: refused, or a connect timeout if it was gone); a visitor that finds
it due (the timer late) starts the refresh itself. At most one lookup is in flight, whatever the rate of connections (before,
every connection after the cache expired ran a lookup of its own and waited for it: a
burst of visitors was a burst of lookups, and a slow DNS server stalled the site).
Connections that arrive before the very first answer wait on that one lookup (``wait()``).
A failed lookup keeps the last good address (a DNS outage does not take the site down with
it), is counted by reason and reported to ``on_failure``, and is retried after ``RETRY``
seconds, not per connection.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import threading
from collections import Counter
from collections.abc import Callable

#: Seconds one lookup may take before it counts as failed (the resolver's own retries
#: included); the thread running it is left to finish, but it no longer blocks a refresh.
LOOKUP_TIMEOUT = 10.0
#: Seconds after a failed lookup before the next one.
RETRY = 1.0

# Failure reasons (label values of zt_relay_fallback_dns_failures_total).
NO_SUCH_NAME = "no_such_name"
TEMPORARY_FAILURE = "temporary_failure"
NO_ADDRESS = "no_address"
TIMEOUT = "timeout"
ERROR = "error"
FAILURE_REASONS = (NO_SUCH_NAME, TEMPORARY_FAILURE, NO_ADDRESS, TIMEOUT, ERROR)

_GAI_REASONS = {
    socket.EAI_NONAME: NO_SUCH_NAME,
    socket.EAI_AGAIN: TEMPORARY_FAILURE,
    getattr(socket, "EAI_NODATA", socket.EAI_NONAME): NO_ADDRESS,
    getattr(socket, "EAI_ADDRFAMILY", socket.EAI_NONAME): NO_ADDRESS,
}


async def getaddrinfo(loop: asyncio.AbstractEventLoop, host: str, port: int) -> list:
    """``socket.getaddrinfo`` in a daemon thread of its own. Not the loop's getaddrinfo: uvloop's
    (libuv's thread pool), like asyncio's executor, is waited for when the process exits, so a
    lookup DNS never answers (the resolver's timeouts x tries x search domains: a minute and
    more) held a SIGTERM'd relay past its drain, into Kubernetes' kill. A daemon thread is
    left behind at exit; at most one runs per lookup (``LOOKUP_TIMEOUT``, then ``RETRY``)."""
    future = loop.create_future()

    def deliver(result, error) -> None:
        if not future.done():  # not cancelled (timed out, relay closing)
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)

    def run() -> None:
        try:
            result, error = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM), None
        except Exception as exc:
            result, error = None, exc
        try:
            loop.call_soon_threadsafe(deliver, result, error)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass

    threading.Thread(target=run, name=f"lookup {host}", daemon=True).start()
    return await future


def failure_reason(exc: BaseException) -> str:
    """The metric label for a failed lookup."""
    if isinstance(exc, TimeoutError):
        return TIMEOUT
    if isinstance(exc, socket.gaierror):
        return _GAI_REASONS.get(exc.errno, ERROR)
    return ERROR


class CachedName:
    """The address of ``host:port``, refreshed every ``fresh`` seconds in the background."""

    def __init__(self, loop: asyncio.AbstractEventLoop, host: str, port: int, fresh: float,
                 on_failure: Callable[[str, BaseException], None]) -> None:
        self.loop = loop
        self.host = host
        self.port = port
        self.fresh = fresh
        self.on_failure = on_failure
        self.address: tuple | None = None  # the last good answer
        self.due = float("-inf")  # loop time from which the next lookup starts
        self.lookup: asyncio.Task | None = None  # the one lookup in flight
        self.error: OSError | None = None  # the last failure, while there is no address
        self.failures: Counter[str] = Counter(dict.fromkeys(FAILURE_REASONS, 0))  # zero series from the start
        self._timer: asyncio.TimerHandle | None = None  # the next refresh, while none is in flight
        self.closed = False
        self.current()  # the first lookup starts with the relay, before any visitor

    def current(self) -> tuple | None:
        """The last good address (None before the first answer); starts a refresh when
        one is due and none is in flight. Never waits."""
        if self.lookup is None and self.loop.time() >= self.due and not self.closed:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self.lookup = self.loop.create_task(self._resolve())
        return self.address

    def _refresh(self) -> None:
        self._timer = None
        self.current()

    async def wait(self) -> tuple:
        """The address, waiting for the lookup in flight if there has never been one;
        raises OSError if that lookup failed."""
        address = self.current()
        if address is not None:
            return address
        lookup = self.lookup
        if lookup is not None:
            try:
                await asyncio.shield(lookup)
            except asyncio.CancelledError:
                if not lookup.cancelled():  # we were cancelled, not the lookup
                    raise
        if self.address is not None:
            return self.address
        raise self.error or OSError(errno.ECANCELED, f"no address for {self.host} (lookup cancelled)")

    async def _resolve(self) -> None:
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT):
                infos = await getaddrinfo(self.loop, self.host, self.port)
            if not infos:
                raise socket.gaierror(socket.EAI_NODATA if hasattr(socket, "EAI_NODATA") else socket.EAI_NONAME, "no address")
            self.address = infos[0][4]
            self.error = None
            self.due = self.loop.time() + self.fresh
        except Exception as exc:  # gaierror, a timeout, anything: counted, never raised
            reason = failure_reason(exc)
            self.failures[reason] += 1
            if self.address is None:
                self.error = exc if isinstance(exc, OSError) else OSError(errno.EHOSTUNREACH, f"lookup of {self.host}: {reason}")
            self.due = self.loop.time() + RETRY
            self.on_failure(reason, exc)
        finally:
            self.lookup = None
        # Not reached when cancelled (the relay is closing): no timer outlives it.
        self._timer = self.loop.call_at(self.due, self._refresh)

    def close(self) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.lookup is not None:
            self.lookup.cancel()
