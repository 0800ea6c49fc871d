"""A transport for a TCP socket the relay connected itself, run by the loop's readiness
callbacks (``add_reader``/``add_writer``), as ``tests/bench/forward.c`` runs its sockets.

The fallback's backend connection is one: the relay dials it and, to a site on the same
host, sends the visitor's first flight in the very callback that read it (``fallback.py``).
Handing that socket to ``loop.create_connection(sock=)`` cost a task, two loop turns and
uvloop's transport set-up (two ``FIONBIO``, ``TCP_NODELAY``, ``getsockname`` and
``getpeername``) between the send and the first read of the site's answer, and 20-50 us of
CPU per connection. Here the socket is read as soon as the callback that sent the first flight
returns.

It keeps what the splice relies on from a transport (``splice.py``): writes that go at once
while nothing is queued, else are queued with ``pause_writing``/``resume_writing`` at the
marks; ``write_eof`` once the queue is sent; ``close`` once it is sent, ``abort`` at once;
``eof_received`` and ``connection_lost(exc)`` (the error that ended it, None for a close),
the latter always from a later loop callback, as transports do. The socket options are the
caller's (``fallback.BACKEND_OPTIONS``, ``TCP_NODELAY`` included).
"""

from __future__ import annotations

import asyncio
import socket

#: Largest read. uvloop's is 256 KB; with reads that big a download cost ~15 % more relay
#: CPU here (each read's bytes object came from fresh pages: glibc grew and trimmed its heap
#: around every one, 64 brk calls per 150 MB); 64 KiB ones stay in the heap.
READ_SIZE = 64 * 1024
#: Reads in one readiness callback at most, while each fills the buffer (as libuv's 32).
_READS_PER_TURN = 32

# One receive buffer per process (one loop, callbacks never nested): each read is copied out
# of it into a bytes object of its own size.
_BUFFER = bytearray(READ_SIZE)
_VIEW = memoryview(_BUFFER)


class SocketTransport(asyncio.Transport):
    """A connected non-blocking TCP socket as a transport for ``protocol``, which gets
    ``connection_made`` now; reading starts at once."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, protocol: asyncio.Protocol,
                 high: int = 64 * 1024) -> None:
        super().__init__()
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._protocol = protocol
        self._queue = bytearray()  # what the kernel did not take yet
        self._high = high
        self._low = high // 4
        self._paused = False  # pause_writing() was called
        self._reading = False
        self._read_eof = False  # the peer's EOF was read: nothing more to read, ever
        self._writing = False  # add_writer is on
        self._eof = False  # write_eof() asked for
        self._closing = False
        self._closed = False
        protocol.connection_made(self)
        if not self._closing:
            self.resume_reading()

    # -- reading ---------------------------------------------------------------------------------

    def _read_ready(self) -> None:
        # A full read may have more behind it: read on (as libuv does, up to a bound) while
        # reading is on, rather than one read per loop turn.
        for _ in range(_READS_PER_TURN):
            try:
                n = self._sock.recv_into(_BUFFER)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._fail(exc)
                return
            if not n:
                break
            try:
                self._protocol.data_received(_VIEW[:n].tobytes())
            except Exception as exc:  # noqa: BLE001 - the protocol's bug: reported, never a connection left open
                self._protocol_failed(exc)
                return
            if n < READ_SIZE or not self._reading:
                return
        else:
            return
        self._read_eof = True
        self.pause_reading()  # EOF: nothing more to read (a resume must not report it again)
        try:
            keep_open = self._protocol.eof_received()
        except Exception as exc:  # noqa: BLE001
            self._protocol_failed(exc)
            return
        if not keep_open:
            self.close()

    def pause_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)

    def resume_reading(self) -> None:
        if not self._reading and not self._closing and not self._read_eof:
            self._reading = True
            self._loop.add_reader(self._fd, self._read_ready)

    def is_reading(self) -> bool:
        return self._reading

    # -- writing ---------------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data or self._closing or self._eof:
            return  # as a closed transport: nothing goes after a close or an EOF
        if not self._queue:
            try:
                sent = self._sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._fail(exc)
                return
            if sent == len(data):
                return
            data = memoryview(data)[sent:]
        self._queue += data
        if not self._writing:
            self._writing = True
            self._loop.add_writer(self._fd, self._write_ready)
        if not self._paused and len(self._queue) > self._high:
            self._paused = True
            self._protocol.pause_writing()

    def _write_ready(self) -> None:
        try:
            sent = self._sock.send(self._queue)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fail(exc)
            return
        del self._queue[:sent]
        if self._paused and len(self._queue) <= self._low:
            self._paused = False
            try:
                self._protocol.resume_writing()
            except Exception as exc:  # noqa: BLE001
                self._protocol_failed(exc)
            if self._closed:  # it aborted: the descriptor is closed, its number maybe reused
                return
        if self._queue:
            return
        self._writing = False
        self._loop.remove_writer(self._fd)
        if self._eof:
            self._shutdown()
        if self._closing:
            self._finish(None)

    def write_eof(self) -> None:
        if self._eof or self._closing:
            return
        self._eof = True
        if not self._queue:
            self._shutdown()

    def _shutdown(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # reset meanwhile: the next read reports it

    def can_write_eof(self) -> bool:
        return True

    def get_write_buffer_size(self) -> int:
        return len(self._queue)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """As transports do: a mark lowered below what is queued pauses the protocol now."""
        if high is not None:
            self._high = high
        self._low = low if low is not None else self._high // 4
        if not self._paused and len(self._queue) > self._high:
            self._paused = True
            self._protocol.pause_writing()

    # -- ending ----------------------------------------------------------------------------------

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Closes once the queue is sent (stops reading now)."""
        if self._closing:
            return
        self._closing = True
        self.pause_reading()
        if not self._queue:
            self._finish(None)

    def abort(self) -> None:
        self._closing = True
        self._finish(None)

    def _protocol_failed(self, exc: Exception) -> None:
        """A protocol callback raised: as asyncio's and uvloop's transports, the loop's
        exception handler gets it and the connection is aborted (``connection_lost(exc)``)."""
        self._loop.call_exception_handler({
            "message": "protocol callback failed on a fallback backend connection",
            "exception": exc, "transport": self, "protocol": self._protocol})
        self._fail(exc)

    def _fail(self, exc: Exception) -> None:
        self._closing = True
        self._finish(exc)

    def _finish(self, exc: Exception | None) -> None:
        if self._closed:
            return
        self._closed = True
        self.pause_reading()
        if self._writing:
            self._writing = False
            self._loop.remove_writer(self._fd)
        self._queue = bytearray()
        self._sock.close()  # after the loop forgot the descriptor: its number may be reused
        self._loop.call_soon(self._protocol.connection_lost, exc)

    # -- the rest of the interface ----------------------------------------------------------------

    def get_extra_info(self, name: str, default=None):
        if name == "socket":
            return self._sock
        try:
            if name == "peername":
                return self._sock.getpeername()
            if name == "sockname":
                return self._sock.getsockname()
        except OSError:
            pass
        return default

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol
