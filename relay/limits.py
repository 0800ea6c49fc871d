"""Connection caps and rate limits (pure: time is passed in).

The codec's record bound (``protocol.RecordReader.max_payload``) comes first; these are the
caps above it: how many connections, and how fast a tunnel or the whole process may push
packets to UDP.
"""

from __future__ import annotations

from collections import Counter

from relay import stats


class TokenBucket:
    """A token bucket holding at most one second of ``rate``.

    ``refill`` is called once per socket read, ``take`` once per packet, so the per-packet
    cost is a comparison and a subtraction.
    """

    __slots__ = ("rate", "tokens", "stamp")

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.tokens = rate
        self.stamp = now

    def refill(self, now: float) -> None:
        tokens = self.tokens + (now - self.stamp) * self.rate
        self.tokens = tokens if tokens < self.rate else self.rate
        self.stamp = now

    def take(self, amount: float) -> bool:
        if self.tokens >= amount:
            self.tokens -= amount
            return True
        return False


class RateLimit:
    """Packets/s and bytes/s together; a zero rate is unlimited."""

    __slots__ = ("packets", "bytes")

    def __init__(self, pps: float, bps: float, now: float) -> None:
        self.packets = TokenBucket(pps, now) if pps else None
        self.bytes = TokenBucket(bps, now) if bps else None

    @property
    def unlimited(self) -> bool:
        return self.packets is None and self.bytes is None

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
        if bytes_ is not None and not bytes_.take(size):
            return False
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
