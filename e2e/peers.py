"""Traffic peers for relay e2e tests: a UDP "root" and framed tunnel clients.

They run inside test-host namespaces as ``python -m e2e.peers MODE ...``, framing with
``relay.protocol`` (whose bytes the unit tests pin down) rather than a copy of it::

  echo HOST PORT                     UDP echo "root": answers b"echo:" + data; prints "listening"
  tunnel RELAY PORT ROOT ROOT_PORT   one tunnel; per stdin line, that text as one packet, and
                                     prints "HOST PORT REPLY" (or "closed" once the relay ended it)
  probe RELAY PORT ROOT ROOT_PORT    a fresh tunnel per round trip until stdin closes; prints
                                     JSON {"ok": N, "failed": [...]} (every new client must pass)
  load RELAY PORT ROOT ROOT_PORT     16 packets in flight on one tunnel until stdin closes;
                                     prints how many round-tripped
  steady RELAY PORT ROOT ROOT_PORT [N]  N (4) numbered packets in flight until stdin closes; prints JSON
                                     {"sent": N, "received": M, "missing": [numbers], ...}

``udp_root`` and ``relay_hosts`` are module-scoped fixtures for test modules that import them.
"""

from __future__ import annotations

import json
import select
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from relay import protocol

ROOT_PORT = 9993
REPO = Path(__file__).resolve().parent.parent
#: ZeroTier packets are at least 16 bytes; the relay drops shorter ones, so pad.
PAD = "|" + "." * 16
#: Seconds a ``steady`` reply may take before it is listed as missing (far beyond any
#: queueing delay under the tests' load: a reply that late is lost, not slow).
REPLY_WAIT = 10.0


def _stdin_closed() -> threading.Event:
    closed = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), closed.set()), daemon=True).start()
    return closed


def _connect(relay: str, port: int, timeout: float) -> tuple[socket.socket, protocol.RecordReader, list[bytes]]:
    sock = socket.create_connection((relay, port), timeout=timeout)
    records: list[bytes] = []
    reader = protocol.RecordReader(lambda data, start, end: records.append(data[start:end]))
    sock.sendall(protocol.encode_hello(1, 14, 1))
    return sock, reader, records


def _receive(sock: socket.socket, reader: protocol.RecordReader, records: list[bytes], count: int) -> None:
    while len(records) < count:
        data = sock.recv(65536)
        if not data:
            raise EOFError("relay closed the tunnel")
        reader.feed(data)


#: The echo root's receive buffer. One socket takes every tunnel's datagrams; with the
#: default 208 KiB only about 166 small datagrams fit (truesize ~1.3 KiB each), fewer
#: than 16 tunnels x 16 in flight, so a root descheduled for a moment dropped some
#: (UDP RcvbufErrors). 4 MiB holds about 3,000.
ECHO_RCVBUF = 4 << 20
#: Linux's SO_RCVBUFFORCE (not in Python's socket module).
SO_RCVBUFFORCE = 33


def echo(host: str, port: str) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    # FORCE: past net.core.rmem_max (the test host's namespace, as root)
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, ECHO_RCVBUF)
    sock.bind((host, int(port)))
    print("listening", flush=True)
    while True:
        data, peer = sock.recvfrom(65535)
        sock.sendto(b"echo:" + data, peer)


def tunnel(relay: str, port: str, root: str, root_port: str) -> None:
    sock, reader, records = _connect(relay, int(port), 10)
    print("connected", flush=True)
    for line in sys.stdin:
        try:
            sock.sendall(protocol.encode_packet(root, int(root_port), (line.strip() + PAD).encode()))
            _receive(sock, reader, records, 1)
        except (OSError, EOFError):
            print("closed", flush=True)
            return
        payload = records.pop(0)
        host, source_port, offset = protocol.decode_address(payload)
        print(host, source_port, _text(payload, offset), flush=True)


def _text(payload: bytes, offset: int) -> str:
    return payload[offset:].decode().split("|")[0]


def probe(relay: str, port: str, root: str, root_port: str) -> None:
    stop = _stdin_closed()
    ok, failed, n = 0, [], 0
    while not stop.is_set():
        n += 1
        text = f"probe-{n:06d}"
        try:
            sock, reader, records = _connect(relay, int(port), 5)
            with sock:
                sock.sendall(protocol.encode_packet(root, int(root_port), (text + PAD).encode()))
                _receive(sock, reader, records, 1)
            reply = _text(records[0], protocol.decode_address(records[0])[2])
            if reply != "echo:" + text:
                raise ValueError(repr(reply))
            ok += 1
        except Exception as exc:
            failed.append(f"{n}: {exc!r}")
        time.sleep(0.2)
    print(json.dumps({"ok": ok, "failed": failed}), flush=True)


def load(relay: str, port: str, root: str, root_port: str) -> None:
    """Bursts of 16 packets, each sent once the last one's replies came, until stdin closes:
    CPU for the autoscaler to see, not a check of delivery. A burst whose replies do not all
    come within 2 s is given up and the next one sent (UDP: a datagram may be lost when the
    machine's 2 cores are saturated, which stopped the load, and the test, at once). Prints
    the replies received and the bursts given up."""
    stop = _stdin_closed()
    sock, reader, records = _connect(relay, int(port), 10)
    sock.settimeout(2)
    burst = protocol.encode_packet(root, int(root_port), b"x" * 200) * 16
    received = given_up = 0
    while not stop.is_set():
        sock.sendall(burst)
        try:
            _receive(sock, reader, records, 16)
        except TimeoutError:
            given_up += 1
        received += len(records)
        records.clear()
    print(received, given_up, flush=True)


def steady(relay: str, port: str, root: str, root_port: str, in_flight: str = "4") -> None:
    """Strict load: ``in_flight`` numbered packets at a time on one tunnel until stdin closes,
    then what is still in flight is waited for. A reply not back within ``REPLY_WAIT`` is
    listed as missing by number (the test fails on any: nothing may be lost on the local
    path). Prints JSON {"sent": N, "received": M, "missing": [...], "unexpected": K}."""
    stop = _stdin_closed()
    sock, reader, records = _connect(relay, int(port), 10)
    print("connected", flush=True)
    sent = received = unexpected = 0
    missing: list[int] = []
    count = int(in_flight)
    while not stop.is_set():
        burst = range(sent, sent + count)
        sock.sendall(b"".join(protocol.encode_packet(root, int(root_port), b"s%08d" % n + b"y" * 200)
                              for n in burst))
        sent += count
        waiting = set(burst)
        sock.settimeout(REPLY_WAIT)
        try:
            _receive(sock, reader, records, count)
        except TimeoutError:
            pass
        for record in records:
            text = _text(record, protocol.decode_address(record)[2])
            n = int(text[6:14]) if text.startswith("echo:s") else -1
            if n in waiting:
                waiting.discard(n)
                received += 1
            else:
                unexpected += 1
        records.clear()
        missing.extend(sorted(waiting))
    print(json.dumps({"sent": sent, "received": received, "missing": missing, "unexpected": unexpected}), flush=True)


MODES = {"echo": echo, "tunnel": tunnel, "probe": probe, "load": load, "steady": steady}


# -- the test side ---------------------------------------------------------------------------


def spawn(host, mode: str, *args: str, **popen) -> subprocess.Popen:
    """Starts a peer in a test host, from the repository (so ``e2e.peers`` imports)."""
    return host.popen(sys.executable, "-m", "e2e.peers", mode, *args, cwd=REPO, text=True,
                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


class Tunnel:
    """A long-lived framed client in a test host; ``round_trip`` returns "HOST PORT REPLY"."""

    def __init__(self, host, relay_address: str, root_address: str, port: int = 443) -> None:
        self.proc = spawn(host, "tunnel", relay_address, str(port), root_address, str(ROOT_PORT))
        line = self.proc.stdout.readline().strip()
        if line != "connected":
            if self.proc.poll() is None:
                self.proc.kill()
            _out, err = self.proc.communicate(timeout=10)  # also closes the pipes
            raise AssertionError(f"tunnel client did not connect: {line!r}; its stderr: {err.strip()!r}")

    @property
    def stderr(self) -> str:
        return self.proc.stderr.read() if self.proc.poll() is not None else ""

    def round_trip(self, text: str) -> str:
        if self.proc.poll() is not None:
            return "closed"
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip() or "closed"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=10)  # also closes the pipes


class Background:
    """A ``probe`` or ``load`` peer that runs until ``finish`` closes its stdin."""

    def __init__(self, host, mode: str, relay_address: str, root_address: str, port: int = 443,
                 extra: tuple[str, ...] = ()) -> None:
        self.proc = spawn(host, mode, relay_address, str(port), root_address, str(ROOT_PORT), *extra)

    def wait_for_line(self, expected: str, timeout: float = 30) -> None:
        """Waits for the peer to print ``expected`` (``steady`` prints "connected")."""
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline().strip() if ready else ""
        assert line == expected, f"peer did not print {expected!r} within {timeout} s: {line!r}"

    def finish(self) -> str:
        out, err = self.proc.communicate(input="", timeout=30)
        assert self.proc.returncode == 0, err
        return out.strip()


@pytest.fixture(scope="module")
def relay_hosts(request, cluster):
    """Two test hosts: a client "on the internet" and a UDP "root" (local backend only)."""
    if cluster.backend != "local":
        pytest.skip("test hosts need --cluster=local")
    from e2e.cluster import network

    prefix = getattr(request.module, "HOST_PREFIX", "e2e")
    made = [network.create_test_host(cluster.layout, f"{prefix}-{role}-{uuid.uuid4().hex[:4]}") for role in ("client", "root")]
    yield made
    for host in made:
        network.delete_test_host(host)


@pytest.fixture(scope="module")
def udp_root(relay_hosts) -> str:
    """The UDP echo root running in the second test host; its address."""
    host = relay_hosts[1]
    proc = spawn(host, "echo", host.address, str(ROOT_PORT))
    assert proc.stdout.readline().strip() == "listening", proc.stderr.read()
    yield host.address
    proc.kill()
    proc.communicate(timeout=10)


if __name__ == "__main__":
    MODES[sys.argv[1]](*sys.argv[2:])
