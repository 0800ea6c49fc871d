"""The relay process: listeners, admission, housekeeping and draining.

``Relay`` owns what tunnels share: the compiled destination filter (each tunnel caches its
own verdicts: tunnel.MAX_CACHED_VERDICTS), the reply-prefix cache, the stats, the
connection limiter, the global rate limit and the reply-window generation.
Per-packet work happens in ``tunnel.Tunnel``; everything here runs per connection or per
housekeeping tick (at most once a second), never per packet.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import resource
import socket
import struct

from relay import interfaces, limits, memory, metrics, stats
from relay.config import Endpoint, RelayConfig
from relay import splice as splice_mod
from relay.fallback import FallbackRouter
from relay.health import HealthServer
from relay.limits import ConnectionLimiter, RateLimit, client_key
from relay.streams import CLOSE_GRACE, TCP_USER_TIMEOUT_MS, configure_listener, configure_stream, set_receive_buffer, set_send_buffer  # noqa: F401 (re-exported)
from relay.tunnel import UDP_BATCH, Tunnel, _fmt

log = logging.getLogger("zt_relay")

#: Cache bound of the reply prefixes: a sender spraying source ports can make the relay
#: compute them, never grow this without limit (cleared when full; refilling is cheap).
#: Destination verdicts are cached per tunnel (tunnel.MAX_CACHED_VERDICTS).
MAX_CACHED_PREFIXES = 65536
#: How often refusals of the same reason are logged (they are all counted).
REFUSAL_LOG_INTERVAL = 10.0
#: Descriptors set aside for tunnels with --fallback: site connections may take every
#: other one; then a tunnel's UDP socket (and the next accepts) open in the room these
#: leave, and site connections are refused until it is set aside again.
FD_RESERVE = 8
#: A tick that ran this long ago means the loop is stuck: /healthz fails.
LIVENESS_STALL = 10.0

_PORT = struct.Struct(">H")
#: Why a tunnel's UDP socket could not be had, by errno: refusal reasons an operator acts on.
_UDP_REFUSALS = {
    errno.EADDRINUSE: stats.EPHEMERAL_PORTS,  # bind to port 0 with every ephemeral port taken
    errno.EMFILE: stats.FILE_DESCRIPTORS,
    errno.ENFILE: stats.FILE_DESCRIPTORS,
}

#: SO_SNDBUF of a tunnel under --max-memory (the kernel holds twice this, 512 KiB, 368 KiB of
#: it replies, measured: at most ~30 Mbit/s at 100 ms round trip). Half of it would admit 20 %
#: more tunnels per pod and halve that ceiling (README).
TUNNEL_SEND_BUFFER = 256 * 1024
#: SO_RCVBUF of every accepted connection under --max-memory, set on the listener (inherited,
#: and before listen() so the window scale fits it): the kernel holds twice this, 256 KiB.
#: Autotuned, a fast client's receive buffer grew past 1.5 MiB on loopback, and the queue
#: fills to it whenever the loop falls behind; cgroup v2 charges it to the pod, and the
#: per-tunnel worst case (``_fixed``) did not count it.
TUNNEL_RECEIVE_BUFFER = 128 * 1024
#: SO_RCVBUF of a tunnel's UDP sockets under --max-memory: the kernel holds twice this,
#: 128 KiB, which is 56 datagrams of ZeroTier's 1,432-byte MTU (2.3 KiB each as the kernel
#: counts them, measured on loopback): a full read of UDP_BATCH (32) replies plus 24 more
#: arriving meanwhile, or 21 ms of replies at the ~30 Mbit/s the TCP send buffer carries at
#: 100 ms. What arrives past it is dropped by the kernel, as replies past the write buffer
#: would be. Left alone, each socket holds rmem_default (208 KiB here), charged to the pod by
#: cgroup v2 and reserved nowhere.
UDP_RECEIVE_BUFFER = 64 * 1024
#: UDP sockets a tunnel may have: IPv4, and IPv6 once its client sends an IPv6 record.
UDP_SOCKETS = 2
#: Under --max-memory, the smallest write-buffer share a tunnel is admitted with, in records
#: of --max-record-size: a few full replies of slack toward a client that reads. Below it a
#: new tunnel is refused (memory_pressure): idle tunnels cost ~3 KiB, so memory samples alone
#: admitted hundreds, whose kernel send buffers alone then outgrew the budget once flooded
#: (200 in a 96 MiB cgroup: 101.6 MiB of socket memory, which cgroup v2 charges to the pod).
SHARE_FLOOR_RECORDS = 4


def _power_of_two_under(share: float, limit: int) -> int:
    """``limit`` if ``share`` reaches it, else the power of two at or under ``share``
    (0 below 1 KiB)."""
    return limit if share >= limit else (0 if share < 1024 else 1 << (int(share).bit_length() - 1))


class Relay:
    def __init__(self, config: RelayConfig, telemetry=None) -> None:
        self.config = config
        self.telemetry = telemetry
        self.loop = asyncio.get_running_loop()
        #: the relay's interface addresses, refused as destinations (with --own-address)
        self.own_addresses = tuple(sorted(interfaces.local_addresses()))
        self.filter = config.destination_filter(self.own_addresses).compile()
        #: sender address -> the 7 or 19 address bytes of a reply record
        self.v4_prefixes: dict[tuple, bytes] = {}
        self.v6_prefixes: dict[tuple, bytes] = {}
        self.stats = stats.Stats()
        self.limiter = ConnectionLimiter(config.max_connections, config.max_connections_per_ip)
        self.global_rate = None if not (config.global_rate_pps or config.global_rate_bps) else RateLimit(config.global_rate_pps, config.global_rate_bps, self.loop.time())
        self.min_packet = config.min_packet_size
        self.max_reply = config.max_record_size
        self.legacy_target = None if config.legacy_target is None else (config.legacy_target.host, config.legacy_target.port)
        #: reply-window generation; a destination may reply while its entry is this or one less
        self.generation = 0
        #: every open connection, admitted or still waiting for its PROXY header
        self.tunnels: set[Tunnel] = set()
        self.servers: list[asyncio.AbstractServer] = []
        self.addresses: list[tuple] = []
        #: the listening sockets, to take over what the kernel queued before they close
        self.listen_socks: list[socket.socket] = []
        self.listening = False
        #: not ready (SIGTERM arrived); tunnels are still served
        self.draining = False
        #: closed: connections that still arrive are refused
        self.closing = False
        self._handover: set[asyncio.Future] = set()
        #: --max-memory (default: the cgroup's limit); sampled by the housekeeping tick
        self.memory = memory.budget(config.max_memory)
        self.memory_pressure = False
        #: the tunnels' write-buffer limit: --write-buffer-limit, less when memory is short
        self.write_high = config.write_buffer_limit
        #: the site connections' write-buffer limit (each direction), likewise
        self.site_high = splice_mod.BUFFER_LIMIT
        self._trimmed = float("-inf")  # loop time freed heap was last given back (memory.give_back)
        #: what the write buffers may hold together, from the last memory sample
        self.write_room = float("inf")
        #: what one UDP wakeup may queue past a tunnel's limit: a read's worth of replies
        self._batch = max(UDP_BATCH * config.max_record_size, splice_mod.READ_SIZE if config.fallback else 0)
        #: what every tunnel may hold besides its write-buffer share, under a budget: one
        #: read's replies past it and the kernel's socket buffers (twice each fixed size):
        #: the TCP connection's send and receive buffers, each UDP socket's receive buffer
        self._fixed = self._batch + (2 * (TUNNEL_SEND_BUFFER + TUNNEL_RECEIVE_BUFFER + UDP_SOCKETS * UDP_RECEIVE_BUFFER)
                                     if self.memory is not None else 0)
        #: SO_RCVBUF of the tunnels' UDP sockets (None: the kernel's default)
        self.udp_receive_buffer = UDP_RECEIVE_BUFFER if self.memory is not None else None
        #: the smallest share a new tunnel is admitted with (SHARE_FLOOR_RECORDS)
        self.share_floor = SHARE_FLOOR_RECORDS * config.max_record_size
        self.last_tick = self.loop.time()
        self._generation_stamp = self.last_tick
        self._tick_handle: asyncio.TimerHandle | None = None
        self._memory_handle: asyncio.TimerHandle | None = None
        self._refusal_logged: dict[str, float] = {}
        self._emptied: asyncio.Event | None = None
        #: with --fallback, classifies each connection first (fallback.py); tunnels never wait on it
        self.fallback: FallbackRouter | None = None
        #: with --fallback: descriptors held open for the tunnels (see FD_RESERVE)
        self.fd_reserve: list[int] = []
        #: RLIMIT_NOFILE (re-read by the tick), and the descriptors this process held before
        #: its first connection (``count_fds``; None: not counted, no descriptor ceiling)
        self.nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.fd_base: int | None = None
        #: the tunnels' UDP sockets (each an ephemeral port and a descriptor)
        self.udp_sockets = 0
        #: the health port's server (app.py), whose open connections are descriptors too
        self.health: HealthServer | None = None

    # -- start and stop ------------------------------------------------------------------------

    async def start(self, reuse_port: bool = False) -> None:
        """Binds every listen address (fails fast if one can't be bound) and starts serving."""
        socks = [listen_socket(ep, reuse_port) for ep in self.config.listen]
        if self.memory is not None:  # before listen(): accepted connections inherit it
            for sock in socks:
                set_receive_buffer(sock, TUNNEL_RECEIVE_BUFFER)
        factory = lambda: Tunnel(self)  # noqa: E731
        if self.config.fallback is not None:
            self.fallback = FallbackRouter(self)
            factory = self.fallback.protocol
            self._refill_fd_reserve()
        for sock in socks:
            server = await self.loop.create_server(factory, sock=sock, backlog=4096)
            self._factory = factory
            self.servers.append(server)
            self.listen_socks.append(sock)
            self.addresses.append(sock.getsockname())
        self.listening = True
        if self.fallback is not None:
            self.fallback.refill_spare()
        if self.memory is not None:
            log.info("memory budget: %s", self.memory.describe())
            self._sample_memory()
        self._schedule_tick()
        log.info("relay listening on %s", ", ".join(_fmt(a) for a in self.addresses))
        own = (*self.own_addresses, *self.config.own_address)
        log.info("refusing the relay's own addresses as destinations: %s", ", ".join(own) or "none found")

    @property
    def ready(self) -> bool:
        return self.listening and not self.draining

    @property
    def live(self) -> bool:
        return self.loop.time() - self.last_tick < LIVENESS_STALL

    def snapshot(self) -> dict[str, int]:
        snap = self.stats.snapshot(t for t in self.tunnels if t.admitted)
        if self.fallback is not None:
            snap.update(self.fallback.snapshot())
        # Gauges of what open connections hold (per scrape, not per packet): a closed
        # tunnel must leave none of it behind.
        snap["connections_open"] = len(self.tunnels) + (len(self.fallback.sniffers) if self.fallback is not None else 0)
        snap["client_addresses"] = len(self.limiter.per_ip)
        snap["udp_sockets_open"] = self.udp_sockets
        if self.memory is not None:
            snap["memory_bytes"] = self.memory.used
        snap["write_buffer_bytes"] = sum(t.transport.get_write_buffer_size() for t in self.tunnels if t.transport is not None and not t.transport.is_closing())
        return snap

    def metrics_text(self) -> str:
        return metrics.render(self.snapshot())

    async def shutdown(self, delay: float | None = None, timeout: float | None = None) -> None:
        """The SIGTERM sequence: not ready at once, keep accepting for ``delay`` seconds (load
        balancers notice the failing readiness and stop sending), close the listeners without
        resetting what the kernel queued, then drain."""
        delay = self.config.shutdown_delay if delay is None else delay
        self.draining = True
        if self.listening and delay > 0:
            log.info("not ready; accepting for %g s more, then draining", delay)
            await asyncio.sleep(delay)
        await self.drain(timeout)

    def stop_listening(self) -> None:
        """Closes the listeners. Closing a listening socket resets every connection in its
        accept queue (with SO_REUSEPORT the kernel does not move them to another worker), so
        those are accepted here first and served like any other."""
        if not self.listening:
            return
        self.listening = False
        handed = 0
        for sock in self.listen_socks:
            while True:
                try:
                    conn, _ = sock.accept()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:  # e.g. EMFILE: what is left is reset by the close
                    log.warning("accepting queued connections at shutdown: %s", exc)
                    break
                conn.setblocking(False)
                handed += 1
                future = asyncio.ensure_future(self.loop.connect_accepted_socket(self._factory, conn))
                self._handover.add(future)
                future.add_done_callback(self._handed_over)
        # No await since the accepts above: the kernel has had no chance to queue more.
        for server in self.servers:
            server.close()
        if self.fallback is not None:  # no visitor comes for them any more
            self.fallback.stop_preconnecting()
        log.info("listeners closed (%d queued connections taken over)", handed)

    def _handed_over(self, future: asyncio.Future) -> None:
        self._handover.discard(future)
        if not future.cancelled() and future.exception() is not None:
            log.warning("a connection queued at shutdown could not be served: %s", future.exception())

    async def drain(self, timeout: float | None = None) -> None:
        """Stops accepting, lets live tunnels run until they close or ``timeout``, closes the rest."""
        timeout = self.config.drain_timeout if timeout is None else timeout
        self.draining = True
        self.stop_listening()
        if self._handover:
            await asyncio.wait(set(self._handover))
        log.info("draining: %d tunnels, up to %.0f s", len(self.tunnels), timeout)
        if not self.idle:
            self._emptied = asyncio.Event()
            try:
                await asyncio.wait_for(self._emptied.wait(), timeout)
            except asyncio.TimeoutError:
                pass
        await self.close(stats.DRAIN_TIMEOUT)

    async def close(self, reason: str = stats.DRAIN_TIMEOUT) -> None:
        """Closes every tunnel and listener now."""
        self.draining = self.closing = True
        self.listening = False
        for server in self.servers:
            server.close()
        for tunnel in list(self.tunnels):
            tunnel.close(reason)
        if self.fallback is not None:
            self.fallback.close()
        for server in self.servers:
            await server.wait_closed()
        # connection_lost runs on the next loop iterations, or after the close grace for a
        # client that doesn't read (tunnels and site connections alike).
        if not self.idle:
            self._emptied = asyncio.Event()
            try:
                await asyncio.wait_for(self._emptied.wait(), CLOSE_GRACE + 1)
            except asyncio.TimeoutError:
                pass
        if self._tick_handle is not None:
            self._tick_handle.cancel()
        if self._memory_handle is not None:
            self._memory_handle.cancel()
        while self.fd_reserve:
            os.close(self.fd_reserve.pop())
        log.info("relay stopped")

    # -- per connection ------------------------------------------------------------------------

    def connection_made(self, tunnel: Tunnel) -> None:
        self.tunnels.add(tunnel)
        # The stream options came with the listener (streams.configure_listener).
        if self.memory is not None:
            sock = tunnel.transport.get_extra_info("socket")
            if sock is not None:
                # Under a memory budget the kernel's send buffer is capped too: autotuned, it
                # grows to 4 MiB toward a client that stops reading, and cgroup v2 charges it
                # to the pod (30 such tunnels from one address: 121.5 MiB of socket memory).
                set_send_buffer(sock, TUNNEL_SEND_BUFFER)
            self.apply_write_share()
        tunnel.transport.set_write_buffer_limits(high=self.write_high)

    # Admission of every connection, a tunnel or a fallback.Sniffer (``conn``: its
    # ``client``, ``slot``, ``reason`` and ``transport``).

    def hold(self, conn: Tunnel) -> bool:
        """A connection that must send a PROXY header first: refused unless its peer is a
        trusted balancer, and counted against the limits by that peer until the header
        names the client (silent connections can't pile up past the caps)."""
        peer = conn.client[0]
        if not self.config.proxy_trusted(peer):
            self.refuse(conn, stats.PROXY_UNTRUSTED, "PROXY headers are not trusted from this source")
            return False
        reason = self.take_slot(conn, peer)
        if reason is not None:
            self.refuse(conn, reason)
            return False
        return True

    def take_slot(self, conn: Tunnel, host: str) -> str | None:
        """Counts ``conn`` against the caps as ``host``'s, giving up the slot it held (its
        balancer's, until the PROXY header named the client); returns why not, else None."""
        if conn.slot is not None:
            self.limiter.release(conn.slot)
            conn.slot = None
        return stats.DRAINING if self.closing else self._acquire(conn, host)

    def admit(self, tunnel: Tunnel) -> bool:
        """Counts the connection against the limits and opens its UDP socket, or refuses it."""
        reason = stats.MEMORY_PRESSURE if self.memory_pressure and not self.closing else self.take_slot(tunnel, tunnel.client[0])
        detail = None
        if reason is None and self.fds_short:
            reason = stats.FILE_DESCRIPTORS
            detail = f"RLIMIT_NOFILE {self.nofile}, {limits.FD_HEADROOM} kept free for accepts and scrapes"
        if reason is None and self.memory is not None and not self.tunnel_room():
            reason = stats.MEMORY_PRESSURE
            detail = (f"--max-memory room of {max(0, int(self.write_room)) >> 20} MiB is set aside for {len(self.tunnels) - 1} tunnels, "
                      f"each may hold {(self._fixed + self.share_floor) >> 10} KiB at worst")
        if reason is None:
            try:
                self._open_udp(tunnel)
            except OSError as exc:
                reason = _UDP_REFUSALS.get(exc.errno, stats.UDP_SOCKET_ERROR)
                detail = str(exc)
        if reason is not None:
            self.refuse(tunnel, reason, detail)
            return False
        tunnel.admitted = True
        config = self.config
        if config.tunnel_rate_pps or config.tunnel_rate_bps:
            tunnel.rate = RateLimit(config.tunnel_rate_pps, config.tunnel_rate_bps, self.loop.time())
            tunnel.limited = True
        self.stats.opened += 1
        if self.telemetry is not None:
            self.telemetry.opened(tunnel)
        log.debug("tunnel from %s opened", _fmt(tunnel.client))
        return True

    def _open_udp(self, tunnel: Tunnel) -> None:
        try:
            tunnel.open_udp()
            return
        except OSError as exc:
            spare = self.fallback is not None and self.fallback.spare is not None
            if exc.errno != errno.EMFILE or not (self.fd_reserve or spare):
                raise
        # The kernel's ceiling where the count saw room (prlimit lowered it since the tick
        # read it): the spare backend socket gives way first, as in ``fds_short`` (its
        # descriptor may be above a lowered ceiling: then the reserve, as before).
        if self.fallback is not None and self.fallback.give_way_spare():
            try:
                tunnel.open_udp()
                return
            except OSError as exc:
                if exc.errno != errno.EMFILE or not self.fd_reserve:
                    raise
        # Site connections took the rest: the whole reserve goes to tunnels (and scrapes)
        # and no new site connection is made until it can be set aside again.
        while self.fd_reserve:
            os.close(self.fd_reserve.pop())
        log.warning("descriptors exhausted: the tunnels' reserve of %d is released; site connections are refused until it is back", FD_RESERVE)
        tunnel.open_udp()

    def count_fds(self) -> int:
        """Counts the descriptors this process holds besides its tunnels' (listeners, health,
        the loop's, logs): from then on ``fds_short`` keeps ``limits.FD_HEADROOM`` free."""
        try:
            held = len(os.listdir("/proc/self/fd")) - 1  # the listing's own descriptor
        except OSError:
            held = limits.FDS_BASE
        self.fd_base = max(0, held - self._fds_held())
        return self.fd_base

    def _fds_held(self) -> int:
        """Descriptors of the connections: tunnels and their UDP sockets, the health port's,
        and with --fallback the connections being sniffed (one each) and site connections
        (two each)."""
        held = len(self.tunnels) + self.udp_sockets + (self.health.connections if self.health is not None else 0)
        if self.fallback is not None:
            held += len(self.fallback.sniffers) + 2 * len(self.fallback.splices) + (self.fallback.spare is not None)
            if self.fallback.preconnect is not None:
                held += self.fallback.preconnect.fds
        return held

    def fds_left(self) -> float:
        """Descriptors a new connection may still take before the headroom that accept()
        and health scrapes need (at zero, libuv closes new connections itself, uncounted).
        Site connections and connections being sniffed count too: they took the last
        descriptors before. (A connection handed from the sniffer to a tunnel counts twice
        for that moment: one descriptor on the safe side.)"""
        base = self.fd_base
        if base is None:
            return float("inf")
        return self.nofile - limits.FD_HEADROOM - base - self._fds_held()

    @property
    def fds_short(self) -> bool:
        """One more tunnel descriptor would eat into the headroom (``fds_left``). Asked only
        where one is about to be taken (a tunnel's admission and its IPv6 socket, a connection
        being sniffed): the preconnect pool gives way first (closes what it holds), its
        descriptors are the first a tunnel or a visitor gets (it dials only with room to spare)."""
        if self.fds_left() > 0:
            return False
        if self.fallback is not None and self.fallback.give_way_spare() and self.fds_left() > 0:
            return False
        pool = self.fallback.preconnect if self.fallback is not None else None
        while pool is not None and pool.give_way():
            if self.fds_left() > 0:
                return False
        return True

    @property
    def site_fds_short(self) -> bool:
        """A new site connection would leave the tunnels fewer than FD_RESERVE descriptors
        (besides the headroom): site traffic never takes the tunnels' last ones."""
        return self.fds_left() <= FD_RESERVE

    @property
    def fd_reserve_short(self) -> bool:
        """Part of the tunnels' descriptor reserve is in use: no new site connections."""
        return len(self.fd_reserve) < FD_RESERVE and self.fallback is not None and not self.closing

    def _refill_fd_reserve(self) -> None:
        """Sets the reserve aside once there is room for it and as much again besides; the
        preconnect pool and the spare backend socket give way for it (neither is made while
        the reserve is short)."""
        pool = self.fallback.preconnect if self.fallback is not None else None
        while True:
            fds: list[int] = []
            try:
                while len(fds) < 2 * FD_RESERVE:
                    fds.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
            except OSError:
                pass
            if len(fds) == 2 * FD_RESERVE:
                self.fd_reserve, fds = fds[:FD_RESERVE], fds[FD_RESERVE:]
            for fd in fds:
                os.close(fd)
            if self.fd_reserve:
                return
            if self.fallback is not None and self.fallback.give_way_spare():
                continue
            if pool is None or not pool.fds:
                return
            while pool.give_way():
                pass

    def _acquire(self, tunnel: Tunnel, host: str) -> str | None:
        key = client_key(host, self.config.ipv6_per_ip_prefix)
        reason = self.limiter.acquire(key)
        if reason is None:
            tunnel.slot = key
        return reason

    def refuse(self, tunnel: Tunnel, reason: str, detail: str | None = None) -> None:
        """Counts and (rate-limited) logs a refused connection, and resets it."""
        self.stats.refused[reason] += 1
        self._log_refusal(reason, tunnel, detail)
        tunnel.reason = reason
        tunnel.transport.abort()

    def hello(self, tunnel: Tunnel) -> None:
        log.info("tunnel from %s: client version %s", _fmt(tunnel.client), tunnel.version)

    def tunnel_lost(self, tunnel: Tunnel) -> None:
        self.tunnels.discard(tunnel)
        if tunnel.slot is not None:
            self.limiter.release(tunnel.slot)
            tunnel.slot = None
        if tunnel.admitted:
            tunnel.admitted = False
            self.stats.tunnel_closed(tunnel, tunnel.reason)
            if self.telemetry is not None:
                self.telemetry.closed(tunnel)
            log.info(
                "tunnel from %s closed: %s (version %s, %d/%d packets to UDP/TCP)",
                _fmt(tunnel.client), tunnel.reason, tunnel.version,
                tunnel.frames_to_udp, tunnel.frames_to_tcp,
            )
        self.connection_gone()

    @property
    def idle(self) -> bool:
        """No tunnel, no connection being sniffed and no connection to the fallback backend
        is open (a drain may end)."""
        fallback = self.fallback
        return not self.tunnels and (fallback is None or not (fallback.splices or fallback.sniffers))

    def connection_gone(self) -> None:
        """Ends a drain once the last tunnel or fallback connection has closed."""
        if self._emptied is not None and self.idle:
            self._emptied.set()

    def _log_refusal(self, reason: str, tunnel: Tunnel, detail: str | None = None) -> None:
        now = self.loop.time()
        if now - self._refusal_logged.get(reason, -REFUSAL_LOG_INTERVAL) >= REFUSAL_LOG_INTERVAL:
            self._refusal_logged[reason] = now
            log.warning("refusing connection from %s: %s%s (logged at most every %.0f s)", _fmt(tunnel.client), reason,
                        f" ({detail})" if detail else "", REFUSAL_LOG_INTERVAL)

    # -- caches (slow path of the per-packet lookups) ------------------------------------------

    def resolve(self, key: bytes) -> tuple | str:
        """The verdict for a raw address prefix (04 ip port / 06 ip port): a ``sendto``
        address or a drop reason. One compiled-filter lookup: this runs for every address
        a tunnel has not cached, a spraying client's every packet included."""
        verdict = self.filter.verdict_for_prefix(key)
        if verdict is not None:
            return verdict
        if len(key) == 7:
            return (socket.inet_ntop(socket.AF_INET, key[1:5]), key[5] << 8 | key[6])
        # The form recvfrom reports (inet_ntop as well), so replies match.
        return (socket.inet_ntop(socket.AF_INET6, key[1:17]), key[17] << 8 | key[18], 0, 0)

    def reply_prefix(self, addr: tuple) -> bytes:
        ip = ipaddress.ip_address(addr[0])
        prefix = bytes((4 if ip.version == 4 else 6,)) + ip.packed + _PORT.pack(addr[1])
        cache = self.v4_prefixes if ip.version == 4 else self.v6_prefixes
        if len(cache) >= MAX_CACHED_PREFIXES:
            cache.clear()
        cache[addr] = prefix
        return prefix

    # -- housekeeping --------------------------------------------------------------------------

    def _schedule_tick(self) -> None:
        c = self.config
        interval = min(1.0, c.handshake_timeout / 4, c.idle_timeout / 4, c.reply_window / 4)
        self._tick_handle = self.loop.call_later(interval, self._tick, interval)

    def _sample_memory(self) -> None:
        """Samples the memory budget on its own timer (more often above half of it)."""
        pressure = self.memory.sample(self.memory_pressure)
        now = self.loop.time()
        # Above half the budget, at most once a second: what closed tunnels freed goes back.
        if self.memory.used >= self.memory.limit / 2 and now - self._trimmed >= 1.0:
            self._trimmed = now
            if memory.give_back():
                pressure = self.memory.sample(self.memory_pressure)
        if pressure != self.memory_pressure:
            self.memory_pressure = pressure
            if pressure:
                log.warning("memory pressure: %d of %d bytes used; refusing new tunnels (%s)", self.memory.used, self.memory.limit, stats.MEMORY_PRESSURE)
            else:
                log.info("memory pressure over: %d of %d bytes used; accepting new tunnels", self.memory.used, self.memory.limit)
        self._share_write_buffers()
        if not self.closing:
            self._memory_handle = self.loop.call_later(self.memory.interval(), self._sample_memory)

    def _share_write_buffers(self) -> None:
        """Refusing new tunnels is not enough: tunnels admitted between two samples fill
        their write buffers afterwards (60 stuck tunnels with 4 MiB buffers, flooded by
        their peers, were OOM-killed in a 96 MiB cgroup: one loop iteration queued tens
        of MB, no sample saw 90 %). So what is left of the budget is shared among the
        tunnels as their write-buffer limit (a power of two, so that it rarely changes;
        each tunnel may still cross it by one read's replies). Replies past it are dropped
        as write_buffer_full, as for any slow client. Site connections (--fallback) share
        it too, one share per direction (150 stalled downloads, 512 KiB each way, had the
        relay of a 96 MiB cgroup OOM-killed), and new ones are refused when it runs out."""
        tunnels = self.tunnels
        count = self._shares()
        # With --workers every process samples the same cgroup: each gets its part of the
        # room (SO_REUSEPORT spreads connections evenly), or each would set aside all of it
        # (2 workers admitted 64 tunnels where the room held 32: 95.2 MiB of 96).
        room = (self.memory.limit * memory.HIGH_WATER - self.memory.used) / self.config.workers
        if room / count < self.config.write_buffer_limit + self._fixed:  # tight: what they queued is theirs again
            room += sum(t.transport.get_write_buffer_size() for t in tunnels if t.transport is not None)
            if self.fallback is not None:
                room += self.fallback.buffered()
        self.write_room = room
        self.apply_write_share()

    def _shares(self) -> int:
        """Write buffers sharing the room: one per tunnel, two per site connection."""
        count = len(self.tunnels)
        if self.fallback is not None:
            count += 2 * len(self.fallback.splices)
        return count or 1

    def tunnel_share(self) -> float:
        """Each write buffer's share of the memory room of the last sample, once every
        tunnel's fixed worst case (``_fixed``) is set aside."""
        return self.write_room / self._shares() - self._fixed

    def tunnel_room(self) -> bool:
        """Whether the room of the last sample still gives every tunnel (the new one
        included) its fixed worst case and a write buffer of ``share_floor``: so the share
        can't reach 0 however many idle tunnels come. Site connections are not counted
        here (site traffic never blocks tunnels; ``site_room`` admits them against the same
        room, and they do shrink the tunnels' shares)."""
        return self.write_room / (len(self.tunnels) or 1) - self._fixed >= self.share_floor

    def site_room(self, pooled: int | None = None) -> bool:
        """Whether the memory room of the last sample holds the worst case of every site
        connection and one more (always, without a budget): both write buffers at their
        share and a read past each, and the kernel's fixed socket buffers (both connections', both ways),
        beside the pool's ``pooled`` connections (default: all it holds). The tunnels' worst case is not reserved here (an idle
        one costs ~3 KiB, and a few hundred of them would leave no room for any visitor):
        what they use is in the sample, and their own shares shrink with the visitors'."""
        if self.memory is None or self.fallback is None:
            return True
        site, pool = self.site_worst()
        if pooled is None:
            pooled = self.fallback.preconnect.fds if self.fallback.preconnect is not None else 0
        return (len(self.fallback.splices) + 1) * site + pooled * pool <= self.write_room

    def site_worst(self) -> tuple[int, int]:
        """The memory a site connection and a pooled backend connection may hold at worst."""
        fallback = self.fallback
        # the kernel holds twice each fixed buffer: the visitor's send buffer and the backend
        # socket's receive and send buffers (fallback.SOCKET_BUFFER), the visitor's receive
        # buffer (the listener's)
        kernel = 2 * (3 * fallback.socket_buffer + TUNNEL_RECEIVE_BUFFER)
        # a pooled connection is never written: only its receive buffer can fill (a site
        # that speaks, or answers an idle connection)
        return 2 * (self.site_high + splice_mod.READ_SIZE) + kernel, 2 * fallback.socket_buffer

    def pool_room(self) -> bool:
        """Whether the pool may dial once more and still leave one more visitor room to come
        without the pool giving way: under --fallback-max-connections (the backend sees
        at most that many connections per process, pooled ones included), the descriptors
        kept for tunnels and the memory room."""
        fallback = self.fallback
        pooled = fallback.preconnect.fds + 1
        return (len(fallback.splices) + pooled < fallback.max_connections
                and self.fds_left() > FD_RESERVE + 2  # the dial's and the next visitor's sniffed connection
                and self.site_room(pooled))

    def spare_room(self) -> bool:
        """Whether the spare backend socket (``FallbackRouter.spare``) may be made: as a pool
        dial, it leaves the tunnels' reserve and the next visitor's sniffed connection their
        descriptors (made at the edge, it would only give way again). Off any visitor's path:
        the limit is read again (prlimit may have lowered it since the last tick)."""
        self.nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        return self.fds_left() > FD_RESERVE + 2

    def apply_write_share(self) -> None:
        """The write-buffer limit from the room of the last sample and the tunnels now: also
        run per new connection (a burst of them between two samples shares the same room).
        A power of two: it changes (and every tunnel is told) only when the share halves."""
        tunnels = self.tunnels
        share = self.tunnel_share()
        high = _power_of_two_under(share, self.config.write_buffer_limit)
        if high != self.write_high:
            self.write_high = high
            for tunnel in tunnels:
                transport = tunnel.transport
                if transport is not None and not transport.is_closing():
                    transport.set_write_buffer_limits(high=high)
        if self.fallback is not None:  # their kernel buffers are reserved apart (site_room)
            site = _power_of_two_under(self.write_room / self._shares() - self._batch, splice_mod.BUFFER_LIMIT)
            if site != self.site_high:
                self.site_high = site
                self.fallback.set_write_limits(site)

    def _tick(self, interval: float) -> None:
        now = self.loop.time()
        self.nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]  # prlimit may change it
        if self.fallback is not None and not self.fd_reserve:
            self._refill_fd_reserve()
        elapsed = now - self.last_tick
        self.last_tick = now
        config = self.config
        if now - self._generation_stamp >= config.reply_window:
            self._generation_stamp = now
            self.generation += 1
            self._forget_old_peers()
        for tunnel in list(self.tunnels):
            if tunnel.active:
                tunnel.active = False
                tunnel.idle = 0.0
            else:
                tunnel.idle += elapsed
            if tunnel.version is None and now - tunnel.born >= config.handshake_timeout:
                tunnel.close(stats.HANDSHAKE_TIMEOUT, f"no complete first record within {config.handshake_timeout:g} s")
            elif tunnel.idle >= config.idle_timeout:
                tunnel.close(stats.IDLE_TIMEOUT, f"no traffic for {config.idle_timeout:g} s")
        self._tick_handle = self.loop.call_later(interval, self._tick, interval)

    def _forget_old_peers(self) -> None:
        oldest = self.generation - 1
        for tunnel in self.tunnels:
            peers = tunnel.peers
            if peers and any(g < oldest for g in peers.values()):
                tunnel.peers = {a: g for a, g in peers.items() if g >= oldest}


def listen_socket(endpoint: Endpoint, reuse_port: bool = False) -> socket.socket:
    """A bound, non-blocking TCP listening socket; IPv6 sockets are IPv6-only so that
    ``0.0.0.0:443`` and ``[::]:443`` can both be given."""
    family = socket.AF_INET6 if ":" in endpoint.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        configure_listener(sock)  # every accepted connection inherits them
        sock.bind((endpoint.host, endpoint.port))
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {endpoint}: {exc.strerror}") from None
    return sock
