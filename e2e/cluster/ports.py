"""`up`'s pre-flight: the fixed ports the cluster's components bind must be free.

A component whose port is taken exits on bind, but `up` waits on readiness probes, and some are
only a URL: another program answering it (a developer's registry on 127.0.0.1:23795, a k3s
kube-proxy's healthz on 10256) would look "ready", and containerd would pull from the foreign
registry. So `up` refuses first, naming the port, its address and the component.

Every port is a Layout field that the component's config is written from (`fixed_listeners`
reads the same fields), so a port changed in one place cannot escape the check.

Whether a port is free is asked of the kernel: a trial bind of the component's own address and
port, and protocol (CoreDNS binds UDP too), as the component will bind it. /proc/net/{tcp,udp}
only names the holders: it does not list a TCP socket that is bound but not listening, and does
not say whether a listener on [::] takes IPv4 too (IPV6_V6ONLY), which the trial bind settles.
"""

import errno
import ipaddress
import socket
from pathlib import Path

from e2e.cluster.layout import Layout

LISTEN = "0A"  # a TCP socket's state in /proc/net/tcp
UNCONNECTED = "07"  # a bound UDP socket's (TCP_CLOSE)
WILDCARDS = frozenset({"0.0.0.0", "::"})
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)


def fixed_listeners(layout: Layout) -> tuple[tuple[str, str, str, int], ...]:
    """(component, protocol, address, port) of every fixed port `up`'s components bind (configs.py)."""
    return (
        ("etcd (clients)", "tcp", "127.0.0.1", layout.etcd_client_port),
        ("etcd (peers)", "tcp", "127.0.0.1", layout.etcd_peer_port),
        ("kube-apiserver", "tcp", layout.node_ip, layout.apiserver_port),
        ("kube-controller-manager", "tcp", "127.0.0.1", layout.controller_manager_port),
        ("kube-scheduler", "tcp", "127.0.0.1", layout.scheduler_port),
        ("registry", "tcp", "127.0.0.1", layout.registry_port),
        ("kubelet", "tcp", layout.node_ip, layout.kubelet_port),
        ("kubelet (healthz)", "tcp", "127.0.0.1", layout.kubelet_healthz_port),
        ("kube-proxy (healthz)", "tcp", "127.0.0.1", layout.kube_proxy_healthz_port),
        ("kube-proxy (metrics)", "tcp", "127.0.0.1", layout.kube_proxy_metrics_port),
        ("metrics-server", "tcp", layout.node_ip, layout.metrics_server_port),
        ("coredns", "tcp", layout.node_ip, layout.dns_port),
        ("coredns", "udp", layout.node_ip, layout.dns_port),
    )


def _address(hex_address: str) -> str:
    raw = bytes.fromhex(hex_address)
    # The kernel prints each 32-bit word in host (little-endian) order.
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(words)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address)


def _read(names: tuple[str, ...]) -> list[str]:
    return [Path(f"/proc/net/{name}").read_text() for name in names if Path(f"/proc/net/{name}").exists()]


def listening(tables: list[str] | None = None, state: str = LISTEN) -> set[tuple[str, int]]:
    """(address, port) of every socket in `state` (TCP's LISTEN by default), from the text of
    /proc/net/tcp and tcp6 (read here when not given)."""
    if tables is None:
        tables = _read(("tcp", "tcp6"))
    found = set()
    for table in tables:
        for line in table.splitlines()[1:]:
            fields = line.split()
            if len(fields) < 4 or fields[3] != state:
                continue
            hex_address, hex_port = fields[1].split(":")
            found.add((_address(hex_address), int(hex_port, 16)))
    return found


def sockets() -> set[tuple[str, str, int]]:
    """(protocol, address, port) of this network namespace's TCP listeners and bound UDP sockets."""
    return ({("tcp", a, p) for a, p in listening()}
            | {("udp", a, p) for a, p in listening(_read(("udp", "udp6")), UNCONNECTED)})


def trial_bind(protocol: str, address: str, port: int) -> OSError | None:
    """Bind (and, for TCP, listen on) `address`:`port` as a component would, and let go at
    once: the kernel's own answer, or None when the port is free. SO_REUSEADDR for TCP as Go's
    listeners set it (a TIME_WAIT connection is no obstacle); IP_FREEBIND because the node IP
    is not on the machine yet when `up` checks."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    with socket.socket(family, kind) as sock:
        try:
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET:
                sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
            sock.bind((address, port))
            if kind == socket.SOCK_STREAM:
                sock.listen()
        except OSError as exc:
            return exc
    return None


def taken(layout: Layout, found: set[tuple[str, str, int]] | None = None, bind_error=None) -> list[str]:
    """One line per fixed port of ours that the kernel refuses to bind for its component, with
    the sockets (`found`, read here when not given) on every address or on its address."""
    found = sockets() if found is None else found
    bind_error = bind_error or trial_bind
    lines = []
    for name, protocol, address, port in fixed_listeners(layout):
        error = bind_error(protocol, address, port)
        if error is None:
            continue
        holders = sorted(a for proto, a, p in found if proto == protocol and p == port and (a in WILDCARDS or a == address))
        shown = ", ".join(f"[{a}]:{port}" if ":" in a else f"{a}:{port}" for a in holders)
        held = (f"something is bound to {shown}" if holders else
                "no listener shows in /proc/net: a socket bound without listening?")
        reason = errno.errorcode.get(error.errno, str(error.errno)) if error.errno else str(error)
        lines.append(f"port {port}/{protocol} ({name}, {address}:{port}) is taken ({reason}): {held}")
    return lines


def refuse_taken(layout: Layout) -> None:
    lines = taken(layout)
    if lines:
        raise SystemExit(
            "e2e.cluster up: the cluster's fixed ports must be free, and these are not:\n  "
            + "\n  ".join(lines)
            + "\nStop the program that holds them (`ss -ltunp 'sport = :PORT'` names it); the ports are "
            "e2e/cluster/layout.py's."
        )
