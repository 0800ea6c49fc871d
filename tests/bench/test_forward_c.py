"""The C reference forwarder of `python -m tests.bench.fallback --c-reference` (forward.c),
against a site on loopback, in both modes (dial at accept, dial on the first bytes).

The relay review's two lows: a site's bytes sent just before its reset were dropped (the
pair was closed on EPOLLERR before reading them), and the first bytes waited an epoll round
(EPOLLOUT) after the dial although a loopback connect() is already established when it
returns, where the relay sends them in the same callback."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.bench import build, fallback

BOUND = 30.0  # generous: every wait below ends on its condition long before
SIOCOUTQ = 0x5411
SYSCALL = re.compile(r"(?:\d+\s+)?(\w+)\(")


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _wait(what: str, condition) -> None:
    deadline = time.monotonic() + BOUND
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


@pytest.fixture
def site():
    listener = socket.create_server(("127.0.0.1", 0))
    yield listener
    listener.close()


@pytest.mark.parametrize("mode", ["accept", "first"])
def test_a_sites_bytes_sent_just_before_its_reset_reach_the_client(site, mode):
    forward, port = fallback.start_c_forwarder(site.getsockname()[1], mode)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=BOUND) as client:
            client.sendall(b"hello")
            conn, _ = site.accept()
            conn.settimeout(BOUND)
            assert conn.recv(5) == b"hello"
            # The forwarder is stopped while the site answers and resets, so both are waiting
            # in its socket when it looks again (one event: EPOLLIN | EPOLLERR | EPOLLHUP).
            os.kill(forward.pid, signal.SIGSTOP)
            _wait("the forwarder stopped", lambda: _state(forward.pid) == "T")
            answer = bytes(range(256)) * 100  # 25.6 kB: within the forwarder's receive window
            conn.sendall(answer)
            _wait("the answer in the forwarder's socket", lambda: _outq(conn) == 0)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()  # a reset
            os.kill(forward.pid, signal.SIGCONT)
            got = b""
            while True:
                try:
                    chunk = client.recv(65536)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                got += chunk
            assert len(got) == len(answer) and got == answer, f"{len(got)} of {len(answer)} bytes"
    finally:
        os.kill(forward.pid, signal.SIGCONT)
        forward.kill()
        forward.wait()
        forward.stdout.close()


def _outq(sock: socket.socket) -> int:
    import fcntl

    return struct.unpack("i", fcntl.ioctl(sock.fileno(), SIOCOUTQ, b"\0\0\0\0"))[0]


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_the_first_bytes_are_sent_to_the_site_in_the_round_that_dialed_it(site, tmp_path):
    # Sequence, not speed: between reading the client's first bytes and the next epoll_wait,
    # the forwarder dials the site and tries the send (on loopback the connect is done by
    # then; a connect still under way answers EAGAIN and EPOLLOUT brings the bytes later).
    trace = tmp_path / "trace"
    forward = subprocess.Popen(["strace", "-f", "-o", str(trace), "-e", "trace=network,epoll_wait,epoll_pwait",
                                str(build.forward_binary()), str(site.getsockname()[1]), "first"],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    try:
        port = int(forward.stdout.readline())
        with socket.create_connection(("127.0.0.1", port), timeout=BOUND) as client:
            client.sendall(b"first-bytes")
            conn, _ = site.accept()
            with conn:
                conn.settimeout(BOUND)
                assert conn.recv(11) == b"first-bytes"
    finally:
        # The forwarder (strace's child) is killed; strace then exits.
        for child in Path(f"/proc/{forward.pid}/task/{forward.pid}/children").read_text().split():
            os.kill(int(child), signal.SIGKILL)
        forward.wait(timeout=BOUND)
        forward.stdout.close()
    lines = trace.read_text().splitlines()
    read = next(i for i, line in enumerate(lines) if "recvfrom(" in line and '"first-bytes"' in line)
    calls = [m.group(1) for m in (SYSCALL.match(line) for line in lines[read + 1:]) if m]
    # From the read of the first bytes: the dial, then the send, before any epoll_wait.
    waits = [i for i, name in enumerate(calls) if name in ("epoll_wait", "epoll_pwait")]
    until_wait = calls[:waits[0]] if waits else calls
    assert "connect" in until_wait and "sendto" in until_wait, lines[read:read + 12]


@pytest.mark.parametrize("mode", ["accept", "first"])
def test_both_directions_carry_every_byte_with_backpressure_and_half_close(site, mode):
    forward, port = fallback.start_c_forwarder(site.getsockname()[1], mode)
    up, down = os.urandom(3_000_000), os.urandom(5_000_000)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=BOUND) as client:
            sender = threading.Thread(target=lambda: (client.sendall(up), client.shutdown(socket.SHUT_WR)))
            sender.start()
            conn, _ = site.accept()
            with conn:
                conn.settimeout(BOUND)
                answer = threading.Thread(target=lambda: (conn.sendall(down), conn.shutdown(socket.SHUT_WR)))
                answer.start()
                got_up = _read_all(conn)
                got_down = _read_all(client)
                answer.join(BOUND)
            sender.join(BOUND)
        assert got_up == up and got_down == down
    finally:
        forward.kill()
        forward.wait()
        forward.stdout.close()


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_a_dial_the_site_refuses_closes_the_client():
    unused = socket.create_server(("127.0.0.1", 0))
    port_refused = unused.getsockname()[1]
    unused.close()
    forward, port = fallback.start_c_forwarder(port_refused, "first")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=BOUND) as client:
            client.sendall(b"hello")
            try:
                assert client.recv(10) == b""
            except ConnectionResetError:
                pass
    finally:
        forward.kill()
        forward.wait()
        forward.stdout.close()
