"""Two TCP connections joined byte for byte: a site visitor and the fallback backend.

Built on ``asyncio.Protocol`` callbacks, not streams: each read is written straight to the
other transport (uvloop sends at once while nothing is queued), with no task or queue per
connection.

- **Backpressure, both ways.** Each transport's write buffer has a high-water mark of
  ``BUFFER_LIMIT``; when it is reached the transport calls ``pause_writing`` and we stop
  reading the *other* side until it drains. So per direction the relay's own buffer
  holds about ``BUFFER_LIMIT`` plus one read (up to 256 KiB with uvloop), besides the
  kernel's socket buffers; TCP flow control stops the sender.
- **Half-close, both ways.** An EOF from one side becomes ``write_eof`` on the other (after
  what is queued), and the connection stays open the other way: a client may send its
  request, shut down writing and still read the answer, and a server may close first while
  the client keeps sending. Both EOFs, or a reset on either side, close both.
- **Closing never waits on a peer.** Each side closes with ``streams.close``: once what is
  queued toward it is acknowledged, or with a reset when it stops reading (after
  ``CLOSE_GRACE`` without progress; the idle timeout and shutdown don't wait for progress).
- Counting is a plain integer per direction and an activity flag that the router's idle
  tick reads (``fallback.py``).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from relay import streams

#: High-water mark of each direction's write buffer (bytes). Big enough that a fast
#: download never waits on it, small enough that 10,000 stalled connections stay bounded.
BUFFER_LIMIT = 512 * 1024
#: What one read may add past that mark (uvloop reads up to 256 KiB at a time).
READ_SIZE = 256 * 1024

#: Close reasons (label values of zt_relay_fallback_closed_total).
CLOSED = "closed"
IDLE_TIMEOUT = "idle_timeout"
SHUTDOWN = "shutdown"
CLIENT_RESET = "client_reset"
BACKEND_RESET = "backend_reset"
EVICTED = "evicted"  # its address held more than its share of a full fallback cap
CLOSE_REASONS = (CLOSED, IDLE_TIMEOUT, SHUTDOWN, CLIENT_RESET, BACKEND_RESET, EVICTED)


class Side(asyncio.Protocol):
    """One end of a splice: what it reads is written to ``other``'s transport."""

    __slots__ = ("splice", "name", "transport", "sock", "other", "received", "eof", "lost", "closed", "closer")

    def __init__(self, splice: Splice, name: str) -> None:
        self.splice = splice
        self.name = name
        self.transport: asyncio.Transport | None = None
        #: the connection's socket object when the relay made it (the backend's): checks and
        #: options at the close go through it, not through the transport's pseudo-socket
        self.sock: socket.socket | None = None
        self.other: Side | None = None
        self.received = 0  # bytes read from this side (= written to the other)
        self.eof = False
        self.lost = False
        self.closed = False  # close (or reset) under way
        self.closer: streams.Closing | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=self.splice.high)

    def data_received(self, data: bytes) -> None:
        splice = self.splice
        splice.active = True
        self.received += len(data)
        self.other.transport.write(data)
        if splice.retry is not None:  # more than the first flight went, or the site answered
            splice.retry = None
        if splice.on_reply is not None and self is splice.backend:  # the site's first answer
            on_reply, splice.on_reply = splice.on_reply, None
            on_reply()

    def eof_received(self) -> bool:
        if self.splice.retry is not None and self is self.splice.backend and not self.closed and self.splice.retry(self):
            return True  # a pooled connection closed unanswered, unread: a fresh one takes its place
        self.eof = True
        other = self.other
        if other.eof:
            self.splice.close(CLOSED)
        elif other.transport is not None and not other.transport.is_closing():
            other.transport.write_eof()  # sent once what is queued has been
        return True  # keep our writing half open for the other side's answer

    # Our write buffer is over the mark: stop reading the side that fills it.
    def pause_writing(self) -> None:
        other = self.other.transport
        if other is not None and not self.other.eof:
            other.pause_reading()

    def resume_writing(self) -> None:
        other = self.other.transport
        # Not while a close is under way: its transport is not closing yet in the grace
        # (``streams.close`` paused its reading): the grace is for what is queued, not for more.
        if other is not None and not self.other.eof and not self.other.closed and not other.is_closing():
            other.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.closer is not None:
            self.closer.cancel()
            self.closer = None
        if self.splice.retry is not None and self is self.splice.backend and not self.closed and self.splice.retry(self):
            return  # reset unanswered, unread, as above
        self.splice.side_lost(self, exc)


class Splice:
    """A client connection and its backend connection; ``on_done`` runs once both are gone."""

    __slots__ = ("client", "backend", "active", "idle", "reason", "connecting", "on_done", "key", "high", "on_reply", "retry",
                 "loop")

    def __init__(self, on_done: Callable[[Splice], None], high: int = BUFFER_LIMIT,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        # the router's loop: asyncio.get_running_loop() checks the pid (a getpid) per call
        self.loop = loop or asyncio.get_running_loop()
        self.high = high  # each direction's write-buffer mark (less under a memory budget)
        self.client = Side(self, "client")
        self.backend = Side(self, "backend")
        self.client.other = self.backend
        self.backend.other = self.client
        self.active = True
        self.idle = 0.0
        self.reason: str | None = None
        self.connecting = True  # the backend connection is being opened
        self.on_done = on_done
        self.key: str | None = None  # the client's per-IP key, while it counts against its share
        self.on_reply: Callable[[], None] | None = None  # runs once, after the backend's first bytes went on
        #: a pooled backend connection (``preconnect.py``) that had only the first flight: run
        #: if it closes or resets before a byte either way more; True: a fresh connection
        #: replaces it, instead of the usual end
        self.retry: Callable[[Side], bool] | None = None

    def replace_backend(self) -> Side:
        """A new backend side, for a new connection (``retry``); the old one is forgotten."""
        old, new = self.backend, Side(self, "backend")
        if old.transport is not None and not old.lost:
            old.transport.set_protocol(asyncio.Protocol())  # nothing of it reaches the splice any more
            old.transport.abort()
        old.splice = old.other = old.transport = old.sock = None
        self.backend, new.other, self.client.other = new, self.client, new
        self.connecting = True
        return new

    def set_write_limits(self, high: int) -> None:
        self.high = high
        for side in (self.client, self.backend):
            if side.transport is not None and not side.transport.is_closing():
                side.transport.set_write_buffer_limits(high=high)

    def buffered(self) -> int:
        return sum(side.transport.get_write_buffer_size() for side in (self.client, self.backend)
                   if side.transport is not None)

    @property
    def to_backend(self) -> int:
        return self.client.received

    @property
    def to_client(self) -> int:
        return self.backend.received

    def close(self, reason: str) -> None:
        """Closes both sides once (queued bytes get ``streams.close``'s grace); the first
        reason sticks. A natural end (``CLOSED``) waits while the peer makes progress; any
        other close (the idle timeout, an eviction, the shutdown) ends that wait too, or a
        peer reading a few bytes a second would hold a finished connection past all of them."""
        if self.reason is None:
            self.reason = reason
        patient = reason == CLOSED
        for side in (self.client, self.backend):
            if side.transport is None or side.lost:
                continue
            if not side.closed:
                side.closed = True
                side.closer = streams.close(side.transport, self.loop, patient, side.sock)
            elif not patient and side.closer is not None:
                side.closer.hurry()

    def abort(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        for side in (self.client, self.backend):
            if side.transport is not None and not side.lost:
                side.closed = True
                if side.closer is not None:
                    side.closer.cancel()
                    side.closer = None
                streams.reset(side.transport, side.sock)

    def side_lost(self, side: Side, exc: Exception | None) -> None:
        if exc is not None:
            self.abort(CLIENT_RESET if side is self.client else BACKEND_RESET)
        else:
            self.close(CLOSED)
        self._maybe_done()

    def backend_failed(self) -> None:
        """The backend connection could not be opened: the client just sees a close."""
        self.connecting = False
        self.close(CLOSED)
        self._maybe_done()

    def backend_connected(self) -> None:
        self.connecting = False
        self._maybe_done()

    def _maybe_done(self) -> None:
        if self.connecting or not self.client.lost:
            return
        if self.backend.transport is not None and not self.backend.lost:
            return
        on_done, self.on_done = self.on_done, None
        self.retry = None  # its closure holds the splice
        if on_done is not None:
            on_done(self)
            # Both sides are gone: no callback comes any more. Without the cycles (splice <->
            # side, side <-> side, side <-> transport) reference counting frees the lot now,
            # instead of the garbage collector's younger generations scanning it per connection.
            for side in (self.client, self.backend):
                side.splice = side.other = side.transport = side.sock = None
