"""``--fallback``: one port for ZeroTier and a website.

With a fallback backend, each accepted connection starts as a ``Sniffer``. It reads the
optional PROXY header and then at most the first 5 bytes (``sniff.classify``), once, and
hands the connection on:

- **ZeroTier** (or a legacy client with ``--legacy-target``): the transport gets a fresh
  ``Tunnel`` as its protocol (``Tunnel.take_over``): admitted as the client the PROXY header
  named, it gets every byte read after the header. The tunnel's hot path is the one without fallback.
- **Anything else**, or silence for ``--sniff-timeout``: a connection is opened to the
  backend and the two are spliced (``splice.py``), starting with a PROXY header if asked
  and the bytes already read.

Limits before the decision: a connection being sniffed counts against ``--max-connections``
and ``--max-connections-per-ip`` like any connection before its hello (with
``--proxy-protocol``: only from a ``--proxy-protocol-from`` source, and as that balancer's
until its header names the client), so sniffing is no way around them;
it lasts at most ``--sniff-timeout``. Once it goes to the backend it leaves those caps for
``--fallback-max-connections`` and ``--fallback-idle-timeout``: site traffic never counts as
tunnels and can't take their slots. A tunnel's ``--handshake-timeout`` runs from the
handoff.

Metrics: ``zt_relay_fallback_connections_total{result}`` (once per connection sent to the
backend: ``connected``, or why not, ``client_reset`` for a visitor that reset while the
backend was dialed), ``zt_relay_fallback_closed_total{reason}``,
``zt_relay_fallback_connections_active``, ``zt_relay_fallback_bytes_total{direction}`` and
``zt_relay_fallback_dns_failures_total{reason}`` (``backend_name.py``).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import socket
from collections import Counter
from typing import TYPE_CHECKING

from relay import backend_name, preconnect, protocol, proxy_protocol, sniff, socket_transport, splice as splice_mod, stats, streams
from relay.limits import client_key
from relay.tunnel import Tunnel, _fmt

if TYPE_CHECKING:
    from relay.server import Relay

log = logging.getLogger("zt_relay.fallback")

#: Seconds to open the backend connection before the client is closed.
CONNECT_TIMEOUT = 10.0
#: Largest PROXY header accepted while sniffing (the v2 bound with TLVs we don't use).
MAX_PROXY_HEADER = 536
#: How often one failure reason is logged (all are counted).
LOG_INTERVAL = 10.0
#: SO_SNDBUF toward the visitor, and SO_RCVBUF and SO_SNDBUF of the backend socket, under
#: --max-memory (the kernel holds twice each: 512 KiB, 40 Mbit/s per direction at 100 ms
#: round trip; the backend is usually a few ms away at most).
SOCKET_BUFFER = 256 * 1024
#: Seconds a backend name's address is fresh; then it is refreshed in the background while
#: visitors keep getting it (``backend_name.py``: never a lookup per connection).
DNS_CACHE_SECONDS = 10.0

#: The backend socket's options: a client's (streams.STREAM_OPTIONS). A transport built by
#: ``loop.create_connection`` sets TCP_NODELAY once more (uvloop on every TCP socket, asyncio
#: on an IPPROTO_TCP one); ``socket_transport`` sets none.
BACKEND_OPTIONS = streams.STREAM_OPTIONS

# Results (label values of zt_relay_fallback_connections_total).
CONNECTED = "connected"
BACKEND_REFUSED = "backend_refused"
BACKEND_TIMEOUT = "backend_timeout"
BACKEND_ERROR = "backend_error"
MAX_CONNECTIONS = "max_connections"
MAX_CONNECTIONS_PER_IP = stats.MAX_CONNECTIONS_PER_IP
FILE_DESCRIPTORS = stats.FILE_DESCRIPTORS
MEMORY_PRESSURE = stats.MEMORY_PRESSURE
CLIENT_GONE = "client_gone"
CLIENT_RESET = splice_mod.CLIENT_RESET  # reset while the backend was dialed
#: Every result: each series exists at 0 from the start (a series born with its first
#: increase has no earlier sample, so rate() misses that increase).
RESULTS = (CONNECTED, BACKEND_REFUSED, BACKEND_TIMEOUT, BACKEND_ERROR, MAX_CONNECTIONS, MAX_CONNECTIONS_PER_IP,
           FILE_DESCRIPTORS, MEMORY_PRESSURE, CLIENT_GONE, CLIENT_RESET)


class FallbackRouter:
    """Per-process state of the fallback: its cap, its connections, counters, idle tick."""

    def __init__(self, relay: Relay) -> None:
        config = relay.config
        self.relay = relay
        self.loop = relay.loop
        self.backend = (config.fallback.host, config.fallback.port)
        self.proxy_version = config.fallback_proxy_protocol
        self.max_connections = config.fallback_max_connections
        self.share = config.fallback_max_connections_per_ip or config.max_connections_per_ip
        #: per-IP key -> its open splices (the share is enforced only once the cap is reached)
        self.per_ip: dict[str, set[splice_mod.Splice]] = {}
        self.idle_timeout = config.fallback_idle_timeout
        #: under --max-memory: the visitor's SO_SNDBUF and the backend socket's SO_RCVBUF and
        #: SO_SNDBUF, fixed (autotuned, a stalled download left ~4 MiB in the kernel per
        #: visitor: 60 from one address held 236 MiB of socket memory, which cgroup v2 charges
        #: to the pod; an upload grew the backend's send buffer to 4 MiB the same way)
        self.socket_buffer = SOCKET_BUFFER if relay.memory is not None else None
        self.sniffers: set[Sniffer] = set()
        self.splices: set[splice_mod.Splice] = set()
        self.results: Counter[str] = Counter(dict.fromkeys(RESULTS, 0))  # zero series from the start
        self.closed: Counter[str] = Counter(dict.fromkeys(splice_mod.CLOSE_REASONS, 0))
        self.bytes_done = {"to_backend": 0, "to_client": 0}
        self._logged: dict[str, float] = {}
        #: a backend given by name: its address, refreshed off the connection path
        self.name: backend_name.CachedName | None = None
        try:
            ipaddress.ip_address(self.backend[0])
        except ValueError:
            self.name = backend_name.CachedName(self.loop, *self.backend, DNS_CACHE_SECONDS, self._lookup_failed)
        #: --fallback-preconnect: connected, never-written backend connections (preconnect.py)
        self.preconnect: preconnect.Preconnector | None = None
        if config.fallback_preconnect:
            self.preconnect = preconnect.Preconnector(
                self.loop, config.fallback_preconnect, self._known_address,
                lambda address: _dial(address, b"", self.socket_buffer)[0], self._may_preconnect, self._preconnect_failed,
                self._preconnect_paused)
        #: a backend socket made ahead, off any visitor's path (``spare_socket``: socket(2) and
        #: every option that can be set before the connect), that the next dial takes: its
        #: connect and first flight are then the only calls between the ClientHello and the
        #: site. One per process, of the backend's family; it counts as a descriptor
        #: (``Relay._fds_held``) and gives way like the pool (``give_way_spare``).
        self.spare: socket.socket | None = None  # made once the relay listens (Relay.start)
        self._spare_v6 = False
        self._interval = min(1.0, self.idle_timeout / 4)
        self._last_tick = self.loop.time()
        self._tick_handle = self.loop.call_later(self._interval, self._tick)

    def protocol(self) -> Sniffer:
        """The listener's protocol factory."""
        return Sniffer(self)

    def snapshot(self) -> dict[str, int]:
        snap = {
            "fallback_active": len(self.splices),
            "fallback_preconnected": len(self.preconnect) if self.preconnect is not None else 0,
            "fallback_preconnect_taken": self.preconnect.taken if self.preconnect is not None else 0,
            "fallback_preconnect_paused": int(self.preconnect is not None and self.preconnect.paused),
            "fallback_bytes_to_backend": self.bytes_done["to_backend"],
            "fallback_bytes_to_client": self.bytes_done["to_client"],
        }
        for s in self.splices:
            snap["fallback_bytes_to_backend"] += s.to_backend
            snap["fallback_bytes_to_client"] += s.to_client
        if self.preconnect is not None:
            for label, value in self.preconnect.discarded.items():
                snap[f"fallback_preconnect_discarded:{label}"] = value
        for label, value in self.results.items():
            snap[f"fallback:{label}"] = value
        for label, value in self.closed.items():
            snap[f"fallback_closed:{label}"] = value
        if self.name is not None:
            for label, value in self.name.failures.items():
                snap[f"fallback_dns_failures:{label}"] = value
        return snap

    def close(self) -> None:
        """Closes every connection being sniffed or spliced (the relay is stopping)."""
        self._tick_handle.cancel()
        self.stop_preconnecting()
        if self.name is not None:
            self.name.close()
        for sniffer in list(self.sniffers):
            sniffer.transport.abort()
        for s in list(self.splices):
            s.close(splice_mod.SHUTDOWN)

    def stop_preconnecting(self) -> None:
        """Closes the pooled backend connections and the spare socket (no visitor will take
        them: draining)."""
        if self.preconnect is not None:
            self.preconnect.close()
        self.give_way_spare()

    def refill_spare(self) -> None:
        """Makes the spare backend socket if there is none, with room to spare
        (``Relay.spare_room``); none unless the relay listens (else no visitor comes), nor
        before a backend name's first address. Called when a site connection ends and on the idle tick, never
        between a visitor's first bytes and the site's answer (made when the site's first
        answer went on, the next read of that answer waited on it: +0.01 to +0.02 ms p50)."""
        relay = self.relay
        if self.spare is not None or not relay.listening or relay.fd_reserve_short or not relay.spare_room():
            return
        address = self._known_address()
        if address is None:
            return
        try:
            self.spare = spare_socket(address, self.socket_buffer)
        except OSError:  # no descriptor: the next visitor dials as without one
            return
        self._spare_v6 = ":" in address[0]

    def give_way_spare(self) -> bool:
        """Closes the spare socket (a descriptor is needed, or the relay stops). False: none."""
        spare, self.spare = self.spare, None
        if spare is None:
            return False
        spare.close()
        return True

    def _take_spare(self, address: tuple) -> socket.socket | None:
        """The spare socket if it is of ``address``'s family (a backend name may move from
        IPv4 to IPv6 and back: one of the other family is closed), else None."""
        spare = self.spare
        if spare is None:
            return None
        self.spare = None
        if self._spare_v6 == (":" in address[0]):  # not spare.family: an enum built per read
            return spare
        spare.close()
        return None

    # -- to the backend ------------------------------------------------------------------------

    def splice(self, transport: asyncio.Transport, client: tuple, head: bytes, eof: bool, local: tuple | None = None) -> None:
        """Takes a classified client connection to the backend (``head``: bytes read so far;
        ``local``: the address it reached, from its PROXY header, else the socket's)."""
        relay = self.relay
        key = None  # the per-IP key: parsing the address costs, so not before the dial if it can wait
        # Short of descriptors: the spare gives way first (an unconnected socket, remade off
        # any visitor's path), then the pool (a handshake the site made, which this visitor
        # would take), as for a tunnel (``Relay.fds_short``). Asked once when not short.
        short = relay.site_fds_short
        if short and self.give_way_spare():
            short = relay.site_fds_short
        pool = self.preconnect
        if pool is not None:  # the pool gives way: never a visitor refused for what it holds
            while (pool.fds and (short or not relay.site_room() or len(self.splices) + pool.fds >= self.max_connections)
                   and pool.give_way()):
                short = relay.site_fds_short
        if relay.memory_pressure or not relay.site_room():  # a splice can hold more memory than a tunnel
            self._fail(MEMORY_PRESSURE, client, "--max-memory budget nearly used")
            transport.close()
            return
        if relay.fd_reserve_short or short:  # the descriptors left are the tunnels' and accept()'s
            self._fail(FILE_DESCRIPTORS, client, "descriptors nearly exhausted (kept for tunnels)")
            transport.close()
            return
        if len(self.splices) >= self.max_connections:
            key = client_key(client[0], relay.config.ipv6_per_ip_prefix)
            result = self._make_room(key)
            if result is not None:
                self._fail(result, client, f"{self.max_connections} fallback connections open")
                transport.close()
                return
        header = b""
        if self.proxy_version != "off":
            header = proxy_header(self.proxy_version, client, local or transport.get_extra_info("sockname"))
        first = header + head
        # The connect starts now, not on the task's first step: with a known address the
        # first flight usually leaves in this very callback (see ``_dial``), before the
        # bookkeeping below (nothing is read before the loop's next iteration).
        dialed = pooled = None
        address = self._known_address()
        if address is not None:
            try:
                dialed = pooled = self._pooled(address, first)
                if pooled is None:
                    dialed = _dial(address, first, self.socket_buffer, self._take_spare(address))
            except OSError as exc:
                dialed = exc
        # The first flight went whole on a connection dialed just now: the backend side is joined
        # in this callback (``_join``), so the visitor's reading need not pause for it.
        join = pooled is None and isinstance(dialed, tuple) and first and dialed[1] == len(first)
        s = splice_mod.Splice(self._done, relay.site_high, self.loop)
        if pooled is not None and first:  # the site may have closed it just after the check
            s.retry = lambda old: self._retry(s, old, client, first)
        self.splices.add(s)
        if relay.memory is not None:  # a burst between two samples shares the same room
            relay.apply_write_share()
        if not join:
            transport.pause_reading()  # until the backend can take the bytes
        transport.set_protocol(s.client)
        s.client.connection_made(transport)
        s.client.eof = eof
        s.client.received = len(head)
        if self.preconnect is not None:  # the pool is refilled once the site has answered
            s.on_reply = self.preconnect.refill
        if join:
            self._join(s, dialed[0])
        else:
            self.loop.create_task(self._connect(s, client, first, dialed))
        s.key = key or client_key(client[0], relay.config.ipv6_per_ip_prefix)
        self.per_ip.setdefault(s.key, set()).add(s)
        if self.socket_buffer is not None:  # the other options came with the listener
            sock = transport.get_extra_info("socket")
            if sock is not None:
                streams.set_send_buffer(sock, self.socket_buffer)

    def _join(self, s: splice_mod.Splice, sock: socket.socket) -> None:
        """The first flight went whole on a connection dialed in this callback (the usual case
        to a site on this host): the backend side is joined now, on a transport run by the
        loop's readiness callbacks (``socket_transport.py``), so the site's answer is read as
        soon as it comes, with no task, loop turn or uvloop transport set-up in between."""
        s.backend.sock = sock
        backend = socket_transport.SocketTransport(self.loop, sock, s.backend, s.high)
        self.results[CONNECTED] += 1
        if self.preconnect is not None:
            self.preconnect.backend_up()
        if s.client.eof:
            backend.write_eof()
        s.backend_connected()

    def _pooled(self, address: tuple, first: bytes) -> tuple[socket.socket, int] | None:
        """A pooled connection with ``first`` sent on it, else None (dial one)."""
        if self.preconnect is None:
            return None
        sock = self.preconnect.take(address)
        if sock is None:
            return None
        try:
            sent = sock.send(first) if first else 0
        except BlockingIOError:
            sent = 0
        except OSError:  # closed between the check and the send: a fresh dial instead
            sock.close()
            self.preconnect.discard(preconnect.SEND_FAILED)
            return None
        self.preconnect.taken += 1
        return sock, sent

    def _retry(self, s: splice_mod.Splice, old: splice_mod.Side, client: tuple, first: bytes) -> bool:
        """A pooled connection closed or reset with not a byte from the site, after only the
        visitor's first flight: if the site's kernel acknowledged none of it, the site closed
        it before reading that (its FIN was in flight at the check), so the same flight goes
        on a fresh dial, once (never pooled: no retry). False: the site may have read it (and
        processed it: never twice), or the visitor is gone: the close goes to the visitor as usual."""
        s.retry = None
        if not preconnect.unread(old.transport.get_extra_info("socket")):
            return False
        if s.client.lost or streams.is_over(s.client.transport):
            return False  # the visitor reset too (not yet seen): its flight goes nowhere again
        self.preconnect.discard(preconnect.CLOSED_UNANSWERED)
        s.replace_backend()
        s.client.transport.pause_reading()  # until the new connection can take its bytes
        dialed = None
        address = self._known_address()
        if address is not None:
            try:
                dialed = _dial(address, first, self.socket_buffer)
            except OSError as exc:
                dialed = exc
        self.loop.create_task(self._connect(s, client, first, dialed, again=True))
        return True

    def _may_preconnect(self) -> bool:
        """A pool dial waits while descriptors, memory or backend connections are short (one
        more visitor must fit beside it: ``Relay.pool_room``), and stops with the relay."""
        relay = self.relay
        return not (relay.draining or relay.closing or relay.memory_pressure or relay.fd_reserve_short) and relay.pool_room()

    def _preconnect_paused(self, why: str, seconds: float) -> None:
        log.warning("fallback backend %s:%d: preconnecting paused for %g s: %s; every visitor dials it meanwhile "
                    "(--fallback-preconnect gains such a site nothing; the pause doubles while that lasts)",
                    *self.backend, seconds, why)

    def _preconnect_failed(self, exc: OSError, delay: float) -> None:
        now = self.loop.time()
        if now - self._logged.get("preconnect", -LOG_INTERVAL) >= LOG_INTERVAL:
            self._logged["preconnect"] = now
            log.warning("fallback backend %s:%d: preconnecting failed (%s); next try in %.1f s, visitors dial it themselves "
                        "meanwhile (logged at most every %.0f s)", *self.backend, exc, delay, LOG_INTERVAL)

    async def _connect(self, s: splice_mod.Splice, client: tuple, first: bytes, dialed, again: bool = False) -> None:
        """Opens the backend connection (``dialed``: what ``_dial`` did already, or the error
        it raised; None: nothing yet), sends what the first flight has left, joins the two.
        ``again``: a second connection for a visitor already counted (``_retry``): not counted."""
        sock = None
        # The first flight left in the callback that read it (the usual case): the backend has
        # the visitor's bytes already, and a reset meanwhile is the transport's to read.
        at_once = isinstance(dialed, tuple) and first != b"" and dialed[1] == len(first)
        try:
            if isinstance(dialed, OSError):
                raise dialed
            if dialed is not None and dialed[1] is not None:  # connected: nothing to wait for
                sock, sent = dialed
            else:
                async with asyncio.timeout(CONNECT_TIMEOUT):  # no extra task, unlike wait_for
                    if dialed is None:
                        dialed = _dial(await self._address(), first, self.socket_buffer)
                    sock, sent = dialed
                    if sent is None:  # still connecting
                        await self._writable(sock)
                        error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                        if error:
                            raise OSError(error, os.strerror(error))
                        sent = 0
            # From here the transport owns the socket (and closes it if this fails). Building
            # it waits on nothing outside (the socket is connected): no timeout needed.
            owned, sock = sock, None
            backend, _ = await self.loop.create_connection(lambda: s.backend, sock=owned)
            s.backend.sock = owned  # uvloop keeps it (detached when the transport closes)
        except ConnectionRefusedError as exc:
            self._fail(BACKEND_REFUSED, client, str(exc), again)
        except asyncio.TimeoutError:
            self._fail(BACKEND_TIMEOUT, client, f"no connection within {CONNECT_TIMEOUT:g} s", again)
        except OSError as exc:  # unreachable, DNS, no descriptors
            self._fail(BACKEND_ERROR, client, str(exc), again)
        else:
            if s.client.lost:
                self.results[CLIENT_GONE] += not again
                backend.close()
                s.backend_connected()
                return
            if not at_once and streams.is_over(s.client.transport):
                # Reset while the backend was dialed (its reading is paused, so the transport
                # has not seen it): counted as what happened (``again``: counted already), and
                # the backend is reset before it gets the request of a visitor who is gone.
                self._fail(CLIENT_RESET, client, "the client reset the connection while the backend was dialed", again)
                s.abort(splice_mod.CLIENT_RESET)
                s.backend_connected()
                return
            self.results[CONNECTED] += not again
            if self.preconnect is not None:
                self.preconnect.backend_up()
            if sent < len(first):
                backend.write(first[sent:])
            if s.client.eof:
                backend.write_eof()
            elif backend.get_write_buffer_size() <= s.high:
                # Else that rest paused the backend side (over the mark, as transports pause):
                # its ``resume_writing`` resumes the visitor once it drains.
                s.client.transport.resume_reading()
            s.backend_connected()
            return
        if sock is not None:
            sock.close()
        s.backend_failed()

    def _writable(self, sock: socket.socket) -> asyncio.Future:
        """A future done once ``sock`` is writable (its connect ended, either way)."""
        fd = sock.fileno()
        done = self.loop.create_future()

        def ready() -> None:
            self.loop.remove_writer(fd)
            if not done.done():
                done.set_result(None)

        def cancelled(f: asyncio.Future) -> None:
            if f.cancelled():
                self.loop.remove_writer(fd)

        self.loop.add_writer(fd, ready)
        done.add_done_callback(cancelled)
        return done

    def _known_address(self) -> tuple | None:
        """The backend's address if it is known without waiting: an IP, or the name's last
        good address (a refresh, if due, starts in the background)."""
        return self.backend if self.name is None else self.name.current()

    async def _address(self) -> tuple:
        """The address; only before a name's first answer does this wait (on the one lookup)."""
        return self.backend if self.name is None else await self.name.wait()

    def _lookup_failed(self, reason: str, exc: BaseException) -> None:
        key = "dns:" + reason
        now = self.loop.time()
        if now - self._logged.get(key, -LOG_INTERVAL) >= LOG_INTERVAL:
            self._logged[key] = now
            last = self.name.address if self.name is not None else None
            log.warning("fallback backend %s: lookup failed: %s (%s); %s (logged at most every %.0f s)", self.backend[0], reason, exc,
                        f"still using {_fmt(last)}" if last else "no address yet: site connections fail", LOG_INTERVAL)

    def set_write_limits(self, high: int) -> None:
        """Every site connection's write-buffer mark (the memory budget's share)."""
        for s in self.splices:
            s.set_write_limits(high)

    def buffered(self) -> int:
        """What the site connections' write buffers hold."""
        return sum(s.buffered() for s in self.splices)

    def _fail(self, result: str, client: tuple, detail: str, again: bool = False) -> None:
        self.results[result] += not again  # a visitor is counted once
        now = self.loop.time()
        if now - self._logged.get(result, -LOG_INTERVAL) >= LOG_INTERVAL:
            self._logged[result] = now
            log.warning("fallback for %s to %s:%d failed: %s (%s; logged at most every %.0f s)",
                        _fmt(client), *self.backend, result, detail, LOG_INTERVAL)

    def _make_room(self, key: str) -> str | None:
        """The cap is reached: frees a slot for ``key`` if it is under its share, by closing
        the idlest connection of the address holding the most beyond its share (it stops
        counting at once). Returns why not, else None."""
        if len(self.per_ip.get(key, ())) >= self.share:
            return MAX_CONNECTIONS_PER_IP
        hog = max(self.per_ip, key=lambda k: len(self.per_ip[k]), default=None)
        if hog is None or len(self.per_ip[hog]) <= self.share:
            return MAX_CONNECTIONS
        victim = max(self.per_ip[hog], key=lambda s: s.idle)
        self._uncount(victim)
        victim.close(splice_mod.EVICTED)
        return None

    def _uncount(self, s: splice_mod.Splice) -> None:
        if s.key is None:
            return
        held = self.per_ip[s.key]
        held.discard(s)
        if not held:
            del self.per_ip[s.key]
        s.key = None

    def _done(self, s: splice_mod.Splice) -> None:
        self.splices.discard(s)
        self._uncount(s)
        self.closed[s.reason or splice_mod.CLOSED] += 1
        self.bytes_done["to_backend"] += s.to_backend
        self.bytes_done["to_client"] += s.to_client
        self.relay.connection_gone()
        self.refill_spare()

    def _tick(self) -> None:
        now = self.loop.time()
        elapsed = now - self._last_tick
        self._last_tick = now
        for s in list(self.splices):
            if s.active:
                s.active = False
                s.idle = 0.0
            else:
                s.idle += elapsed
                if s.idle >= self.idle_timeout:
                    s.close(splice_mod.IDLE_TIMEOUT)
        if self.preconnect is not None and self.preconnect.pool.owed:  # dials that waited for room (pool_room)
            self.preconnect.fill()
        self.refill_spare()  # one that gave way for a descriptor, or none yet (a name not yet resolved)
        self._tick_handle = self.loop.call_later(self._interval, self._tick)


_RECORD_FIRST = sniff.RECORD_FIRST


class Sniffer(asyncio.Protocol):
    """A connection until its first bytes say what it is (see the module docstring)."""

    __slots__ = ("router", "transport", "client", "local", "buf", "start", "slot", "timer", "reason")

    def __init__(self, router: FallbackRouter) -> None:
        self.router = router
        self.transport: asyncio.Transport | None = None
        self.client: tuple = ("?", 0)
        self.local: tuple | None = None  # the address the client reached, from its PROXY header
        self.buf = b""  # everything read, PROXY header included
        self.start: int | None = None  # where the client's own bytes begin; None: header pending
        self.slot: str | None = None  # the relay's connection-limiter key this connection holds
        self.timer: asyncio.TimerHandle | None = None
        self.reason: str | None = None  # why the relay refused it

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.client = (peer[0], peer[1]) if peer else ("?", 0)
        router = self.router
        router.sniffers.add(self)
        self.timer = router.loop.call_later(router.relay.config.sniff_timeout, self._timed_out)
        config = router.relay.config
        if not config.proxy_protocol:
            self._header_done(0)
        elif not router.relay.hold(self):  # admission as for tunnels (server.py)
            self._forget()

    def data_received(self, data: bytes) -> None:
        self.buf += data  # bounded: a decision or a refusal comes within a few bytes
        if self.start is None:
            try:
                parsed = proxy_protocol.parse_header(self.buf)
            except protocol.ProtocolError as exc:
                self._refuse(exc.reason, exc.detail)
                return
            if parsed is None:
                if len(self.buf) > MAX_PROXY_HEADER:
                    self._refuse(proxy_protocol.REASON, "PROXY header too long")
                return
            if parsed.source is not None:
                self.client, self.local = parsed.source, parsed.destination
            if not self._header_done(parsed.length):
                return
        self._decide()

    def eof_received(self) -> bool:
        if self.start is None:
            self._refuse(proxy_protocol.REASON, "EOF before the PROXY header ended")
        else:
            self._decide(final=True, eof=True)
        return True  # the backend's answer may still go back

    def _timed_out(self) -> None:
        self.timer = None
        if self.start is None:
            self._refuse(proxy_protocol.REASON, "no PROXY header within the sniff timeout")
        else:
            self._decide(final=True)  # silence: the backend may speak first

    def _header_done(self, consumed: int) -> bool:
        """Counts the connection against the relay's caps, now that its address is known."""
        self.start = consumed
        return self._acquire()

    def _acquire(self) -> bool:
        relay = self.router.relay
        reason = relay.take_slot(self, self.client[0])
        if reason is None and relay.fds_short:  # as a tunnel would be (server.py admit)
            reason = stats.FILE_DESCRIPTORS
        if reason is not None:
            self._forget()
            relay.refuse(self, reason)
            return False
        return True

    def _decide(self, final: bool = False, eof: bool = False) -> None:
        """``final``: no more bytes will come in time to decide; ``eof``: the client's EOF."""
        head = self.buf[self.start:]
        if head and head[0] != _RECORD_FIRST:  # the usual verdict, without the call (sniff.RECORD_FIRST)
            verdict = sniff.FALLBACK
        else:
            verdict = sniff.classify(head, self.router.relay.legacy_target is not None, final)
        if verdict == sniff.NEED_DATA:
            return
        transport = self.transport
        if verdict == sniff.FALLBACK:
            # The timer and the limiter slot are given up after the dial (``_forget``): nothing
            # reads them in between, and the first flight leaves without waiting for that.
            self.router.splice(transport, self.client, head, eof, self.local)
        else:
            self._release()  # before the tunnel's admission takes a slot of its own
            # A tunnel: admitted as the client the PROXY header named (if any), never as the
            # balancer's again (its cap would refuse a client it no longer counts), then given
            # every byte read after the header.
            tunnel = Tunnel(self.router.relay)
            transport.set_protocol(tunnel)
            tunnel.take_over(transport, self.client, self.buf[self.start:])
        self._forget()  # after the handoff: a drain never sees the connection gone

    def _refuse(self, reason: str, detail: str) -> None:
        self._forget()
        self.router.relay.refuse(self, reason, detail)

    def _release(self) -> None:
        """Gives up the sniff timer and the relay's limiter slot."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.slot is not None:
            self.router.relay.limiter.release(self.slot)
            self.slot = None

    def _forget(self) -> None:
        """Leaves the sniffing state: timer, limiter slot, the router's set (a drain may end)."""
        self._release()
        router = self.router
        if self in router.sniffers:
            router.sniffers.discard(self)
            router.relay.connection_gone()

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()


def spare_socket(address: tuple, socket_buffer: int | None = None) -> socket.socket:
    """``backend_socket`` with ``BACKEND_OPTIONS`` set too (each can be set before the
    connect): a dial with it (``_dial``'s ``sock``) makes no other call before the connect and
    the first flight's send, nor after them."""
    sock = backend_socket(address, socket_buffer)
    try:
        streams.set_options(sock, BACKEND_OPTIONS)
    except BaseException:
        sock.close()
        raise
    return sock


def backend_socket(address: tuple, socket_buffer: int | None = None) -> socket.socket:
    """A non-blocking TCP socket for a connection to the backend at ``address``, not yet
    connected; ``socket_buffer``: its SO_RCVBUF and SO_SNDBUF (under a memory budget; the
    kernel holds twice each), set before the SYN (the receive buffer sets the window scale),
    else both autotuned. Every backend socket is made here, so each gets the same bound."""
    # Non-blocking from socket(2) on: no ioctl between the visitor's first bytes and the connect.
    sock = socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK,
                         socket.IPPROTO_TCP)
    try:
        if socket_buffer is not None:
            streams.set_receive_buffer(sock, socket_buffer)
            streams.set_send_buffer(sock, socket_buffer)
    except BaseException:
        sock.close()
        raise
    return sock


def _dial(address: tuple, first: bytes, socket_buffer: int | None = None,
          sock: socket.socket | None = None) -> tuple[socket.socket, int | None]:
    """Starts a non-blocking connect to the backend and, if it is already established,
    sends ``first`` at once. Returns the socket and how much of ``first`` went (None: still
    connecting). To a backend on this host (loopback, a veth to a pod) the handshake is
    done by the time connect() returns, so the first flight leaves in the same callback
    that read it: no wait for writability, no loop iteration, no transport to build first.
    Raises OSError if the connect or the send failed (and closes the socket). ``sock``: a
    ``spare_socket`` of the address's family to connect (its options are set already)."""
    spare = sock is not None
    if sock is None:
        sock = backend_socket(address, socket_buffer)
    try:
        error = sock.connect_ex(address)
        if error not in (0, errno.EINPROGRESS):
            raise OSError(error, os.strerror(error))
        sent = None
        if first:  # else nothing to try a send with: writability will tell
            try:
                sent = sock.send(first)
            except BlockingIOError:  # still connecting (a remote backend)
                pass
        # After the first flight (Nagle never holds a connection's first segment): a
        # backend that stops reading is given up on like a client; TCP_NODELAY for what
        # follows (``socket_transport`` sets no option of its own).
        if not spare:
            streams.set_options(sock, BACKEND_OPTIONS)
        return sock, sent
    except BaseException:
        sock.close()
        raise


def proxy_header(version: str, client: tuple, local: tuple | None) -> bytes:
    """A PROXY header from ``client`` to the address it reached (same family as the client's)."""
    v6 = ":" in client[0]
    if local is None or (":" in local[0]) != v6:
        local = ("::" if v6 else "0.0.0.0", local[1] if local else 0)
    src, dst = (client[0], client[1]), (local[0], local[1])
    return proxy_protocol.encode_v1(src, dst) if version == "v1" else proxy_protocol.encode_v2(src, dst)
