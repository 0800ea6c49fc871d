"""Counters the hot path bumps, and the snapshot every exporter reads.

The relay counts with plain integers: an attribute increment per packet instead of a
metrics-API call per packet. Frame and byte counts live on each tunnel (its span reports
them) and are folded in here when it closes; ``snapshot`` adds the live tunnels' counts, so
Prometheus, OpenTelemetry and the worker supervisor all read one consistent dict.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Protocol

from relay import metrics

# Close reasons (label values of zt_relay_tunnels_closed_total).
CLIENT_CLOSED = "client_closed"
CONNECTION_ERROR = "connection_error"
IDLE_TIMEOUT = "idle_timeout"
HANDSHAKE_TIMEOUT = "handshake_timeout"
NO_HELLO = "no_hello"
PROXY_HEADER = "proxy_protocol_error"
DRAIN_TIMEOUT = "drain_timeout"
UDP_SOCKET_ERROR = "udp_socket_error"
# Refusals at admission when the UDP socket can't be had (besides UDP_SOCKET_ERROR).
EPHEMERAL_PORTS = "ephemeral_ports_exhausted"
FILE_DESCRIPTORS = "file_descriptors_exhausted"
MEMORY_PRESSURE = "memory_pressure"
#: An exception a handler did not expect: counted and logged in one line, never a traceback.
INTERNAL_ERROR = "internal_error"
# ProtocolError reasons (bad_record_header, record_too_large, bad_address_type, ...) are
# used as close reasons as they are.

# Drop reasons (zt_relay_dropped_total) besides the filter's own.
PACKET_TOO_SMALL = "packet_too_small"
REPLY_TOO_LARGE = "reply_too_large"
REPLY_NOT_ALLOWED = "reply_not_allowed"
WRITE_BUFFER_FULL = "write_buffer_full"
TUNNEL_RATE = "tunnel_rate_limited"
GLOBAL_RATE = "global_rate_limited"
UDP_BUFFER_FULL = "udp_send_buffer_full"
UDP_SOCKET_UNAVAILABLE = "udp_socket_unavailable"  # e.g. no IPv6 in the pod: the packet goes
#: The kernel has no route to that one destination (ENETUNREACH, EHOSTUNREACH): the packet
#: goes, the tunnel and its other destinations go on.
UNREACHABLE = "unreachable"
#: A local firewall refused it (EPERM, EACCES: an iptables OUTPUT rule, a NetworkPolicy's
#: egress rules): the packet goes, the tunnel and its other destinations go on.
EGRESS_DENIED = "egress_denied"

# Refused connections (zt_relay_connections_refused_total).
MAX_CONNECTIONS = "max_connections"
MAX_CONNECTIONS_PER_IP = "max_connections_per_ip"
DRAINING = "draining"
PROXY_UNTRUSTED = "proxy_source_not_trusted"


class TunnelCounts(Protocol):
    frames_to_udp: int
    bytes_to_udp: int
    frames_to_tcp: int
    bytes_to_tcp: int


FRAME_FIELDS = ("frames_to_udp", "bytes_to_udp", "frames_to_tcp", "bytes_to_tcp")


class Stats:
    """Process-wide counters. Not thread-safe: the event loop is the only writer."""

    __slots__ = ("opened", "closed", "dropped", "refused", "udp_send_errors", "done")

    def __init__(self) -> None:
        self.opened = 0
        self.closed: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self.udp_send_errors = 0
        #: Frame and byte totals of tunnels that have closed.
        self.done = dict.fromkeys(FRAME_FIELDS, 0)

    def tunnel_closed(self, tunnel: TunnelCounts, reason: str) -> None:
        self.closed[reason] += 1
        done = self.done
        done["frames_to_udp"] += tunnel.frames_to_udp
        done["bytes_to_udp"] += tunnel.bytes_to_udp
        done["frames_to_tcp"] += tunnel.frames_to_tcp
        done["bytes_to_tcp"] += tunnel.bytes_to_tcp

    def snapshot(self, live: Iterable[TunnelCounts]) -> dict[str, int]:
        """A flat dict of every counter: ``name`` or ``name:label`` keys."""
        snap = dict(self.done)
        active = 0
        for t in live:
            active += 1
            snap["frames_to_udp"] += t.frames_to_udp
            snap["bytes_to_udp"] += t.bytes_to_udp
            snap["frames_to_tcp"] += t.frames_to_tcp
            snap["bytes_to_tcp"] += t.bytes_to_tcp
        snap["tunnels_active"] = active
        snap["tunnels_opened"] = self.opened
        snap["udp_send_errors"] = self.udp_send_errors
        for prefix, counter in (("closed", self.closed), ("dropped", self.dropped), ("refused", self.refused)):
            for label, value in counter.items():
                snap[f"{prefix}:{label}"] = value
        return snap


#: Snapshot keys that are levels, not totals: a worker that has exited contributes none.
#: Read from the metric types, so that a new gauge can't be kept like a counter.
GAUGES = frozenset(key for key, _, kind, _, _ in metrics._SERIES if kind == "gauge")
#: Gauges that measure the whole pod (the cgroup), which every worker reports: not summed.
POD_WIDE = frozenset({"memory_bytes"})


def counters(snapshot: dict[str, int]) -> dict[str, int]:
    """The totals of a snapshot (what an exited worker leaves behind)."""
    return {k: v for k, v in snapshot.items() if k not in GAUGES}


def merge(snapshots: Iterable[dict[str, int]]) -> dict[str, int]:
    """Sums snapshots of several worker processes (pod-wide gauges: the largest)."""
    total: Counter[str] = Counter()
    pod: dict[str, int] = {}
    for snap in snapshots:
        total.update(snap)
        for key in POD_WIDE.intersection(snap):
            pod[key] = max(pod.get(key, 0), snap[key])
    for key, value in pod.items():
        total[key] = value
    return dict(total)
