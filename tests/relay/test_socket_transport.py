"""``relay.socket_transport`` on real loopback TCP sockets, under asyncio's loop and uvloop's."""

from __future__ import annotations

import asyncio
import fcntl
import os
import socket
import struct
import termios

import pytest
import uvloop

from relay.socket_transport import READ_SIZE, SocketTransport

RUNS = pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
BIG = 4 * 1024 * 1024  # far more than the kernel's buffers hold


class Recorder(asyncio.Protocol):
    def __init__(self) -> None:
        self.paused = self.resumed = 0
        self.data = bytearray()
        self.eof: asyncio.Future | None = None
        self.lost: asyncio.Future | None = None

    def connection_made(self, transport) -> None:
        loop = asyncio.get_running_loop()
        self.eof, self.lost = loop.create_future(), loop.create_future()

    def pause_writing(self) -> None:
        self.paused += 1

    def resume_writing(self) -> None:
        self.resumed += 1

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self) -> bool:
        self.eof.set_result(None)
        return True

    def connection_lost(self, exc) -> None:
        self.lost.set_result(exc)


def _pair() -> tuple[socket.socket, socket.socket]:
    """(ours, peer): a connected non-blocking TCP socket and its peer, small buffers."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        ours = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)
        ours.connect_ex(listener.getsockname())
        peer, _ = listener.accept()
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    peer.setblocking(False)
    return ours, peer


async def _read_all(peer: socket.socket, size: int | None = None) -> bytes:
    """What the peer reads until ``size`` bytes, else until EOF."""
    loop = asyncio.get_running_loop()
    got = bytearray()
    while size is None or len(got) < size:
        chunk = await asyncio.wait_for(loop.sock_recv(peer, 65536), 10)
        if not chunk:
            break
        got += chunk
    return bytes(got)


@RUNS
def test_what_the_kernel_does_not_take_is_queued_and_the_protocol_paused_until_the_peer_reads(run):
    async def main() -> None:
        ours, peer = _pair()
        proto = Recorder()
        tr = SocketTransport(asyncio.get_running_loop(), ours, proto, high=64 * 1024)
        payload = bytes(range(256)) * (BIG // 256)
        tr.write(payload)
        assert tr.get_write_buffer_size() > 64 * 1024 and proto.paused == 1
        assert await _read_all(peer, size=len(payload)) == payload  # in order, whole
        assert tr.get_write_buffer_size() == 0 and proto.resumed == 1
        tr.close()
        assert await asyncio.wait_for(proto.lost, 10) is None
        peer.close()

    run(main())


@RUNS
def test_an_eof_follows_what_is_queued(run):
    async def main() -> None:
        ours, peer = _pair()
        proto = Recorder()
        tr = SocketTransport(asyncio.get_running_loop(), ours, proto, high=BIG)
        tr.write(b"x" * BIG)
        tr.write_eof()
        assert tr.get_write_buffer_size() > 0  # the EOF waits for these
        assert await _read_all(peer) == b"x" * BIG  # then the EOF: the read ends
        peer.sendall(b"answer")  # the other way stays open
        peer.shutdown(socket.SHUT_WR)
        await asyncio.wait_for(proto.eof, 10)
        assert proto.data == b"answer"
        tr.close()
        await asyncio.wait_for(proto.lost, 10)
        peer.close()

    run(main())


@RUNS
def test_lowering_the_mark_below_what_is_queued_pauses_the_protocol_at_once(run):
    """A memory budget lowers every splice's mark (``Splice.set_write_limits``): a transport
    already holding more must stop the other side's reading then, not at its next write."""
    async def main() -> None:
        ours, peer = _pair()
        proto = Recorder()
        tr = SocketTransport(asyncio.get_running_loop(), ours, proto, high=BIG)
        try:
            tr.write(b"y" * (BIG // 4))
            assert proto.paused == 0 and tr.get_write_buffer_size() > 16 * 1024
            tr.set_write_buffer_limits(high=16 * 1024)
            assert proto.paused == 1
        finally:
            tr.abort()
            peer.close()
        await asyncio.wait_for(proto.lost, 10)

    run(main())


@RUNS
def test_a_peer_that_resets_ends_it_with_the_error_and_the_socket_closed(run):
    async def main() -> None:
        ours, peer = _pair()
        proto = Recorder()
        tr = SocketTransport(asyncio.get_running_loop(), ours, proto)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()
        exc = await asyncio.wait_for(proto.lost, 10)
        assert isinstance(exc, ConnectionResetError)
        assert tr.is_closing() and ours.fileno() == -1

    run(main())


def _loaded_pair(at_least: int) -> tuple[socket.socket, socket.socket]:
    """(ours, peer) with at least ``at_least`` bytes from the peer already in our receive queue."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        ours = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * at_least)
        ours.connect_ex(listener.getsockname())
        peer, _ = listener.accept()
    peer.setblocking(False)
    chunk = b"z" * 65536
    for _ in range(10_000):  # bounded: the kernel moves loopback bytes at once
        try:
            peer.send(chunk)
        except BlockingIOError:
            pass
        queued = struct.unpack("i", fcntl.ioctl(ours.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
        if queued >= at_least:
            return ours, peer
    raise AssertionError(f"only {queued} bytes queued")


@RUNS
def test_a_protocol_that_pauses_reading_in_data_received_gets_no_second_read(run):
    """The splice pauses the site's reading once the visitor's buffer is over its mark: the
    memory budget counts one read past the mark (``Relay.site_worst``), not a readiness
    callback's worth of reads (32 of them)."""
    async def main() -> None:
        ours, peer = _loaded_pair(2 * READ_SIZE)  # a second full read, were the pause ignored
        loop = asyncio.get_running_loop()
        first = loop.create_future()

        class Pauser(Recorder):
            def data_received(self, data: bytes) -> None:
                super().data_received(data)
                self.transport.pause_reading()
                if not first.done():
                    first.set_result(None)

            def connection_made(self, transport) -> None:
                super().connection_made(transport)
                self.transport = transport

        proto = Pauser()
        tr = SocketTransport(loop, ours, proto)
        try:
            await asyncio.wait_for(first, 10)  # the readiness callback that read it is over
            assert len(proto.data) == READ_SIZE and not tr.is_reading()
        finally:
            tr.abort()
            peer.close()
        await asyncio.wait_for(proto.lost, 10)

    run(main())


@RUNS
def test_reading_resumed_after_the_eof_reports_no_second_eof(run):
    """As asyncio's and uvloop's transports: after ``eof_received`` nothing more is read, even
    if the protocol resumes reading (a resume from the other side's drained buffer)."""
    async def main() -> None:
        ours, peer = _pair()
        proto = Recorder()
        eofs = []
        proto.eof_received = lambda: eofs.append(1) or proto.eof.set_result(None) or True
        tr = SocketTransport(asyncio.get_running_loop(), ours, proto)
        try:
            peer.shutdown(socket.SHUT_WR)
            await asyncio.wait_for(proto.eof, 10)
            tr.resume_reading()
            assert not tr.is_reading()
            tr.write(b"after")  # the other way stays open
            assert await _read_all(peer, 5) == b"after"
            assert eofs == [1]
        finally:
            tr.abort()
            peer.close()
        await asyncio.wait_for(proto.lost, 10)

    run(main())


@RUNS
def test_an_abort_inside_resume_writing_leaves_a_reused_descriptor_alone(run):
    """The descriptor is closed by the abort; the socket that gets its number next (here,
    made in the same callback) keeps its watch: no remove_writer after the close."""
    async def main() -> None:
        ours, peer = _pair()
        loop = asyncio.get_running_loop()
        fd = ours.fileno()
        reused = loop.create_future()
        pair = socket.socketpair()
        dup = None

        class Aborter(Recorder):
            def resume_writing(self) -> None:
                nonlocal dup
                super().resume_writing()
                tr.abort()
                dup = os.dup2(pair[0].fileno(), fd)  # the number is reused at once, as by an accept
                loop.add_writer(fd, lambda: reused.done() or reused.set_result(None))  # writable at once

        proto = Aborter()
        tr = SocketTransport(loop, ours, proto, high=64 * 1024)
        reader = loop.create_task(_read_all(peer))
        try:
            tr.write(b"w" * BIG)
            assert proto.paused == 1
            await asyncio.wait_for(proto.lost, 10)
            await asyncio.wait_for(reused, 10)  # its watch was not removed by the transport
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            if dup is not None:
                loop.remove_writer(dup)
                os.close(dup)
            for s in pair:
                s.close()
            peer.close()

    run(main())


class Raising(Recorder):
    def data_received(self, data: bytes) -> None:
        raise ValueError("a bug in the protocol")


@RUNS
def test_a_protocol_callback_that_raises_aborts_the_connection_and_reports_to_the_loop(run):
    """As asyncio's and uvloop's transports do: the error reaches the loop's exception handler,
    the connection is aborted (its descriptor closed, the peer sees the end) and the protocol's
    connection_lost gets the error, instead of a connection left open with nobody reading it."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        reported = []
        loop.set_exception_handler(lambda _, context: reported.append(context))
        ours, peer = _pair()
        proto = Raising()
        tr = SocketTransport(loop, ours, proto)
        peer.send(b"x")
        exc = await asyncio.wait_for(proto.lost, 10)
        assert isinstance(exc, ValueError), exc
        assert [type(c.get("exception")) for c in reported] == [ValueError], reported
        assert reported[0]["transport"] is tr and tr.is_closing() and ours.fileno() == -1
        assert await _read_all(peer) == b""  # the peer sees the end (EOF or reset)
        peer.close()

    run(main())
