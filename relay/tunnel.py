"""One tunnel: a client's TCP connection and the UDP socket it owns. This is the hot path.

Per packet, in both directions, the work is kept to a few dict lookups and integer
operations (see the README's benchmark section for what was measured):

- TCP to UDP: ``RecordReader`` calls ``_on_packet`` per record with the read buffer and
  bounds; the raw address bytes key the tunnel's own verdict cache (the destination filter
  runs once per address, not per packet). Slicing bytes measured cheaper per packet than
  memoryview slices (a memoryview key hashes without caching and compares slowly).
- UDP to TCP: one plain non-blocking socket per tunnel, watched with ``loop.add_reader``
  and drained in batches; each reply's header comes from one struct pack with a cached
  address prefix; the batch goes to the transport in one ``writelines``.
- Counting is plain integer attributes; idle tracking is a flag the housekeeping tick reads.

Everything that is not per packet (admission, timeouts, telemetry, closing) lives in
``Relay`` (server.py) or below the hot methods here.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
from typing import TYPE_CHECKING

from relay import protocol, proxy_protocol, stats, streams
from relay.limits import RateLimit, TokenBucket
from relay.streams import CLOSE_GRACE  # noqa: F401 (re-exported)

if TYPE_CHECKING:
    from relay.server import Relay

log = logging.getLogger("zt_relay.tunnel")

#: Most datagrams read per wakeup: enough to batch replies, few enough to stay fair.
UDP_BATCH = 32
#: Largest datagram read; larger ones are truncated by the kernel and then dropped as too
#: large (any record bound is below this).
UDP_READ_SIZE = 65536
#: Destinations one tunnel may have in its reply window; a ZeroTier node talks to roots and
#: a handful of peers, a scanner to thousands.
MAX_PEERS = 1024
TOO_MANY_DESTINATIONS = "too_many_destinations"
NEW_DESTINATION_RATE = "new_destination_rate_limited"
#: The burst of new destinations a tunnel may add at once, in seconds of its rate
#: (``--new-destination-rate``; see config.py for why the default fits ZeroTier).
NEW_DESTINATION_BURST_SECONDS = 8
#: Destination verdicts one tunnel caches (cleared when full). Per tunnel, so that a tunnel
#: spraying addresses only ever evicts its own verdicts; a miss costs one compiled-filter
#: lookup (about a microsecond); as many as the destinations it may have (MAX_PEERS), so
#: a node talking to many peers does not re-spend its new-destination budget on them.
MAX_CACHED_VERDICTS = MAX_PEERS

#: sendto errors of an IPv6 socket that mean the pod has no IPv6 (``disable_ipv6``: no
#: source address), not a problem of one destination.
_NO_IPV6 = frozenset((errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT))
#: sendto errors about this one destination, in either family: a per-packet drop by reason
#: (the tunnel and its other destinations go on), with the log line said once per tunnel.
_PER_PACKET_DROPS = {
    # no route (none at all, or an unreachable route)
    **dict.fromkeys((errno.ENETUNREACH, errno.EHOSTUNREACH), (
        stats.UNREACHABLE, "no route to %s for the tunnel from %s: %s (dropped as unreachable)")),
    # refused by this host (netfilter's OUTPUT DROP gives EPERM; EACCES from other hooks)
    **dict.fromkeys((errno.EPERM, errno.EACCES), (
        stats.EGRESS_DENIED, "UDP to %s refused by this host (a firewall or NetworkPolicy, a full conntrack "
                             "table, a broadcast address) for the tunnel from %s: %s (dropped as egress_denied)")),
}

_V4_HEADER = struct.Struct(">3sH7s").pack  # record header + 04 ip port
_V6_HEADER = struct.Struct(">3sH19s").pack  # record header + 06 ip port
_LEGACY_HEADER = struct.Struct(">3sH").pack


class Tunnel(asyncio.Protocol):
    __slots__ = (
        "relay", "transport", "reader", "client", "version", "udp4", "udp6", "peers", "verdicts",
        "frames_to_udp", "bytes_to_udp", "frames_to_tcp", "bytes_to_tcp",
        "active", "idle", "born", "paused", "reason", "rate", "limited", "burst", "span", "warned", "admitted",
        "_proxy_buf", "closer", "slot", "new_destinations", "udp6_retry", "sent_mark",
    )

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.transport: asyncio.Transport | None = None
        self.reader = protocol.RecordReader(self._on_first_record, relay.config.max_record_size)
        self.client: tuple[str, int] = ("?", 0)
        self.version: str | None = None  # client version from the hello; "legacy" without one
        self.udp4: socket.socket | None = None
        self.udp6: socket.socket | None = None
        #: destination -> reply-window generation of the last packet sent to it
        self.peers: dict[tuple, int] = {}
        #: raw address prefix (04 ip port / 06 ip port) -> sendto address, or drop reason
        self.verdicts: dict[bytes, tuple | str] = {}
        self.udp6_retry = 0.0  # loop time before which opening the IPv6 socket is not retried
        self.frames_to_udp = self.bytes_to_udp = self.frames_to_tcp = self.bytes_to_tcp = 0
        self.active = True
        self.idle = 0.0
        self.born = relay.loop.time()
        self.paused = False
        self.burst = 1  # datagrams to read on the next UDP wakeup (adapts; see _relay_replies)
        self.sent_mark = 0  # frames_to_udp at the last UDP wakeup (see _relay_replies)
        self.reason: str | None = None
        self.rate: RateLimit | None = None
        self.limited = relay.global_rate is not None  # any rate limit to apply per packet
        self.span = None
        self.warned: set[str] | None = None
        self.admitted = False
        self._proxy_buf: bytes | None = None
        self.closer: streams.Closing | None = None  # resets a close that doesn't flush
        self.slot: str | None = None  # the per-IP limiter key this connection holds
        rate = relay.config.new_destination_rate
        #: budget of destinations this tunnel may add to its reply window (None: unlimited)
        self.new_destinations = TokenBucket(rate, self.born, rate * NEW_DESTINATION_BURST_SECONDS) if rate else None

    # -- hot path: TCP to UDP ---------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self.active = True
        if self._proxy_buf is not None:
            try:
                self._feed_proxy_header(data)
            except Exception as exc:  # as below: a reason and one line, never a traceback
                self.close(stats.INTERNAL_ERROR, f"{exc.__class__.__name__}: {exc}")
            return
        if self.limited:
            self._refill()
        try:
            self.reader.feed(data)
        except protocol.ProtocolError as exc:
            self.close(exc.reason, exc.detail)
        except Exception as exc:  # a bug, not the client's: close with a reason, no traceback
            self.close(stats.INTERNAL_ERROR, f"{exc.__class__.__name__}: {exc}")

    def _refill(self) -> None:
        now = self.relay.loop.time()
        if self.rate is not None:
            self.rate.refill(now)
        if self.relay.global_rate is not None:
            self.relay.global_rate.refill(now)

    def _on_packet(self, data: bytes, start: int, end: int) -> None:
        if start == end:  # an empty record has no type byte: data[start] is the next record's
            self.drop(stats.PACKET_TOO_SMALL)
            return
        kind = data[start]
        if kind == 4:
            prefix = 7
            sock = self.udp4
        elif kind == 6:
            prefix = 19
            sock = self.udp6 or self._open_udp6()
            if sock is None:
                return  # dropped and counted: the tunnel goes on with IPv4
        else:
            raise protocol.ProtocolError("bad_address_type", f"unknown address type {kind}")
        relay = self.relay
        size = end - start - prefix
        if size < relay.min_packet:  # also keeps the address slice inside this record
            self.drop(stats.PACKET_TOO_SMALL)
            return
        # Budgets first: a packet over them costs no verdict, whatever its address.
        if self.limited:
            if self.rate is not None and not self.rate.allow(size):
                self.drop(stats.TUNNEL_RATE)
                return
            if relay.global_rate is not None and not relay.global_rate.allow(size):
                self.drop(stats.GLOBAL_RATE)
                return
        key = data[start:start + prefix]
        dest = self.verdicts.get(key)
        if dest is None:
            dest = self._new_destination(key)
        if dest.__class__ is str:
            self.drop(dest)
            return
        peers = self.peers
        generation = relay.generation
        seen = peers.get(dest)
        if seen != generation:
            if seen is None and len(peers) >= MAX_PEERS:
                self.drop(TOO_MANY_DESTINATIONS)
                return
            peers[dest] = generation
        try:
            sock.sendto(data[start + prefix:end], dest)
        except BlockingIOError:
            self.drop(stats.UDP_BUFFER_FULL)
            return
        except OSError as exc:
            self._send_failed(exc, kind, dest, seen is None)
            return
        self.frames_to_udp += 1
        self.bytes_to_udp += size

    def _send_failed(self, exc: OSError, kind: int, dest: tuple, new: bool) -> None:
        # Out of line, so that the hot method's successful path stays as it was.
        drop = _PER_PACKET_DROPS.get(exc.errno)
        if drop is not None:
            reason, message = drop
            if new:  # a destination the kernel won't send to holds no reply window
                self.peers.pop(dest, None)
            self.warn_once(reason, message, dest, _fmt(self.client), exc)
            self.relay.stats.dropped[reason] += 1
        elif kind == 6 and exc.errno in _NO_IPV6:
            # IPv6 disabled or absent in the pod: the kernel still opens and binds the
            # socket, only the send fails. Counted like a socket that can't be opened.
            self.warn_once("udp6_send", "no IPv6 toward %s for the tunnel from %s: %s", dest, _fmt(self.client), exc)
            self.drop(stats.UDP_SOCKET_UNAVAILABLE)
        else:
            self.relay.stats.udp_send_errors += 1
            self.warn_once("udp_send_error", "UDP send to %s failed: %s", dest, exc)

    def _new_destination(self, key: bytes) -> tuple | str:
        # An address this tunnel has no verdict for (a new one, or one evicted from its own
        # cache): the new-destination budget is spent before any verdict is computed, so a
        # client spraying addresses, refused ones included, gets few verdicts. A refusal by
        # the budget is not cached: the address may be tried again later.
        new = self.new_destinations
        if new is not None:
            new.refill(self.relay.loop.time())
            if not new.take(1):
                return NEW_DESTINATION_RATE
        verdicts = self.verdicts
        if len(verdicts) >= MAX_CACHED_VERDICTS:
            verdicts.clear()
        dest = verdicts[key] = self.relay.resolve(key)
        return dest

    # -- hot path: UDP to TCP ---------------------------------------------------------------

    def _on_udp4_readable(self) -> None:
        self._relay_replies(self.udp4, _V4_HEADER, 7, self.relay.v4_prefixes)

    def _on_udp6_readable(self) -> None:
        self._relay_replies(self.udp6, _V6_HEADER, 19, self.relay.v6_prefixes)

    def _relay_replies(self, sock: socket.socket, header, prefix_size: int, prefixes: dict) -> None:
        relay = self.relay
        peers = self.peers
        generation = relay.generation
        max_size = relay.max_reply
        min_size = relay.min_packet
        out = []
        frames = size_total = 0
        # Read as many datagrams as the last wakeup found, without probing for one more:
        # the reader is level-triggered, so anything left fires it again on the next loop
        # iteration, while the probe would cost a failing syscall (and an exception) on
        # every wakeup: a third of the syscalls in ping-pong.
        limit = self.burst
        read = 0
        while read < limit:
            try:
                data, addr = sock.recvfrom(UDP_READ_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # e.g. a queued ICMP error; the socket stays usable
                self.warn_once("udp_recv_error", "UDP receive failed: %s", exc)
                break
            read += 1
            seen = peers.get(addr)
            if seen is None or generation - seen > 1:
                self.drop(stats.REPLY_NOT_ALLOWED)
                continue
            size = len(data)
            if size > max_size - prefix_size:
                self.drop(stats.REPLY_TOO_LARGE)
                continue
            if size < min_size:
                self.drop(stats.PACKET_TOO_SMALL)
                continue
            if self.paused:
                self.drop(stats.WRITE_BUFFER_FULL)
                continue
            address = prefixes.get(addr)
            if address is None:
                address = relay.reply_prefix(addr)
            out.append(header(protocol.RECORD_TYPE, size + prefix_size, address))
            out.append(data)
            frames += 1
            size_total += size
        # Drained early: expect as many next time. Hit the limit: there may be more, so
        # allow twice as many (bounded, to stay fair to other tunnels); except one reply
        # to the one packet sent since the last wakeup (ping-pong, a request and its
        # answer): probing for a second would fail every other time (a recvfrom and an
        # exception per round trip). A backlog still grows: replies without a request,
        # or to several.
        sent = self.frames_to_udp
        if read < limit:
            self.burst = read or 1
        elif limit > 1 or sent - self.sent_mark != 1:
            self.burst = min(limit * 2, UDP_BATCH)
        self.sent_mark = sent
        if out:
            self.active = True
            self.frames_to_tcp += frames
            self.bytes_to_tcp += size_total
            if frames == 1:
                # One reply (the latency case): one buffer is one plain send() in uvloop;
                # writelines builds an iovec context for a writev.
                self.transport.write(out[0] + out[1])
            else:
                self.transport.writelines(out)

    # -- flow control -------------------------------------------------------------------------

    def pause_writing(self) -> None:
        # The client reads slower than its peers send: drop replies instead of buffering.
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False

    # -- lifecycle (not per packet) -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.client = (peer[0], peer[1]) if peer else ("?", 0)
        self.relay.connection_made(self)
        if self.relay.config.proxy_protocol:
            # Admission waits for the header: limits must count the real client.
            if self.relay.hold(self):
                self._proxy_buf = b""
            return
        self.relay.admit(self)

    def take_over(self, transport: asyncio.BaseTransport, client: tuple[str, int], data: bytes) -> None:
        """A connection the fallback's sniffer read first (``fallback.Sniffer``): it was
        admitted as a connection (its PROXY header, if any, believed from a trusted balancer
        and parsed): ``client`` is whom it named, ``data`` the bytes after the header. Counted
        as the client's from here, never as the balancer's again."""
        self.transport = transport  # type: ignore[assignment]
        self.client = client
        self.relay.connection_made(self)
        if self.relay.admit(self) and data:
            self.data_received(data)

    def _feed_proxy_header(self, data: bytes) -> None:
        buf = self._proxy_buf + data
        try:
            parsed = proxy_protocol.parse(buf)
        except protocol.ProtocolError as exc:
            self.close(exc.reason, exc.detail)
            return
        if parsed is None:
            if len(buf) > 536:  # the v2 bound with TLVs we don't use; never buffer more
                self.close(proxy_protocol.REASON, "PROXY header too long")
            else:
                self._proxy_buf = buf
            return
        address, consumed = parsed
        self._proxy_buf = None
        if address is not None:
            self.client = address
        if self.relay.admit(self) and len(buf) > consumed:
            self.data_received(buf[consumed:])

    def open_udp(self) -> None:
        """Creates the tunnel's IPv4 UDP socket; called at admission, before any record."""
        self.udp4 = self._udp_socket(socket.AF_INET, "0.0.0.0", self._on_udp4_readable)

    def _open_udp6(self) -> socket.socket | None:
        # Created on the first IPv6 record (synchronously, so that record is not lost):
        # most clients never send one, and IPv6 may be absent in the pod or out of ports.
        # Then the packet is dropped and counted and the tunnel goes on; the next try is
        # a second later, not one failing syscall per packet.
        now = self.relay.loop.time()
        if now < self.udp6_retry:
            self.drop(stats.UDP_SOCKET_UNAVAILABLE)
            return None
        if self.relay.fds_short:
            self.udp6_retry = now + 1.0
            self.warn_once("udp6_open", "no descriptor for an IPv6 UDP socket for the tunnel from %s (RLIMIT_NOFILE)", _fmt(self.client))
            self.drop(stats.UDP_SOCKET_UNAVAILABLE)
            return None
        try:
            self.udp6 = self._udp_socket(socket.AF_INET6, "::", self._on_udp6_readable)
        except OSError as exc:
            self.udp6_retry = now + 1.0
            self.warn_once("udp6_open", "cannot open an IPv6 UDP socket for the tunnel from %s: %s", _fmt(self.client), exc)
            self.drop(stats.UDP_SOCKET_UNAVAILABLE)
            return None
        return self.udp6

    def _udp_socket(self, family: int, host: str, callback) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            size = self.relay.udp_receive_buffer
            if size is not None:  # under a memory budget: part of the tunnel's reserved worst case
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
            sock.bind((host, 0))
            self.relay.loop.add_reader(sock.fileno(), callback)
        except BaseException:
            sock.close()
            raise
        self.relay.udp_sockets += 1
        return sock

    def _on_first_record(self, data: bytes, start: int, end: int) -> None:
        if end - start == protocol.HELLO_SIZE:
            self.version = protocol.decode_hello(data[start:end])
            self.reader.on_record = self._on_packet
            self.relay.hello(self)
            return
        target = self.relay.legacy_target
        if target is None:
            raise protocol.ProtocolError(stats.NO_HELLO, "first record is not a hello (a pre-1.2 client?) and no --legacy-target is set")
        self.version = "legacy"
        self.reader.on_record = self._on_legacy_packet
        loop = self.relay.loop
        loop.remove_reader(self.udp4.fileno())
        loop.add_reader(self.udp4.fileno(), self._on_legacy_readable)
        self.relay.hello(self)
        self._on_legacy_packet(data, start, end)

    def _on_legacy_packet(self, data: bytes, start: int, end: int) -> None:
        # Pre-1.2 clients send bare packets, all for one target, and get bare replies.
        size = end - start
        relay = self.relay
        if size < relay.min_packet:
            self.drop(stats.PACKET_TOO_SMALL)
            return
        if self.limited:
            if self.rate is not None and not self.rate.allow(size):
                self.drop(stats.TUNNEL_RATE)
                return
            if relay.global_rate is not None and not relay.global_rate.allow(size):
                self.drop(stats.GLOBAL_RATE)
                return
        try:
            self.udp4.sendto(data[start:end], relay.legacy_target)
        except OSError as exc:
            self.relay.stats.udp_send_errors += 1
            self.warn_once("udp_send_error", "UDP send to legacy target failed: %s", exc)
            return
        self.frames_to_udp += 1
        self.bytes_to_udp += size

    def _on_legacy_readable(self) -> None:
        out = []
        target = self.relay.legacy_target
        for _ in range(UDP_BATCH):
            try:
                data, addr = self.udp4.recvfrom(UDP_READ_SIZE)
            except OSError:
                break
            if addr != target:
                self.drop(stats.REPLY_NOT_ALLOWED)
                continue
            if self.paused or len(data) > self.relay.config.max_record_size:
                self.drop(stats.WRITE_BUFFER_FULL if self.paused else stats.REPLY_TOO_LARGE)
                continue
            out.append(_LEGACY_HEADER(protocol.RECORD_TYPE, len(data)))
            out.append(data)
            self.frames_to_tcp += 1
            self.bytes_to_tcp += len(data)
        if out:
            self.active = True
            self.transport.writelines(out)

    def eof_received(self) -> bool:
        if self._proxy_buf is not None:
            self.close(proxy_protocol.REASON, "EOF before the PROXY header ended")
            return True
        # Closed like any other close (not by the transport on its own, which would leave
        # the kernel's queue behind as an orphan): what is queued gets the grace.
        self.close(stats.CLIENT_CLOSED)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.reason is None:
            self.reason = stats.CONNECTION_ERROR if exc is not None else stats.CLIENT_CLOSED
        if self.closer is not None:
            self.closer.cancel()
            self.closer = None
        self._close_udp()
        self.reader.on_record = _closed
        self.relay.tunnel_lost(self)

    def close(self, reason: str, detail: str | None = None) -> None:
        """Closes the tunnel once; the first reason given is the one recorded.

        The UDP socket goes at once (no more replies for a closing tunnel). What is already
        queued toward the client gets ``CLOSE_GRACE`` seconds to reach it; a client that
        isn't reading by then gets a reset, so neither the relay's buffer nor the kernel's
        send queue outlives the grace.
        """
        if self.reason is not None:
            return
        self.reason = reason
        if not self.admitted:  # still waiting for its PROXY header: a refusal, counted as one
            self.relay.stats.refused[reason] += 1
        if detail:
            log.warning("closing tunnel from %s: %s (%s)", _fmt(self.client), reason, detail)
        self._close_udp()
        self.reader.on_record = _closed
        self.closer = streams.close(self.transport, self.relay.loop)

    def _close_udp(self) -> None:
        loop = self.relay.loop
        for sock in (self.udp4, self.udp6):
            if sock is not None:
                loop.remove_reader(sock.fileno())
                sock.close()
                self.relay.udp_sockets -= 1
        self.udp4 = self.udp6 = None

    # -- drops ----------------------------------------------------------------------------------

    def drop(self, reason: str) -> None:
        self.relay.stats.dropped[reason] += 1
        self.warn_once(reason, "dropping packets of tunnel from %s: %s", _fmt(self.client), reason)

    def warn_once(self, key: str, message: str, *args) -> None:
        """Logs a per-packet problem once per tunnel; the metric counts every occurrence."""
        if self.warned is None:
            self.warned = set()
        if key not in self.warned:
            self.warned.add(key)
            log.warning(message, *args)


def _closed(data: bytes, start: int, end: int) -> None:
    """Records after close are ignored."""


def _fmt(addr: tuple) -> str:
    return f"[{addr[0]}]:{addr[1]}" if ":" in str(addr[0]) else f"{addr[0]}:{addr[1]}"
