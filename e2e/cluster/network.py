"""Host networking of the local cluster: the sink, forward rules, test-host namespaces.

Safety first: before any cluster process starts, the pod, service and LB ranges are routed
to a "sink" namespace that drops everything (and counts it), and forwarded cluster traffic
towards the primary interface is dropped. More specific routes (the CNI bridge's /24) and
kube-proxy's DNAT still win, so real Services keep working; an address nobody claims ends
in the sink instead of following the default route off the machine.

Everything here is named `ztr-...` (`layout.MARKER`, which no ZeroTier tap can carry) and
removed by `teardown`, by exact name. The packet filter (what keeps traffic from leaving the
machine) is `firewall`'s.
"""

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from e2e.cluster import locks
from e2e.cluster.layout import ESCAPE_LINK, ESCAPE_NETNS_PREFIX, LEGACY_TEST_HOST_VETH, MARKER, TEST_HOST_VETH, Layout

NETNS_DIR = Path("/var/run/netns")
NETNS_ETC = Path("/etc/netns")
HOSTS_LOCK = Path("/run/zt-relay-e2e.hosts")
"""Held while a test host picks the first free address and takes it: concurrent test sessions
(`.ci/run`'s shards) would otherwise pick the same one."""


def sh(*cmd: str, check: bool = True, netns: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    argv = ["ip", "netns", "exec", netns, *cmd] if netns else list(cmd)
    return subprocess.run(argv, check=check, text=True, capture_output=True, timeout=timeout)


def default_route() -> tuple[str, str]:
    """(interface, its primary IPv4) of the default route; the node IP and the 'outside'."""
    routes = json.loads(sh("ip", "-j", "-4", "route", "show", "default").stdout)
    if not routes:
        raise RuntimeError("no IPv4 default route: cannot pick the node IP (the primary IPv4)")
    dev = routes[0]["dev"]
    addrs = json.loads(sh("ip", "-j", "-4", "addr", "show", "dev", dev).stdout)
    for info in addrs[0].get("addr_info", []):
        if info.get("family") == "inet":
            return dev, info["local"]
    raise RuntimeError(f"default-route interface {dev} has no IPv4 address")


def machine_networks() -> list[str]:
    """IPv4 networks on the machine's interfaces (not our links, not loopback): addresses that
    are real neighbours there. `up` refuses any overlap (`layout.check_disjoint`)."""
    nets = []
    for link in json.loads(sh("ip", "-j", "-4", "addr").stdout):
        if link["ifname"].startswith(MARKER) or link["ifname"] == "lo":
            continue
        for info in link.get("addr_info", []):
            net = str(ipaddress.ip_interface(f"{info['local']}/{info['prefixlen']}").network)
            if net not in nets:
                nets.append(net)
    return nets


def machine_routes() -> list[str]:
    """Every IPv4 route destination of the machine, all tables (a VPN to a dev cluster's
    Services routes 10.96.0.0/16; policy routing keeps routes in tables of its own), except
    default routes and routes on our links. `layout.check_disjoint` refuses the ones inside
    a cluster range; a wider one only loses our slice to the more specific sink route."""
    nets = []
    for route in json.loads(sh("ip", "-j", "-4", "route", "show", "table", "all").stdout):
        dst, dev = route.get("dst", ""), route.get("dev", "")
        if dst in ("default", "") or dev.startswith(MARKER) or dev == "lo" or route.get("type") in ("local", "broadcast", "multicast"):
            continue
        net = str(ipaddress.ip_network(dst, strict=False))
        if net not in nets:
            nets.append(net)
    return nets


def _netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def _link_exists(name: str, netns: str | None = None) -> bool:
    cmd = ["ip", "-n", netns, "link", "show", name] if netns else ["ip", "link", "show", name]
    return subprocess.run(cmd, capture_output=True).returncode == 0


def setup_node_address(layout: Layout) -> None:
    """The node IP on a bridge without ports (this kernel has no dummy links). Idempotent."""
    if not _link_exists(layout.node_interface):
        sh("ip", "link", "add", layout.node_interface, "type", "bridge")
    sh("ip", "addr", "replace", f"{layout.node_ip}/32", "dev", layout.node_interface)
    sh("ip", "link", "set", layout.node_interface, "up")


def setup_safety(layout: Layout) -> None:
    """Sink namespace and sink routes (the firewall is `firewall`'s). Idempotent."""
    sysctl("net.ipv4.ip_forward", "1")
    if not _netns_exists(layout.sink_netns):
        sh("ip", "netns", "add", layout.sink_netns)
    if not _link_exists(layout.sink_host_veth):
        sh("ip", "link", "add", layout.sink_host_veth, "type", "veth", "peer", "name", "sink", "netns", layout.sink_netns)
    prefix = ipaddress.ip_network(layout.sink_link_cidr).prefixlen
    sh("ip", "addr", "replace", f"{layout.sink_host_address}/{prefix}", "dev", layout.sink_host_veth)
    sh("ip", "link", "set", layout.sink_host_veth, "up")
    sh("ip", "-n", layout.sink_netns, "addr", "replace", f"{layout.sink_address}/{prefix}", "dev", "sink")
    sh("ip", "-n", layout.sink_netns, "link", "set", "sink", "up")
    sh("ip", "-n", layout.sink_netns, "link", "set", "lo", "up")
    # The sink swallows everything silently: no RST, no ICMP unreachable, and it counts.
    # raw PREROUTING sees every arriving packet, whatever its destination address.
    sh("iptables", "-t", "raw", "-F", "PREROUTING", netns=layout.sink_netns)
    sh("iptables", "-t", "raw", "-A", "PREROUTING", "-j", "DROP", netns=layout.sink_netns)
    for cidr in layout.sink_routes:
        sh("ip", "route", "replace", cidr, "via", layout.sink_address, "dev", layout.sink_host_veth)


def safety_in_place(layout: Layout) -> bool:
    """Sink namespace, its link and its routes are all present."""
    if not _netns_exists(layout.sink_netns) or not _link_exists(layout.sink_host_veth):
        return False
    return all(layout.sink_host_veth in sh("ip", "route", "show", "exact", cidr).stdout for cidr in layout.sink_routes)


def sink_dropped_packets(layout: Layout) -> int:
    """Packets the sink has swallowed since `up` (its INPUT DROP counter)."""
    out = sh("iptables", "-t", "raw", "-L", "PREROUTING", "-v", "-x", "-n", netns=layout.sink_netns).stdout
    for line in out.splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[2] == "DROP":
            return int(fields[0])
    raise RuntimeError(f"no DROP rule in the sink namespace {layout.sink_netns}")


def sysctl(key: str, value: str) -> None:
    Path("/proc/sys", *key.split(".")).write_text(value)


# --- test hosts -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TestHost:
    """A network namespace standing for a machine outside the cluster, routed through the node."""

    __test__ = False  # not a pytest test class despite the name

    name: str
    netns: str
    address: str
    gateway: str

    def argv(self, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *cmd]

    def run(self, *cmd: str, timeout: float = 30, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
        """Run a command inside the namespace and wait for it."""
        return subprocess.run(self.argv(*cmd), check=check, text=True, capture_output=True, timeout=timeout, input=input)

    def popen(self, *cmd: str, **kwargs) -> subprocess.Popen:
        """Start a long-running command inside the namespace (caller stops it)."""
        return subprocess.Popen(self.argv(*cmd), **kwargs)


def host_veth_name(address: str) -> str:
    return "ztr-th" + address.split(".")[-1]


def _links(details: bool = False) -> list[dict]:
    return json.loads(sh("ip", "-j", *(["-d"] if details else []), "link").stdout)


def test_host_veths() -> list[str]:
    """Test-host veths of ours still on the host side: `ztr-th<N>`, and the `ztrh<N>` veths of
    the harness before the dash (exact pattern and veth kind: never a ZeroTier tap)."""
    return [
        link["ifname"] for link in _links(details=True)
        if TEST_HOST_VETH.fullmatch(link["ifname"])
        or (LEGACY_TEST_HOST_VETH.fullmatch(link["ifname"]) and link.get("linkinfo", {}).get("info_kind") == "veth")
    ]


def _setup_hosts_bridge(layout: Layout) -> None:
    bridge = layout.hosts_bridge
    if not _link_exists(bridge):
        sh("ip", "link", "add", bridge, "type", "bridge")
    prefix = ipaddress.ip_network(layout.test_host_cidr).prefixlen
    sh("ip", "addr", "replace", f"{layout.hosts_gateway}/{prefix}", "dev", bridge)
    sh("ip", "link", "set", bridge, "up")


def used_host_addresses(layout: Layout) -> set[str]:
    used = {layout.hosts_gateway}
    for ns in list_netns(layout.test_host_netns_prefix):
        out = subprocess.run(["ip", "-n", ns, "-j", "-4", "addr"], capture_output=True, text=True).stdout
        for link in json.loads(out or "[]"):
            used.update(info["local"] for info in link.get("addr_info", []))
    return used


def create_test_host(layout: Layout, name: str) -> TestHost:
    """Create namespace `<prefix><name>` with its own address in `layout.test_host_cidr`."""
    if not name.replace("-", "").isalnum() or len(name) > 40:
        raise ValueError(f"test host name {name!r}: use letters, digits and '-' (max 40)")
    netns = layout.test_host_netns_prefix + name
    if _netns_exists(netns):
        raise ValueError(f"test host {name!r} already exists (netns {netns})")
    net = ipaddress.ip_network(layout.test_host_cidr)
    with locks.exclusive(HOSTS_LOCK):
        _setup_hosts_bridge(layout)
        used = used_host_addresses(layout)
        address = next((str(ip) for ip in net.hosts() if str(ip) not in used), None)
        if address is None:
            raise RuntimeError(f"test host range {layout.test_host_cidr} is full")
        # The machine may still hold the MAC of the host that had this address last (removing
        # its link does not always take the entry): the first packet to the new host would go
        # there and be lost.
        sh("ip", "neigh", "del", address, "dev", layout.hosts_bridge, check=False)
        veth = host_veth_name(address)
        sh("ip", "netns", "add", netns)
        sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
        sh("ip", "link", "set", veth, "master", layout.hosts_bridge, "up")
        sh("ip", "-n", netns, "addr", "add", f"{address}/{net.prefixlen}", "dev", "eth0")
    sh("ip", "-n", netns, "link", "set", "eth0", "up")
    sh("ip", "-n", netns, "link", "set", "lo", "up")
    sh("ip", "-n", netns, "route", "add", "default", "via", layout.hosts_gateway)
    # `ip netns exec` bind-mounts /etc/netns/<netns>/resolv.conf over /etc/resolv.conf: a
    # test host asks the cluster's CoreDNS (cluster names only), never the machine's resolver.
    etc = NETNS_ETC / netns
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "resolv.conf").write_text(f"nameserver {layout.node_ip}\n")
    return TestHost(name=name, netns=netns, address=address, gateway=layout.hosts_gateway)


def delete_netns(name: str) -> None:
    """Kill what runs inside, then delete the namespace (its veths go with it)."""
    if not _netns_exists(name):
        return
    pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
    for _ in range(50):
        if subprocess.run(["ip", "netns", "del", name], capture_output=True).returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError(f"could not delete network namespace {name}")


def netns_etc_dirs(layout: Layout) -> list[Path]:
    """Our per-namespace /etc overrides (test hosts' resolv.conf)."""
    if not NETNS_ETC.exists():
        return []
    return sorted(p for p in NETNS_ETC.iterdir() if p.name.startswith(layout.test_host_netns_prefix))


def delete_test_host(host: TestHost) -> None:
    # Deleting our end removes the pair now; the end inside a deleted namespace only goes
    # when the kernel finishes tearing the namespace down, later (a `down` right after a
    # test host's removal was seen to find its veth still there).
    veth = host_veth_name(host.address)
    if _link_exists(veth):
        sh("ip", "link", "del", veth, check=False)
    delete_netns(host.netns)
    shutil.rmtree(NETNS_ETC / host.netns, ignore_errors=True)


def list_netns(prefix: str) -> list[str]:
    if not NETNS_DIR.exists():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix))


# --- teardown -------------------------------------------------------------------------------


def teardown(layout: Layout) -> None:
    """Remove everything `setup_safety` and `create_test_host` made, and the CNI bridge."""
    for ns in list_netns(layout.test_host_netns_prefix) + list_netns(ESCAPE_NETNS_PREFIX):
        delete_netns(ns)
    # Test-host veths whose namespace is already gone, or still being torn down; the escapes
    # of egress tests a killed run never finished (their routes go with them).
    for veth in test_host_veths() + [link["ifname"] for link in _links() if ESCAPE_LINK.fullmatch(link["ifname"])]:
        sh("ip", "link", "del", veth, check=False)
    for link in (layout.hosts_bridge, layout.cni_bridge, layout.sink_host_veth, layout.node_interface):
        if _link_exists(link):
            sh("ip", "link", "del", link, check=False)
    for cidr in layout.sink_routes:
        # Only our route (the sink's link): a route of the machine with the same prefix stays.
        sh("ip", "route", "del", cidr, "dev", layout.sink_host_veth, check=False)
    delete_netns(layout.sink_netns)
    for conf in netns_etc_dirs(layout):
        shutil.rmtree(conf, ignore_errors=True)
