"""``--fallback-preconnect N``: backend connections opened before a visitor needs one.

Without it a site connection dials the backend once its first bytes are classified: the
connect, and the site's accept of it, sit between the visitor's ClientHello and the site
seeing it (on loopback ~100-200 us of wall time, the site accepting after the ClientHello).
With it, each relay process keeps up to N connections to the backend open and never written
(as Envoy's cluster ``preconnect_policy`` does for TCP proxying); a classified connection
takes one and sends its first flight (the PROXY header first, if any: a pooled connection
has sent nothing) in the same callback, and a replacement is dialed in the background.

What a pooled connection may cost the site, and the guards:

- **Never older than** ``backend_pool.MAX_AGE``. Sites close a connection that says nothing: nginx after
  ``client_header_timeout``/``ssl_handshake_timeout`` (60 s), Apache's mod_reqtimeout after
  20 s, HAProxy after ``timeout http-request`` (often 5-10 s), Go servers after a
  ``ReadHeaderTimeout`` of a few seconds. 2 s stays well under all of them, so a visitor
  never gets a connection the site is about to close; an older one is closed and replaced.
- **Checked before use** with a non-blocking ``MSG_PEEK``: anything to read (bytes: a stale
  answer such as a 408 before a close, or a greeting; ``b''``: the site closed it) or an error
  (a reset) and it is closed and the next one tried, then a fresh dial. A site that speaks
  first (SMTP, SSH) has its greeting waiting on every one, and one that closes idle
  connections sooner than ``MAX_AGE`` has closed every one: after ``SPOKE_FIRST_LIMIT`` such
  discards in a row the pool pauses (logged, with why) instead of costing the site a
  connection per visit; for ``PAUSE_MIN``, doubling up to ``PAUSE_MAX`` while it pauses again
  before a visitor used one (a site reloading closes its idle connections too: the pool
  comes back).
- **Closed in the race**: a site that closes (or resets) a pooled connection just after the
  check, its FIN in flight, never read the visitor's first flight: if the send fails, or the
  site's EOF or reset comes before any byte from it and before the visitor sent anything
  more, and the site's kernel acknowledged none of that flight (``unread``: a site that read
  it and closed unanswered must not get it twice), the same first flight goes on a fresh
  dial, once (``fallback.py``). Every discard is
  counted by reason (``DISCARD_REASONS``).
- **Only as many as the visits**: a site connection owes the pool one connection (at most N;
  ``backend_pool.Pool.used``) while the pool is in use (it holds one, or the previous visit came
  within ``MAX_AGE``), a lone visit none, and one that ages out unused is not replaced: a quiet relay
  lets its pool age out instead of cycling connections for nobody (which a site that wants a
  PROXY header may log as an error each).
- **Within the relay's bounds, never in a visitor's way**: a pooled connection (or a dial in
  flight) counts as a backend connection under ``--fallback-max-connections``, as a descriptor
  and, under ``--max-memory``, as its receive buffer (``Relay.site_room``); the pool dials only
  while one more visitor would still fit beside it (``Relay.pool_room``), and gives way
  (``give_way``) before a visitor would be refused for a descriptor, memory or the cap, and
  before a tunnel would be refused a descriptor (``Relay.fds_short``).
- **Backend down**: a failed dial backs off (``backend_pool.BACKOFF_MIN`` doubling up to ``BACKOFF_MAX``,
  one dial at a time); visitors dial it themselves meanwhile, counted as without a pool.
- **A backend name**: each connection keeps the address it was dialed to; one to an address
  the name no longer resolves to is dropped, and new ones go to the new address.

``backend_pool.Pool`` is the bookkeeping, without I/O; ``Preconnector`` drives it with
non-blocking sockets on the loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
from collections import Counter
from collections.abc import Callable

from relay.backend_pool import Pool

log = logging.getLogger("zt_relay.fallback")

#: Seconds a pool dial may take before it counts as failed.
DIAL_TIMEOUT = 10.0
#: Seconds after a visitor took a connection before its replacement is dialed if the site
#: has not answered that visitor by then (``refill``).
REFILL_DELAY = 0.05
_TCP_ESTABLISHED = 1  # tcpi_state
_BYTES_ACKED = 120  # offset of struct tcp_info's u64 tcpi_bytes_acked
_TCP_INFO_LEN = _BYTES_ACKED + 8
#: Pooled connections discarded as unusable (bytes waiting, closed, reset), in a row (none
#: taken meanwhile), after which the pool pauses: the site speaks first (SMTP, SSH: its
#: greeting waits on every pooled connection), answers or closes idle connections within
#: ``MAX_AGE``, or is restarting. Such a site gains nothing from a pool, which only costs it
#: a connection per visit.
SPOKE_FIRST_LIMIT = 3
#: Seconds a pool pauses after ``SPOKE_FIRST_LIMIT`` unusable connections in a row, doubling
#: (up to ``PAUSE_MAX``) while it pauses again before a visitor took one: a site that keeps
#: speaking first costs a few connections an hour, one that was restarting gets its pool back.
PAUSE_MIN = 300.0
PAUSE_MAX = 3600.0

# Why a pooled connection was discarded (zt_relay_fallback_preconnect_discarded_total{reason}).
BYTES_WAITING = "bytes_waiting"  # the site wrote to it: a greeting or a stale answer
CLOSED = "closed"  # the site closed it (EOF waiting)
RESET = "reset"  # the site reset it
EXPIRED = "expired"  # unused for MAX_AGE, or the backend's name moved
SEND_FAILED = "send_failed"  # the first flight's send failed: closed since the check
CLOSED_UNANSWERED = "closed_unanswered"  # EOF or reset right after the first flight, not a byte back
DISCARD_REASONS = (BYTES_WAITING, CLOSED, RESET, EXPIRED, SEND_FAILED, CLOSED_UNANSWERED)
_WHY = {
    BYTES_WAITING: "the site wrote to it before any visitor: a greeting, or an answer to an idle connection",
    CLOSED: "the site closed it while it waited", RESET: "the site reset it while it waited",
    SEND_FAILED: "the site closed it just after the check; the visitor went on a fresh dial",
    CLOSED_UNANSWERED: "the site closed it without a byte right after the visitor's first flight; that flight went again on a fresh dial",
}
_LAST = {BYTES_WAITING: "had bytes waiting", CLOSED: "was closed by the site", RESET: "was reset by the site"}
#: The last two: the visitor's first flight went again on a fresh dial (``fallback.py``).


def condition(sock: socket.socket) -> str | None:
    """None if ``sock`` is as it was dialed (nothing to read, no EOF, no error; nothing is
    read), else why not. Bytes waiting are the site's answer to no one: a stale error before a
    close (a 408, "421 too many connections"), or a greeting, which a fresh dial gets again."""
    try:
        return BYTES_WAITING if sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) else CLOSED
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return RESET


def unread(sock) -> bool:
    """True if the site's kernel acknowledged none of what was sent on ``sock``, so the site
    cannot have read it (``tcpi_bytes_acked`` counts the SYN: 1). A site that closes before
    the bytes arrive acknowledges none (its kernel resets them); one that read them acknowledged
    them before its FIN or RST (Linux acks a connection's first data at once). Unknown (no
    ``tcpi_bytes_acked`` before Linux 4.1, the socket gone): False, never sent twice."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
    except (OSError, AttributeError):
        return False
    return len(info) >= _TCP_INFO_LEN and int.from_bytes(info[_BYTES_ACKED:_TCP_INFO_LEN], sys.byteorder) <= 1


def _established(sock: socket.socket) -> bool:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == _TCP_ESTABLISHED


class Preconnector:
    """Keeps ``Pool`` filled with connected, never-written sockets.

    ``address()``: where to dial now (None: not known yet); ``dial(address)``: a non-blocking
    socket with its connect started (raises OSError); ``may_dial()``: whether descriptors and
    the relay's state allow one more; ``on_failure(exc, delay)``: a dial failed;
    ``on_pause(why, seconds)``: the pool paused (``SPOKE_FIRST_LIMIT``)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int, address: Callable[[], tuple | None],
                 dial: Callable[[tuple], socket.socket], may_dial: Callable[[], bool],
                 on_failure: Callable[[OSError, float], None], on_pause: Callable[[str, float], None] | None = None) -> None:
        self.loop = loop
        self.pool = Pool(size)
        self.address = address
        self.dial = dial
        self.may_dial = may_dial
        self.on_failure = on_failure
        self.pending: dict[socket.socket, asyncio.TimerHandle] = {}  # dials in flight, their timeouts
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None  # when _timer fires
        self._fill_soon: asyncio.TimerHandle | None = None  # a refill after a visitor took one
        self.taken = 0  # pooled connections a visitor's first flight went on
        self.discarded: Counter[str] = Counter(dict.fromkeys(DISCARD_REASONS, 0))
        self.on_pause = on_pause
        self.running = True  # False while paused, and once closed
        self._unusable = 0  # discarded at take as bytes waiting, closed or reset, in a row
        self._pause_for = PAUSE_MIN  # the next pause
        self._resume: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self.pool)

    @property
    def paused(self) -> bool:
        """Pausing for the backend (``_pause``), until ``_resumed``."""
        return self._resume is not None

    @property
    def fds(self) -> int:
        """Descriptors held: pooled connections and dials in flight."""
        return len(self.pool) + len(self.pending)

    def take(self, address: tuple) -> socket.socket | None:
        """A connected socket to ``address`` that nothing was written to, else None. The
        replacement is dialed once the site has answered this visitor (``refill``), at the
        latest after ``REFILL_DELAY``: dialed at once, the site's accept of it came between
        the visitor's first flight and the site's answer (measured: no faster than no pool)."""
        pool, now = self.pool, self.loop.time()
        if pool.closed:
            return None
        pool.used(now)
        while True:
            sock, stale = pool.pop(address, now)
            if stale:
                self.discarded[EXPIRED] += len(stale)
                for old in stale:
                    old.close()
            if sock is None:
                break
            why = condition(sock)
            if why is None:
                self._unusable, self._pause_for = 0, PAUSE_MIN
                break
            sock.close()  # the backend wrote to it, closed or reset it while pooled
            self.discard(why)
            self._unusable += 1
            if self._unusable >= SPOKE_FIRST_LIMIT:
                self._pause(f"{self._unusable} pooled connections in a row were unusable before any visitor used them "
                            f"(the last {_LAST[why]}): the site speaks first (a greeting), answers or closes idle connections "
                            f"within {pool.max_age:g} s, or is restarting")
                return None
        if self._fill_soon is None and not pool.closed:
            self._fill_soon = self.loop.call_later(REFILL_DELAY, self.fill)
        return sock

    def refill(self) -> None:
        """Dials the replacements now (the site answered the visitor who took one: its
        accept of a new connection no longer delays that answer)."""
        if self._fill_soon is not None:
            self.fill()

    def backend_up(self) -> None:
        if self.pool.failures:
            self.pool.backend_up()
            self.fill()

    def fill(self) -> None:
        """Drops what expired, starts the dials due, sets the timer for what comes next."""
        if self._fill_soon is not None:
            self._fill_soon.cancel()
            self._fill_soon = None
        pool, now = self.pool, self.loop.time()
        address = self.address()
        stale = pool.expire(address, now)
        if stale:
            self.discarded[EXPIRED] += len(stale)
            for old in stale:
                old.close()
        while pool.dials_due(address, now) and self.may_dial():
            self._start(address)
        deadline = pool.deadline(now)
        if deadline != self._timer_at:  # mostly unchanged: a visitor takes the newest
            if self._timer is not None:
                self._timer.cancel()
            self._timer, self._timer_at = None, deadline
            if deadline is not None and not pool.closed:
                self._timer = self.loop.call_at(deadline, self._tick)

    def _tick(self) -> None:
        self._timer = self._timer_at = None
        self.fill()

    def _start(self, address: tuple) -> None:
        self.pool.dial_started()
        try:
            sock = self.dial(address)
        except OSError as exc:
            self._failed(exc)
            return
        if _established(sock):  # loopback, a veth: the handshake is over when connect() returns
            if not self.pool.dialed(sock, address, self.loop.time()):
                sock.close()
            return
        self.pending[sock] = self.loop.call_later(DIAL_TIMEOUT, self._timed_out, sock, address)
        self.loop.add_writer(sock.fileno(), self._connected, sock, address)

    def _connected(self, sock: socket.socket, address: tuple) -> None:
        self._forget(sock)
        error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            sock.close()
            self._failed(OSError(error, os.strerror(error)))
        elif not self.pool.dialed(sock, address, self.loop.time(), self.address()):
            sock.close()
        self.fill()

    def _timed_out(self, sock: socket.socket, address: tuple) -> None:
        self._forget(sock)
        sock.close()
        self._failed(TimeoutError(f"no connection within {DIAL_TIMEOUT:g} s"))
        self.fill()

    def _forget(self, sock: socket.socket) -> None:
        timer = self.pending.pop(sock)
        timer.cancel()
        self.loop.remove_writer(sock.fileno())

    def _failed(self, exc: OSError) -> None:
        delay = self.pool.dial_failed(self.loop.time())
        self.on_failure(exc, delay)

    def give_way(self) -> bool:
        """Closes one pooled connection (the oldest), else one dial in flight: a visitor
        needs the descriptor, memory or backend connection it holds. False: none left."""
        sock = self.pool.give_up()
        if sock is None and self.pending:
            sock = next(iter(self.pending))
            self._forget(sock)
            self.pool.dial_abandoned()
        if sock is None:
            return False
        sock.close()
        return True

    def discard(self, why: str) -> None:
        """Counts a pooled connection closed unused for ``why``; the first of each reason is
        logged (a site closing idle connections early, or speaking first, shows here once)."""
        self.discarded[why] += 1
        if self.discarded[why] == 1:
            log.info("fallback: a pooled backend connection was discarded (%s: %s); counted in "
                     "zt_relay_fallback_preconnect_discarded_total, logged once per reason", why, _WHY[why])

    def _pause(self, why: str) -> None:
        """Stops pooling for ``_pause_for`` seconds: the backend gains nothing from it now (``why``)."""
        seconds = self._pause_for
        self.close()
        self._pause_for = min(PAUSE_MAX, seconds * 2)  # if it pauses again before a visitor used one
        self._resume = self.loop.call_later(seconds, self._resumed)
        if self.on_pause is not None:
            self.on_pause(why, seconds)

    def _resumed(self) -> None:
        self._resume = None
        self.running, self._unusable = True, 0
        self.pool.reopen()  # owes nothing: the next visits refill it

    def close(self) -> None:
        """Closes every pooled connection and dial; no more are made."""
        self.running = False
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = self._timer_at = None
        if self._fill_soon is not None:
            self._fill_soon.cancel()
            self._fill_soon = None
        for sock in list(self.pending):
            self._forget(sock)
            self.pool.dial_abandoned()  # else still counted as dialing when a pause ends
            sock.close()
        for sock in self.pool.close():
            sock.close()
