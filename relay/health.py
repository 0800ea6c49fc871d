"""A small HTTP server for probes and scraping: ``/healthz``, ``/readyz``, ``/metrics``.

Plain asyncio rather than a web framework: three GET routes don't justify a dependency in
the relay image. Requests are bounded (size and time), and so are answers (a client that
stops reading is let go after ``REQUEST_TIMEOUT``) and connections (``MAX_CONNECTIONS`` at a
time, counted in the relay's descriptors), because the port may be reachable from the pod
network.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from relay import metrics, streams

log = logging.getLogger("zt_relay.health")

MAX_REQUEST = 8192
REQUEST_TIMEOUT = 5.0
"""For the request to come, and again for the answer to be taken."""
MAX_CONNECTIONS = 16
"""Connections at a time; more are closed at once (probes and a scraper need a few)."""


class HealthSource(Protocol):
    @property
    def live(self) -> bool: ...

    @property
    def ready(self) -> bool: ...

    def metrics_text(self) -> str: ...


class HealthServer:
    def __init__(self, source: HealthSource) -> None:
        self.source = source
        self.server: asyncio.AbstractServer | None = None
        self.connections = 0
        """Open now (each a descriptor: the relay counts them, ``Relay.health``)."""
        self._full = False

    async def start(self, host: str, port: int) -> tuple:
        """Starts serving; returns the bound address (port 0 picks a free port)."""
        self.server = await asyncio.start_server(self._handle, host, port, reuse_address=True, limit=MAX_REQUEST)
        address = self.server.sockets[0].getsockname()
        log.info("health and metrics on http://%s:%d", host if ":" not in host else f"[{host}]", address[1])
        return address

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            # Shielded: a cancelled shutdown must still release the port.
            await asyncio.shield(self.server.wait_closed())

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.connections >= MAX_CONNECTIONS:
            if not self._full:
                log.warning("health port: %d connections open, closing new ones until one ends", MAX_CONNECTIONS)
                self._full = True
            writer.close()
            return
        self.connections += 1
        try:
            await self._serve(reader, writer)
        finally:
            self.connections -= 1
            self._full = False

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
            status, ctype, body = self.respond(head)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ConnectionError):
            status, ctype, body = 400, "text/plain", "bad request\n"
        data = body.encode()
        writer.write(
            f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data
        )
        try:
            await asyncio.wait_for(writer.drain(), REQUEST_TIMEOUT)
        except asyncio.TimeoutError:
            # Reads nothing: reset, and drop what the kernel still queues for it.
            streams.reset(writer.transport)
            return
        except ConnectionError:
            pass
        writer.close()

    def respond(self, head: bytes) -> tuple[int, str, str]:
        """Maps a request head to ``(status, content type, body)``."""
        if len(head) > MAX_REQUEST:
            return 400, "text/plain", "request too large\n"
        try:
            method, target, _ = head.split(b"\r\n", 1)[0].decode("ascii").split(" ", 2)
        except ValueError:
            return 400, "text/plain", "malformed request line\n"
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", "only GET\n"
        path = target.split("?", 1)[0]
        if path == "/healthz":
            ok = self.source.live
            return (200 if ok else 503), "text/plain", "ok\n" if ok else "event loop stalled\n"
        if path == "/readyz":
            ok = self.source.ready
            return (200 if ok else 503), "text/plain", "ready\n" if ok else "not ready (starting or draining)\n"
        if path == "/metrics":
            return 200, metrics.CONTENT_TYPE, self.source.metrics_text()
        return 404, "text/plain", "not found: try /healthz, /readyz or /metrics\n"


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}
