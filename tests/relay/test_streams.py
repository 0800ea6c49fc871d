"""``relay.streams`` and the backend dial on real loopback sockets (no relay process)."""

from __future__ import annotations

import asyncio
import gc
import socket
import time

import pytest
import uvloop

from relay import fallback, streams


class _Transport:
    """What ``streams.queued`` reads of a transport: its buffer and its socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str):
        return self.sock if name == "socket" else None


def _state(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]


def test_a_connection_the_peer_reset_has_nothing_left_to_wait_for():
    """A visitor closes right after its handshake; the site's last bytes (a TLS session
    ticket) then meet a reset. The kernel's SIOCOUTQ still counts them (it is a
    sequence-number difference), so a close waiting for them to be acknowledged used to
    hold the connection, its descriptor and a timer for the whole CLOSE_GRACE."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        ours, _ = listener.accept()
        with ours:
            client.close()  # unread data or not, a later segment to it is answered by a reset
            ours.send(b"t" * 574)
            deadline = time.monotonic() + 5
            while _state(ours) != 7 and time.monotonic() < deadline:  # TCP_CLOSE: reset seen
                time.sleep(0.001)
            assert _state(ours) == 7
            assert streams.queued(_Transport(ours)) == 0


def test_a_connection_still_open_counts_what_its_peer_has_not_acknowledged():
    """The control: a live peer that doesn't read keeps the bytes counted."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        ours, _ = listener.accept()
        with client, ours:
            ours.setblocking(False)
            sent = 0
            try:
                while True:
                    sent += ours.send(b"x" * 65536)
            except BlockingIOError:
                pass
            assert 0 < streams.queued(_Transport(ours)) <= sent


def test_configure_stream_sets_every_option_and_leaves_the_descriptor_open():
    with socket.create_server(("127.0.0.1", 0)) as listener, socket.create_connection(listener.getsockname()) as s:
        streams.configure_stream(s)
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == streams.TCP_USER_TIMEOUT_MS
        s.sendall(b"still open")  # the helper's own socket object did not close the fd


def test_to_a_backend_on_this_host_the_first_flight_leaves_with_the_connect():
    """The fallback's first flight (the ClientHello) is sent in the callback that read it:
    to loopback the TCP handshake is over when connect() returns, so no wait for
    writability and no transport come first. The socket is then configured as a client's."""
    first = b"\x16\x03\x01" + b"h" * 240
    with socket.create_server(("127.0.0.1", 0)) as listener:
        sock, sent = fallback._dial(listener.getsockname(), first)
        with sock:
            assert sent == len(first)
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == streams.TCP_USER_TIMEOUT_MS
            peer, _ = listener.accept()
            with peer:
                peer.settimeout(5)
                assert peer.recv(1024) == first


def test_a_dial_with_nothing_to_send_waits_for_writability():
    """A client that sent nothing (server-speaks-first protocols) has no bytes to probe the
    connection with: the caller waits for the connect to end."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        sock, sent = fallback._dial(listener.getsockname(), b"")
        sock.close()
    assert sent is None


def test_connections_accepted_from_the_relays_listener_have_every_stream_option():
    """Tunnels and site visitors get STREAM_OPTIONS from the listener (Linux copies them into
    each accepted socket), not from a syscall per option per connection."""
    from relay.config import Endpoint
    from relay.server import listen_socket

    listener = listen_socket(Endpoint("127.0.0.1", 0))
    try:
        listener.listen()
        with socket.create_connection(listener.getsockname()):
            accepted, _ = listener.accept()
            with accepted:
                for level, option, value in streams.STREAM_OPTIONS:
                    assert accepted.getsockopt(level, option) == value, option
    finally:
        listener.close()


@pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
def test_a_backend_socket_has_every_stream_option_once_its_transport_is_built(run):
    """_dial sets all but TCP_NODELAY, which the event loop's TCP transport sets (uvloop, as
    the relay runs, and asyncio alike): the backend gets what a client gets."""

    async def dial_and_build() -> dict[int, int]:
        loop = asyncio.get_running_loop()
        with socket.create_server(("127.0.0.1", 0)) as listener:
            sock, _ = fallback._dial(listener.getsockname(), b"x")
            transport, _ = await loop.create_connection(asyncio.Protocol, sock=sock)
            try:
                return {option: sock.getsockopt(level, option) for level, option, _ in streams.STREAM_OPTIONS}
            finally:
                transport.close()

    assert run(dial_and_build()) == {option: value for _, option, value in streams.STREAM_OPTIONS}


def test_a_finished_splice_is_freed_by_reference_counting_not_the_garbage_collector():
    """Each fallback connection used to leave a Splice, its two Sides, their transports and
    pseudo-sockets in reference cycles: freed only by the cyclic GC, whose young-generation
    passes then cost ~20 us per connection (measured in the relay: 54 gen0 passes, 21.6 ms,
    over 1,020 TLS handshakes; 8.3 ms without the cycles)."""
    from relay import splice as splice_mod

    async def splice_both_ways_then_close() -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        s = splice_mod.Splice(done.set_result)
        client, client_peer = socket.socketpair()
        backend, backend_peer = socket.socketpair()
        with client_peer, backend_peer:
            await loop.connect_accepted_socket(lambda: s.client, client)
            await loop.connect_accepted_socket(lambda: s.backend, backend)
            s.backend_connected()
            client_peer.sendall(b"request")
            client_peer.shutdown(socket.SHUT_WR)
            backend_peer.sendall(b"answer")
            backend_peer.shutdown(socket.SHUT_WR)
            assert await asyncio.wait_for(done, 5) is s
        del s, done

    gc.collect()
    gc.disable()
    try:
        uvloop.run(splice_both_ways_then_close())
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        left = [type(o).__name__ for o in gc.garbage if isinstance(o, (splice_mod.Splice, splice_mod.Side))]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert left == []
