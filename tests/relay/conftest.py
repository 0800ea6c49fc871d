"""Fixtures that run the real relay process on loopback with real UDP peers.

The relay binds port 0 and logs the addresses it got; ``RelayProcess`` reads them from its
log, so tests never race for ports. Its stderr is collected for log assertions.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys

import asyncio_dgram
import pytest

from relay import protocol
from tests import ports

START_TIMEOUT = 15.0
_LISTEN = re.compile(r"relay listening on (\S+):(\d+)")
_HEALTH = re.compile(r"health and metrics on http://\S+:(\d+)")


class RelayProcess:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.port = 0
        self.health_port = 0
        self.log: list[str] = []
        self._reader: asyncio.Task | None = None

    @classmethod
    async def start(cls, *args: str, env: dict[str, str] | None = None, health: bool = True, listen: str = "127.0.0.1:0",
                    preexec_fn=None) -> RelayProcess:
        argv = [sys.executable, "-m", "relay", listen, *args]
        if health and "--health-listen" not in args:
            argv += ["--health-listen", "127.0.0.1:0"]
        # No shutdown delay unless a test asks (flag or variable): a SIGTERM'd relay exits
        # as soon as it has drained, as the drain tests expect.
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, env={"ZT_RELAY_SHUTDOWN_DELAY": "0", **os.environ, **(env or {})},
            preexec_fn=preexec_fn,  # e.g. a lower RLIMIT_NOFILE, a cgroup (tests/relay/kernel.py)
        )
        self = cls(proc)
        try:
            await asyncio.wait_for(self._wait_started(health), START_TIMEOUT)
            self._check_port_is_its_own(listen)
        except BaseException:
            await self.stop()
            raise
        self._reader = asyncio.ensure_future(self._read_log())
        return self

    async def _wait_started(self, health: bool) -> None:
        while not self.port or (health and not self.health_port):
            line = (await self.proc.stderr.readline()).decode()
            if not line:
                raise RuntimeError("relay exited during start:\n" + "".join(self.log))
            self.log.append(line)
            if m := _LISTEN.search(line):
                self.port = int(m.group(2))
            if m := _HEALTH.search(line):
                self.health_port = int(m.group(1))

    def _check_port_is_its_own(self, listen: str) -> None:
        """A port the test picked (tests/ports.py) is listened on by this relay's processes
        only: with --workers (SO_REUSEPORT) a stranger's listener there would silently take
        a share of the test's connections instead of failing the bind."""
        port = int(listen.rsplit(":", 1)[1])
        if port and (strangers := ports.foreign_listeners(port, self.proc.pid)):
            raise RuntimeError(f"port {port} is shared with another listener: {', '.join(strangers)}")

    async def _read_log(self) -> None:
        while line := await self.proc.stderr.readline():
            self.log.append(line.decode())

    def logged(self, text: str) -> bool:
        return any(text in line for line in self.log)

    async def http(self, path: str) -> tuple[int, str]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.health_port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        head, _, body = data.decode().partition("\r\n\r\n")
        return int(head.split(" ", 2)[1]), body

    async def metrics(self) -> dict[str, float]:
        """Samples by name with labels, e.g. ``zt_relay_dropped_total{reason="x"}``."""
        status, body = await self.http("/metrics")
        assert status == 200
        return {k: float(v) for k, v in (line.rsplit(" ", 1) for line in body.splitlines() if line and not line.startswith("#"))}

    async def wait_metric(self, name: str, predicate, timeout: float = 5.0) -> float:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            value = (await self.metrics()).get(name, 0.0)
            if predicate(value) or asyncio.get_running_loop().time() > deadline:
                return value
            await asyncio.sleep(0.05)

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    async def wait(self, timeout: float = 10.0) -> int:
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        if self._reader is not None:
            # The log ends when every process holding stderr has gone: a worker left behind
            # by its supervisor fails here instead of hanging the test.
            await asyncio.wait_for(self._reader, timeout)
        return code

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


class Client:
    """A ZeroTier-like tunnel client speaking the record format."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.records: asyncio.Queue[bytes] = asyncio.Queue()
        self._decoder = protocol.RecordReader(lambda v, s, e: self.records.put_nowait(v[s:e]))
        self._pump = asyncio.ensure_future(self._read())

    @classmethod
    async def connect(cls, port: int, host: str = "127.0.0.1", hello: bool = True, prefix: bytes = b"") -> Client:
        reader, writer = await asyncio.open_connection(host, port)
        client = cls(reader, writer)
        client.send_raw(prefix + (protocol.encode_hello(1, 14, 2) if hello else b""))
        return client

    async def _read(self) -> None:
        try:
            while data := await self.reader.read(65536):
                self._decoder.feed(data)
        except ConnectionError:
            pass  # refusals are resets (or a broken pipe for a write after one): closed all the same

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    def send(self, host: str, port: int, packet: bytes) -> None:
        self.writer.write(protocol.encode_packet(host, port, packet))

    async def recv(self, timeout: float = 5.0) -> tuple[str, int, bytes]:
        payload = await asyncio.wait_for(self.records.get(), timeout)
        host, port, offset = protocol.decode_address(payload)
        return host, port, payload[offset:]

    async def closed(self, timeout: float = 5.0) -> bool:
        """True once the relay has closed the connection."""
        await asyncio.wait_for(asyncio.shield(self._pump), timeout)
        return True

    async def close(self) -> None:
        self._pump.cancel()
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


class Echo:
    """A UDP peer (a ZeroTier root, say) that echoes every datagram back, via asyncio-dgram."""

    def __init__(self, stream: asyncio_dgram.DatagramServer) -> None:
        self.stream = stream
        self.host, self.port = stream.sockname[:2]
        self.received: list[tuple[bytes, tuple]] = []
        self._task = asyncio.ensure_future(self._run())

    @classmethod
    async def bind(cls, host: str = "127.0.0.1") -> Echo:
        return cls(await asyncio_dgram.bind((host, 0)))

    async def _run(self) -> None:
        while True:
            data, addr = await self.stream.recv()
            self.received.append((data, addr))
            await self.stream.send(data, addr)

    def close(self) -> None:
        self._task.cancel()
        self.stream.close()


@pytest.fixture
async def start_relay():
    started: list[RelayProcess] = []

    async def start(*args: str, **kwargs) -> RelayProcess:
        relay = await RelayProcess.start(*args, **kwargs)
        started.append(relay)
        return relay

    yield start
    for relay in started:
        await relay.stop()


@pytest.fixture
async def relay(start_relay) -> RelayProcess:
    """A relay allowed to send to loopback on any port, as tests need."""
    return await start_relay("--allow-destination", "127.0.0.0/8", "--allow-destination", "::1/128", "--min-destination-port", "1")


@pytest.fixture
async def echo():
    peer = await Echo.bind()
    yield peer
    peer.close()


@pytest.fixture
async def connect():
    clients: list[Client] = []

    async def open_client(port: int, **kwargs) -> Client:
        client = await Client.connect(port, **kwargs)
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        await client.close()
