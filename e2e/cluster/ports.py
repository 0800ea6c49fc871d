"""`up`'s pre-flight: the fixed TCP ports the cluster's components listen on must be free.

A component whose port is taken exits on bind, but `up` waits on readiness probes, and some are
only a URL: another program answering it (a developer's registry on 127.0.0.1:23795, a k3s
kube-proxy's healthz on 10256) would look "ready", and containerd would pull from the foreign
registry. So `up` refuses first, naming the port, its address and the component.

Read from /proc/net/tcp{,6} (this network namespace's sockets): no `ss` parsing, and a pure
function of that text.
"""

import ipaddress
from pathlib import Path

from e2e.cluster.layout import Layout

LISTEN = "0A"
WILDCARDS = frozenset({"0.0.0.0", "::"})


def fixed_listeners(layout: Layout) -> tuple[tuple[str, str, int], ...]:
    """(component, address, port) of every fixed TCP port `up`'s components bind (configs.py)."""
    return (
        ("etcd (clients)", "127.0.0.1", layout.etcd_client_port),
        ("etcd (peers)", "127.0.0.1", layout.etcd_peer_port),
        ("kube-apiserver", layout.node_ip, layout.apiserver_port),
        ("kube-controller-manager", "127.0.0.1", 10257),
        ("kube-scheduler", "127.0.0.1", 10259),
        ("registry", "127.0.0.1", layout.registry_port),
        ("kubelet", layout.node_ip, 10250),
        ("kubelet (healthz)", "127.0.0.1", 10248),
        ("kube-proxy (healthz)", "127.0.0.1", 10256),
        ("kube-proxy (metrics)", "127.0.0.1", 10249),
        ("metrics-server", layout.node_ip, layout.metrics_server_port),
        ("coredns", layout.node_ip, 53),  # TCP here; its UDP bind meets the same (wildcard) DNS servers
    )


def _address(hex_address: str) -> str:
    raw = bytes.fromhex(hex_address)
    # The kernel prints each 32-bit word in host (little-endian) order.
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(words)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address)


def listening(tables: list[str] | None = None) -> set[tuple[str, int]]:
    """(address, port) of every listening TCP socket, from the text of /proc/net/tcp and tcp6
    (read here when not given)."""
    if tables is None:
        tables = [Path(f"/proc/net/{name}").read_text() for name in ("tcp", "tcp6") if Path(f"/proc/net/{name}").exists()]
    found = set()
    for table in tables:
        for line in table.splitlines()[1:]:
            fields = line.split()
            if len(fields) < 4 or fields[3] != LISTEN:
                continue
            hex_address, hex_port = fields[1].split(":")
            found.add((_address(hex_address), int(hex_port, 16)))
    return found


def taken(layout: Layout, listeners: set[tuple[str, int]]) -> list[str]:
    """One line per fixed port of ours that a listener already holds: on every address, or on
    the address the component binds (a listener on another address leaves the bind free)."""
    lines = []
    for name, address, port in fixed_listeners(layout):
        holders = sorted(a for a, p in listeners if p == port and (a in WILDCARDS or a == address))
        if holders:
            shown = ", ".join(f"[{a}]:{port}" if ":" in a else f"{a}:{port}" for a in holders)
            lines.append(f"port {port} ({name}, {address}:{port}) is taken: something listens on {shown}")
    return lines


def refuse_taken(layout: Layout, listeners: set[tuple[str, int]] | None = None) -> None:
    lines = taken(layout, listening() if listeners is None else listeners)
    if lines:
        raise SystemExit(
            "e2e.cluster up: the cluster's fixed ports must be free, and these are not:\n  "
            + "\n  ".join(lines)
            + "\nStop the program that holds them (`ss -ltnp 'sport = :PORT'` names it); the ports are "
            "e2e/cluster/layout.py's and configs.py's."
        )
