"""Prometheus text exposition of a stats snapshot (pure)."""

from __future__ import annotations

#: (snapshot key or prefix, metric name, type, help, label name or None)
_SERIES = (
    ("tunnels_active", "zt_relay_tunnels_active", "gauge", "Tunnels currently open.", None),
    ("tunnels_opened", "zt_relay_tunnels_opened_total", "counter", "Tunnels accepted.", None),
    ("closed", "zt_relay_tunnels_closed_total", "counter", "Tunnels closed, by reason.", "reason"),
    ("frames", "zt_relay_frames_total", "counter", "ZeroTier packets relayed, by direction.", "direction"),
    ("bytes", "zt_relay_bytes_total", "counter", "ZeroTier packet bytes relayed (without framing), by direction.", "direction"),
    ("dropped", "zt_relay_dropped_total", "counter", "Packets dropped, by reason.", "reason"),
    ("refused", "zt_relay_connections_refused_total", "counter", "Connections refused at accept, by reason.", "reason"),
    ("connections_open", "zt_relay_connections_open", "gauge", "TCP connections open: tunnels, connections waiting for a PROXY header or being sniffed, tunnels closing (not fallback splices).", None),
    ("client_addresses", "zt_relay_client_addresses", "gauge", "Client addresses (or IPv6 prefixes) holding a per-IP connection slot.", None),
    ("write_buffer_bytes", "zt_relay_write_buffer_bytes", "gauge", "Bytes queued toward clients in the relay's write buffers.", None),
    ("memory_bytes", "zt_relay_memory_bytes", "gauge", "Memory used as --max-memory measures it (the cgroup's working set, else the RSS).", None),
    ("udp_sockets_open", "zt_relay_udp_sockets_open", "gauge", "UDP sockets the tunnels hold (one per tunnel, two with IPv6): each holds an ephemeral port.", None),
    ("udp_send_errors", "zt_relay_udp_send_errors_total", "counter", "UDP sends that failed.", None),
    ("fallback_active", "zt_relay_fallback_connections_active", "gauge", "Connections spliced to the --fallback backend now.", None),
    ("fallback_preconnected", "zt_relay_fallback_preconnected", "gauge", "Backend connections open and unused, waiting for the next site connection (--fallback-preconnect).", None),
    ("fallback_preconnect_paused", "zt_relay_fallback_preconnect_paused", "gauge", "Relay processes whose --fallback-preconnect pool is paused: the site spoke first, or closed or reset idle connections, on several pooled connections in a row (the log says which).", None),
    ("fallback_preconnect_taken", "zt_relay_fallback_preconnect_taken_total", "counter", "Site connections sent on a pooled backend connection instead of a dial (--fallback-preconnect).", None),
    ("fallback_preconnect_discarded", "zt_relay_fallback_preconnect_discarded_total", "counter", "Pooled backend connections closed unused, by reason (--fallback-preconnect).", "reason"),
    ("fallback", "zt_relay_fallback_connections_total", "counter", "Connections sent to the --fallback backend, by result.", "result"),
    ("fallback_closed", "zt_relay_fallback_closed_total", "counter", "Fallback connections closed, by reason.", "reason"),
    ("fallback_bytes", "zt_relay_fallback_bytes_total", "counter", "Bytes spliced to and from the --fallback backend, by direction.", "direction"),
    ("fallback_dns_failures", "zt_relay_fallback_dns_failures_total", "counter", "Lookups of the --fallback backend's name that failed, by reason.", "reason"),
)
#: Directions of each direction-labelled series (snapshot keys ``<key>_<direction>``).
DIRECTIONS = {"fallback_bytes": ("to_backend", "to_client")}

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def render(snapshot: dict[str, int], extra_gauges: dict[str, tuple[str, float]] | None = None) -> str:
    """Renders a ``stats.snapshot`` (``name`` and ``name:label`` keys) as exposition text.

    ``frames_to_udp``-style keys become ``direction="to_udp"`` samples. ``extra_gauges``
    maps metric names to ``(help, value)``.
    """
    lines: list[str] = []
    for key, name, kind, help_text, label in _SERIES:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        if label is None:
            lines.append(f"{name} {snapshot.get(key, 0)}")
        elif label == "direction":
            for direction in DIRECTIONS.get(key, ("to_udp", "to_tcp")):
                lines.append(f'{name}{{direction="{direction}"}} {snapshot.get(f"{key}_{direction}", 0)}')
        else:
            prefix = key + ":"
            for k in sorted(snapshot):
                if k.startswith(prefix):
                    lines.append(f'{name}{{{label}="{k[len(prefix):]}"}} {snapshot[k]}')
    for name, (help_text, value) in (extra_gauges or {}).items():
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} gauge")
        lines.append(f"{name} {value}")
    return "\n".join(lines) + "\n"
