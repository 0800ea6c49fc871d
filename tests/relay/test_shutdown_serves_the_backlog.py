"""``Relay.stop_listening`` serves what the kernel queued on the
listeners. tests/relay/test_shutdown.py queues its connections while the relay is stopped,
but with a shutdown delay the loop accepts them long before the listeners close (and
without one, libuv's accept pass runs before the drain): with the accept loop removed, every
relay test passed. Here, in this process, the connections are completed by the kernel while
the loop runs nothing, and the listeners are closed in the same callback."""

from __future__ import annotations

import asyncio
import socket

import pytest
import uvloop

from relay import protocol
from relay.config import Endpoint, RelayConfig
from relay.server import Relay

QUEUED = 20


@pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
@pytest.mark.parametrize("fallback", [False, True], ids=["tunnels", "with-fallback"])
def test_connections_the_kernel_queued_when_the_listeners_close_are_served(run, fallback):
    run(_queued_connections_are_served(fallback))


async def _queued_connections_are_served(fallback: bool) -> None:
    site = socket.create_server(("127.0.0.1", 0)) if fallback else None
    relay = Relay(RelayConfig(listen=(Endpoint("127.0.0.1", 0),), health_listen=None,
                              fallback=Endpoint("127.0.0.1", site.getsockname()[1]) if site else None))
    await relay.start()
    clients = []
    try:
        for _ in range(QUEUED):  # the loop runs nothing meanwhile: all wait in the accept queue
            client = socket.create_connection(relay.addresses[0], timeout=5)
            client.sendall(protocol.encode_hello(1, 14, 2))
            clients.append(client)
        relay.draining = True
        relay.stop_listening()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while sum(1 for t in relay.tunnels if t.version is not None) < QUEUED and loop.time() < deadline:
            await asyncio.sleep(0.01)
        states = []
        for client in clients:
            client.setblocking(False)
            try:
                states.append("eof" if client.recv(1) == b"" else "data")
            except BlockingIOError:
                states.append("open")
            except ConnectionResetError:
                states.append("reset")
        assert states == ["open"] * QUEUED
        assert sum(1 for t in relay.tunnels if t.version is not None) == QUEUED
    finally:
        for client in clients:
            client.close()
        await relay.close()
        if site is not None:
            site.close()
