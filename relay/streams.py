"""Client-facing TCP connections (tunnels and both sides of a fallback splice): their
socket options, and a close that a peer which stopped reading can't hold open.

A plain ``transport.close()`` waits for the transport's buffer to flush, forever if the
peer never reads (a zero window, acknowledged probes). And once the descriptor is closed,
whatever the kernel still queues lives on as an orphan outside every cap of the relay.
``close`` therefore keeps the descriptor until everything is acknowledged (then a normal
close) or until ``CLOSE_GRACE`` passes without that, then resets it with a zero linger,
which drops both our buffer and the kernel's send queue.
"""

from __future__ import annotations

import asyncio
import fcntl
import socket
import struct
import termios

#: Seconds a closing connection may take to flush what is queued toward its peer before it
#: is reset (a peer that stopped reading would otherwise hold it forever).
CLOSE_GRACE = 2.0
#: The kernel gives up on a connection whose sent data stays unacknowledged this long
#: (milliseconds; also bounds zero-window probing of a client that stopped reading).
TCP_USER_TIMEOUT_MS = 30_000
#: First and longest wait between two looks at a closing connection's queue: a flushed
#: connection closes within milliseconds (its FIN is not held back by the grace), a stuck
#: one costs a few timer callbacks.
_FIRST_CHECK = 0.01
_MAX_CHECK = 0.5

_LINGER_ZERO = struct.pack("ii", 1, 0)
#: tcp_info.tcpi_state of a connection that is over (reset, or timed out by the kernel).
_TCP_CLOSE = 7


#: What every client-facing stream gets: TCP_NODELAY (each record is a packet: don't batch
#: behind Nagle), keepalive (notice dead clients behind NATs without waiting for the idle
#: timeout) and TCP_USER_TIMEOUT (the kernel gives up on a client that acknowledges
#: nothing, zero window included).
STREAM_OPTIONS = (
    (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
    (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 60),
    (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 15),
    (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 4),
    (socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, TCP_USER_TIMEOUT_MS),
)


def set_options(sock: socket.socket, options=STREAM_OPTIONS) -> None:
    """Sets ``options`` on a real socket object (one syscall each)."""
    for level, option, value in options:
        sock.setsockopt(level, option, value)


def configure_listener(sock: socket.socket) -> None:
    """``STREAM_OPTIONS`` on a listening socket: Linux copies them into every connection it
    accepts, so tunnels and site visitors have them without a syscall per connection."""
    set_options(sock)


def configure_stream(sock, send_buffer: int | None = None) -> None:
    """``STREAM_OPTIONS`` on a connected socket (one not accepted from a configured
    listener); ``send_buffer``: SO_SNDBUF (the kernel holds twice that), else autotuned.

    ``sock`` may be a transport's pseudo-socket, whose every call builds a socket object
    (a getsockname syscall each): one object is built here for all the options."""
    s = socket.socket(sock.family, sock.type, sock.proto, sock.fileno())
    try:
        set_options(s)
        if send_buffer is not None:
            set_send_buffer(s, send_buffer)
    finally:
        s.detach()  # the descriptor stays the transport's


def set_send_buffer(sock, size: int) -> None:
    """A fixed SO_SNDBUF: no autotuning up to tcp_wmem's 4 MiB (the kernel holds twice)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


def set_receive_buffer(sock, size: int) -> None:
    """A fixed SO_RCVBUF: no autotuning up to tcp_rmem's max (the kernel holds twice)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def _socket(transport: asyncio.Transport, sock: socket.socket | None):
    """``sock`` if given (the connection's own socket object: a call on it is one syscall),
    else the transport's, a pseudo-socket with uvloop: one getsockname to build it, and one
    more per option set or read through it (it makes a socket object per call)."""
    return sock if sock is not None else transport.get_extra_info("socket")


def queued(transport: asyncio.Transport, sock: socket.socket | None = None) -> int:
    """Bytes not yet acknowledged by the peer: the transport's buffer and the kernel's.
    0 once the connection is closed (the peer reset it): nothing more will be. ``sock``:
    the connection's socket object, if the caller has it (see ``_socket``)."""
    left = transport.get_write_buffer_size()
    sock = _socket(transport, sock)
    if sock is not None:
        try:
            unacked = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
            if left or unacked:
                # SIOCOUTQ is a sequence-number difference: after a reset it keeps
                # counting what will never be acknowledged.
                if sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == _TCP_CLOSE:
                    return 0
            left += unacked
        except (OSError, ValueError):
            pass  # already closed under us: nothing left to wait for
    return left


def is_over(transport: asyncio.Transport, sock: socket.socket | None = None) -> bool:
    """True if the peer has reset the connection (or the kernel gave up on it) although
    the transport has not noticed yet: a transport whose reading is paused sees a reset
    only at its next read or write. One getsockopt; for per-connection checks."""
    sock = _socket(transport, sock)
    if sock is None:
        return False
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == _TCP_CLOSE
    except (OSError, ValueError):
        return True  # closed under us


def reset(transport: asyncio.Transport, sock: socket.socket | None = None) -> None:
    """Aborts with a zero linger: a reset, and the kernel's send queue is dropped too
    (instead of an orphan probing a zero window)."""
    sock = _socket(transport, sock)
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
        except (OSError, ValueError):
            pass
    transport.abort()


class Closing:
    """A close in progress (see ``close``); ``cancel`` it once the connection is lost."""

    __slots__ = ("transport", "sock", "loop", "deadline", "patient", "left", "wait", "handle")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop, left: int, patient: bool,
                 sock: socket.socket | None = None) -> None:
        self.transport = transport
        self.sock = sock
        self.loop = loop
        self.deadline = loop.time() + CLOSE_GRACE
        self.patient = patient
        self.left = left
        self.wait = _FIRST_CHECK
        self.handle = loop.call_later(self.wait, self._check)

    def _check(self) -> None:
        transport = self.transport
        left = queued(transport, self.sock)
        if not left:
            transport.close()
            return
        now = self.loop.time()
        if self.patient and left < self.left:
            self.deadline = now + CLOSE_GRACE  # the peer is still reading: let it finish
        self.left = left
        if now >= self.deadline:
            reset(transport, self.sock)
            return
        self.wait = min(self.wait * 2, _MAX_CHECK, self.deadline - now)
        self.handle = self.loop.call_later(self.wait, self._check)

    def hurry(self) -> None:
        """No more waiting for progress: reset at the deadline (at most ``CLOSE_GRACE`` from now)."""
        self.patient = False

    def cancel(self) -> None:
        self.handle.cancel()


def close(transport: asyncio.Transport, loop: asyncio.AbstractEventLoop, patient: bool = False,
          sock: socket.socket | None = None) -> Closing | None:
    """Closes ``transport`` once what is queued toward the peer is acknowledged, or resets
    it after ``CLOSE_GRACE`` seconds (``patient``: seconds without progress) if it is not.
    Stops reading meanwhile. Works on a transport that is already closing, too. ``sock``:
    its socket object, if the caller has it. Returns the close in progress (None: closed at once)."""
    left = queued(transport, sock)
    if not left:
        transport.close()
        return None
    if not transport.is_closing():
        transport.pause_reading()
    return Closing(transport, loop, left, patient, sock)
