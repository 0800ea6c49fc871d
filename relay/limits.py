"""Connection caps and rate limits (pure: time is passed in).

The codec's record bound (``protocol.RecordReader.max_payload``) comes first; these are the
caps above it: how many connections, and how fast a tunnel or the whole process may push
packets to UDP.
"""

from __future__ import annotations

import ipaddress
from collections import Counter

from relay import stats

#: Default length of the IPv6 prefix that counts as one client: a /64 is what one
#: subscriber gets, and a host can pick any address in it.
DEFAULT_IPV6_PREFIX = 64


#: Bound of client_key's cache (cleared when full: a sprayer of addresses costs a parse
#: per connection, as without a cache, and never grows it).
MAX_CACHED_KEYS = 4096
_keys: dict[tuple[str, int], str] = {}


def client_key(host: str, ipv6_prefix: int = DEFAULT_IPV6_PREFIX) -> str:
    """The per-IP limiter's key for a client address: IPv4 as it is (an IPv4-mapped IPv6
    address becomes its IPv4 address), IPv6 as its ``/ipv6_prefix`` network, so that one
    host can't take a fresh slot with each of its 2**64 addresses. Cached: parsing an
    address costs tens of microseconds, and every connection needs its key."""
    key = _keys.get((host, ipv6_prefix))
    if key is None:
        if len(_keys) >= MAX_CACHED_KEYS:
            _keys.clear()
        key = _keys[(host, ipv6_prefix)] = _parse_key(host, ipv6_prefix)
    return key


def _parse_key(host: str, ipv6_prefix: int) -> str:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if ip.version == 4:
        return str(ip)
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    if ip.scope_id is not None:
        ip = ipaddress.IPv6Address(ip.packed)
    if ipv6_prefix >= 128:
        return str(ip)
    return str(ipaddress.IPv6Network((ip, ipv6_prefix), strict=False))


class TokenBucket:
    """A token bucket holding at most one second of ``rate``.

    ``refill`` is called once per socket read, ``take`` once per packet, so the per-packet
    cost is a comparison and a subtraction.
    """

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, now: float, burst: float | None = None) -> None:
        self.rate = rate
        #: what the bucket holds when full: one second of rate, or more when one second
        #: is less than one unit a caller takes (else a small rate would let nothing through)
        self.burst = rate if burst is None or burst < rate else burst
        self.tokens = self.burst
        self.stamp = now

    def refill(self, now: float) -> None:
        tokens = self.tokens + (now - self.stamp) * self.rate
        self.tokens = tokens if tokens < self.burst else self.burst
        self.stamp = now

    def take(self, amount: float) -> bool:
        if self.tokens >= amount:
            self.tokens -= amount
            return True
        return False


class RateLimit:
    """Packets/s and bytes/s together; a zero rate is unlimited.

    A rate below one packet per second, or below one packet's bytes per second, still
    lets a packet through now and then instead of none ever: the packet bucket holds at
    least one packet, and a packet larger than the byte bucket passes when the bucket is
    full and leaves it in debt, so the average stays at the rate.
    """

    __slots__ = ("packets", "bytes")

    def __init__(self, pps: float, bps: float, now: float) -> None:
        self.packets = TokenBucket(pps, now, 1) if pps else None
        self.bytes = TokenBucket(bps, now) if bps else None

    def refill(self, now: float) -> None:
        if self.packets is not None:
            self.packets.refill(now)
        if self.bytes is not None:
            self.bytes.refill(now)

    def allow(self, size: int) -> bool:
        """Takes one packet of ``size`` bytes if both buckets have room."""
        packets, bytes_ = self.packets, self.bytes
        if packets is not None and packets.tokens < 1:
            return False
        if bytes_ is not None:
            if bytes_.tokens < (size if size < bytes_.burst else bytes_.burst):
                return False
            bytes_.tokens -= size
        if packets is not None:
            packets.tokens -= 1
        return True


class ConnectionLimiter:
    """Counts open connections, in total and per client address."""

    __slots__ = ("max_total", "max_per_ip", "total", "per_ip")

    def __init__(self, max_total: int, max_per_ip: int) -> None:
        self.max_total = max_total
        self.max_per_ip = max_per_ip
        self.total = 0
        self.per_ip: Counter[str] = Counter()

    def acquire(self, ip: str) -> str | None:
        """Counts a connection from ``ip``; returns the refusal reason instead if over a cap."""
        if self.total >= self.max_total:
            return stats.MAX_CONNECTIONS
        if self.per_ip[ip] >= self.max_per_ip:
            return stats.MAX_CONNECTIONS_PER_IP
        self.total += 1
        self.per_ip[ip] += 1
        return None

    def release(self, ip: str) -> None:
        self.total -= 1
        left = self.per_ip[ip] - 1
        if left > 0:
            self.per_ip[ip] = left
        else:
            del self.per_ip[ip]


#: Descriptors a tunnel may hold: its TCP connection, its IPv4 and its IPv6 UDP socket.
FDS_PER_TUNNEL = 3
#: Descriptors a fallback (site) connection holds: the client's and the backend's.
FDS_PER_SITE_CONNECTION = 2
#: Descriptors a relay process uses besides its connections (listeners, health, loop,
#: logs, the tunnels' descriptor reserve with --fallback), when it has not counted them.
FDS_BASE = 64
#: Descriptors the tunnels never take: accept() and health scrapes need them. With none
#: left, libuv's accept loop closes every new connection itself (its EMFILE trick):
#: uncounted, and /metrics with them. Tunnels are refused (file_descriptors_exhausted)
#: and IPv6 sockets not opened (udp_socket_unavailable) before they would take these.
FD_HEADROOM = 8


def tunnels_within(nofile: int, in_use: int, fds_each: int, site_fds: int = 0) -> int:
    """How many tunnels of ``fds_each`` descriptors fit beside ``in_use`` and the headroom."""
    return max(0, (nofile - FD_HEADROOM - in_use - site_fds) // fds_each)


def descriptor_warning(max_connections: int, nofile: int, in_use: int = FDS_BASE,
                       fallback_max_connections: int = 0) -> str | None:
    """What ``--max-connections`` (and ``--fallback-max-connections``) promise that
    RLIMIT_NOFILE can't keep, with the real ceiling: ``in_use`` is what the process holds
    before its first connection (counted at start)."""
    site = fallback_max_connections * FDS_PER_SITE_CONNECTION
    needed = max_connections * FDS_PER_TUNNEL + site + in_use + FD_HEADROOM
    if nofile >= needed:
        return None
    also = f" and --fallback-max-connections {fallback_max_connections}" if fallback_max_connections else ""
    return (
        f"--max-connections {max_connections}{also} need up to {needed} file descriptors per process, "
        f"but RLIMIT_NOFILE is {nofile} ({in_use} in use at start, {FD_HEADROOM} kept for accepts and scrapes): "
        f"at most {tunnels_within(nofile, in_use, 2, site)} tunnels per process "
        f"({tunnels_within(nofile, in_use, FDS_PER_TUNNEL, site)} if every tunnel also sends IPv6)"
        f"{' with the site connections at their cap' if site else ''}; more are refused as file_descriptors_exhausted "
        f"(raise the limit, e.g. ulimit -n or the container runtime's nofile, or lower the caps)")


def port_warning(max_connections: int, workers: int, ports: tuple[int, int]) -> str | None:
    """Ephemeral UDP ports: one per tunnel and address family, shared by every worker and
    every other process."""
    low, high = ports
    available = high - low + 1
    total = max_connections * workers
    if total <= available:
        return None
    return (
        f"--max-connections {max_connections} x {workers} worker(s) = {total} tunnels, but only {available} ephemeral "
        f"ports ({low}-{high}, net.ipv4.ip_local_port_range) for their UDP sockets: at most {available} tunnels "
        f"(fewer if other processes use ports); more are refused as ephemeral_ports_exhausted")


def ceiling_warnings(max_connections: int, workers: int, nofile: int, ports: tuple[int, int],
                     fallback_max_connections: int = 0, in_use: int = FDS_BASE) -> list[str]:
    """Both warnings above, those that apply."""
    found = (descriptor_warning(max_connections, nofile, in_use, fallback_max_connections),
             port_warning(max_connections, workers, ports))
    return [w for w in found if w is not None]
