"""Nothing leaves the machine, on any path, IPv4 and IPv6 (local backend only).

The "outside" is 198.18.0.0/15 and 2001:2::/48 (the benchmarking ranges, RFC 2544/5180),
after checking that nothing on this machine uses them. To prove that the drop holds on EVERY
interface and not only the default route's, each test routes the outside through a second
way out: a veth (named unlike the harness's `ztr-*` links) into a namespace that counts what
arrives. Every path must fail, the test's own packets must be counted reaching our guard and
none getting past it (`probes`: counters of this test's packets only, so the tests share the
cluster with concurrent sessions), and the second way out must have seen nothing.
"""

import ipaddress
import json
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from e2e import workloads
from e2e.cluster import cgroups, configs, firewall, network
from e2e.cluster.layout import ESCAPE_NETNS_PREFIX
from e2e.probes import FORWARD, IN6, output

OUTSIDE4_NET, OUTSIDE4 = "198.18.0.0/15", "198.18.0.77"
OUTSIDE6_NET, OUTSIDE6 = "2001:2::/48", "2001:2::77"
MIRROR = "dials to the dead registry mirror"


@pytest.fixture(scope="module")
def layout(cluster):
    if cluster.backend != "local":
        pytest.skip(f"the egress rules belong to the local cluster's host, not to --cluster={cluster.backend}")
    return cluster.layout


def _machine_resolvers() -> list[str]:
    return [line.split()[1] for line in Path("/etc/resolv.conf").read_text().splitlines() if line.startswith("nameserver")]


@pytest.fixture(scope="module")
def outside(layout):
    """The outside ranges are used by nothing here: no address, no route, no hosts entry."""
    nets = [ipaddress.ip_network(OUTSIDE4_NET), ipaddress.ip_network(OUTSIDE6_NET)]

    def inside(text: str) -> bool:
        try:
            addr = ipaddress.ip_interface(text).network
        except ValueError:
            return False
        return any(addr.version == n.version and addr.overlaps(n) for n in nets)

    for link in json.loads(network.sh("ip", "-j", "addr").stdout):
        for info in link.get("addr_info", []):
            assert not inside(info["local"]), f"{link['ifname']} has {info['local']}, inside the test's outside range"
    for family in ("-4", "-6"):
        for route in json.loads(network.sh("ip", "-j", family, "route").stdout):
            if route["dst"] == "default" or route.get("dev", "").startswith(ESCAPE_LINK_PREFIX):
                continue  # another test run's escape (its own subnet, on its own link)
            assert not inside(route["dst"]), f"a route into the outside range: {route}"
    for line in Path("/etc/hosts").read_text().splitlines():
        fields = line.split("#")[0].split()
        assert not (fields and inside(fields[0])), f"/etc/hosts resolves into the outside range: {line}"
    for resolver in _machine_resolvers():
        assert not inside(resolver)
    return OUTSIDE4, OUTSIDE6


@dataclass
class Escape:
    netns: str
    v4: str
    """This run's outside IPv4 address (its own /24 of OUTSIDE4_NET, routed to the escape)."""
    v6: str
    """This run's outside IPv6 address (its own /64 of OUTSIDE6_NET)."""

    def arrived(self) -> tuple[int, int]:
        """Packets to the outside that reached the second way out: (IPv4, IPv6)."""
        counts = []
        for binary in ("iptables", "ip6tables"):
            out = network.sh(binary, "-t", "raw", "-L", "PREROUTING", "-v", "-x", "-n", netns=self.netns).stdout
            counts.append(sum(int(line.split()[0]) for line in out.splitlines()[2:] if "DROP" in line))
        return counts[0], counts[1]


ESCAPE_LINK_PREFIX = "ztr-x"  # layout.ESCAPE_LINK: ours, so `down` removes what a killed run left


def _routed_outside_subnets() -> set[str]:
    routes = json.loads(network.sh("ip", "-j", "-4", "route").stdout) + json.loads(network.sh("ip", "-j", "-6", "route").stdout)
    return {r["dst"] for r in routes}


@pytest.fixture
def escape(outside):
    """A second way out for this run only: test runs may share the cluster at the same time, so
    each routes its own /24 and /64 of the outside ranges (never the whole range: a second run
    could not add it, and one run's cleanup would delete the other's) by a link of its own;
    the links' routes go with them."""
    tag = uuid.uuid4().hex[:6]
    netns, link = f"{ESCAPE_NETNS_PREFIX}{tag}", f"{ESCAPE_LINK_PREFIX}{tag}"
    slot = int(tag, 16)
    network.sh("ip", "netns", "add", netns)
    try:
        network.sh("ip", "link", "add", link, "type", "veth", "peer", "name", "out", "netns", netns)
        # The /30 only needs to be unique per link (the routes name their dev).
        host, peer = f"169.254.77.{(slot % 64) * 4 + 1}", f"169.254.77.{(slot % 64) * 4 + 2}"
        network.sh("ip", "addr", "add", f"{host}/30", "dev", link)
        network.sh("ip", "link", "set", link, "up")
        network.sh("ip", "-n", netns, "addr", "add", f"{peer}/30", "dev", "out")
        network.sh("ip", "-n", netns, "addr", "add", "fe80::77:2/64", "dev", "out", "nodad")
        network.sh("ip", "-n", netns, "link", "set", "out", "up")
        network.sh("iptables", "-t", "raw", "-A", "PREROUTING", "-d", OUTSIDE4_NET, "-j", "DROP", netns=netns)
        network.sh("ip6tables", "-t", "raw", "-A", "PREROUTING", "-d", OUTSIDE6_NET, "-j", "DROP", netns=netns)
        v4_nets = list(ipaddress.ip_network(OUTSIDE4_NET).subnets(new_prefix=24))
        taken = _routed_outside_subnets()
        for i in range(len(v4_nets)):  # first free /24 from this run's slot (another run may add one meanwhile)
            net4 = v4_nets[(slot + i) % len(v4_nets)]
            net6 = ipaddress.ip_network(f"2001:2:0:{(slot + i) % 0x10000:x}::/64")
            if str(net4) in taken or str(net6) in taken:
                continue
            added = network.sh("ip", "route", "add", str(net4), "via", peer, "dev", link, check=False)
            if added.returncode == 0:
                break
            if "File exists" not in added.stderr:
                raise RuntimeError(f"ip route add {net4}: {added.stderr.strip()}")
        else:
            raise RuntimeError(f"no free /24 of {OUTSIDE4_NET} to route for this run")
        network.sh("ip", "-6", "route", "add", str(net6), "via", "fe80::77:2", "dev", link)
        yield Escape(netns, v4=str(net4[77]), v6=str(net6[0x77]))
    finally:
        network.sh("ip", "link", "del", link, check=False)  # takes this run's routes, and only them
        network.delete_netns(netns)


def _link_local(ifname: str, wait_for, netns: str | None = None) -> str:
    """The interface's link-local address, once usable (duplicate detection takes a moment
    on a fresh link; a tentative address cannot send)."""

    def address():
        for link in json.loads(network.sh("ip", "-j", "-6", "addr", "show", "dev", ifname, netns=netns).stdout):
            for info in link.get("addr_info", []):
                if info.get("scope") == "link" and not info.get("tentative"):
                    return info["local"]
        return None

    return wait_for(f"a link-local IPv6 address on {ifname}", address, 15)


SEND = """
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
errors = []
for _ in range(3):
    s = socket.socket(family, socket.SOCK_DGRAM)
    try:
        s.sendto(b"leak?", (sys.argv[1], 9))
    except OSError as exc:
        errors.append(exc.errno)
    s.close()
t = socket.socket(family, socket.SOCK_STREAM)
t.settimeout(2)
try:
    t.connect((sys.argv[1], 80))
    print("connected")
except OSError as exc:
    print("failed", type(exc).__name__, errors)
"""

DNS_QUERY = """
import socket, sys
# A minimal DNS query for example.com A, sent straight to the resolver given.
query = b"\\x12\\x34\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x07example\\x03com\\x00\\x00\\x01\\x00\\x01"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
try:
    s.sendto(query, (sys.argv[1], 53))
    s.recvfrom(512)
    print("answered")
except OSError as exc:
    print("failed", type(exc).__name__)
"""


def test_a_test_host_reaches_nothing_outside_by_ipv4_and_the_drop_is_counted_here(layout, outside, escape, test_hosts, probes):
    client = test_hosts("client")
    gate, arrived = probes.gate(FORWARD, "-s", client.address, "-d", escape.v4), escape.arrived()
    out = client.run(sys.executable, "-c", SEND, escape.v4).stdout
    assert out.rstrip() == "failed TimeoutError []", out  # sent (no local error), never answered
    gate.dropped(at_least=4)  # three datagrams and at least one SYN
    assert escape.arrived() == arrived


def test_a_test_host_reaches_nothing_outside_by_ipv6_even_with_a_route(layout, outside, escape, test_hosts, wait_for, probes):
    client = test_hosts("client")
    gateway = _link_local(layout.hosts_bridge, wait_for)
    _link_local("eth0", wait_for, netns=client.netns)
    client.run("ip", "-6", "route", "add", OUTSIDE6_NET, "via", gateway, "dev", "eth0")
    # From its link-local address: the test's own packets are those to its escape's /64.
    gate, arrived = probes.gate(IN6, "-i", layout.hosts_bridge, "-d", escape.v6), escape.arrived()
    out = client.run(sys.executable, "-c", SEND, escape.v6).stdout
    assert out.rstrip() == "failed TimeoutError []", out  # sent (no local error), never answered
    gate.dropped(at_least=4)
    assert escape.arrived() == arrived


def test_a_test_host_resolves_no_public_name_and_cannot_reach_the_machines_resolvers(layout, outside, test_hosts, probes):
    client = test_hosts("client")
    lookup = client.run(sys.executable, "-c", "import socket; socket.getaddrinfo('example.com', 80)", check=False)
    assert lookup.returncode != 0 and "gaierror" in lookup.stderr
    # Its resolv.conf names the cluster's CoreDNS, which refuses outside names ...
    assert client.run("cat", "/etc/resolv.conf").stdout.split() == ["nameserver", layout.node_ip]
    # ... and a query sent straight to the machine's resolvers is dropped here.
    for resolver in [r for r in _machine_resolvers() if not r.startswith("127.") and ":" not in r]:
        gate = probes.gate(FORWARD, "-s", client.address, "-d", resolver)
        assert client.run(sys.executable, "-c", DNS_QUERY, resolver).stdout.startswith("failed")
        gate.dropped(at_least=1)


@pytest.fixture
def pod(kubectl, namespace, busybox_image, wait_for_pods_ready):
    spec = workloads.sleeper_pod("leaky", busybox_image)
    spec["spec"]["dnsPolicy"] = "Default"  # the node's resolv.conf: must not be the machine's
    kubectl.apply(spec, namespace=namespace)
    (ready,) = wait_for_pods_ready(namespace, "app=leaky")
    return ready


def _exec(kubectl, pod, *cmd, check=False):
    return kubectl("exec", "-n", pod["metadata"]["namespace"], pod["metadata"]["name"], "--", *cmd, check=check, timeout=30)


def test_a_pod_reaches_nothing_outside_by_ipv4_and_the_drop_is_counted_here(layout, outside, escape, kubectl, pod, probes):
    gate, arrived = probes.gate(FORWARD, "-s", pod["status"]["podIP"], "-d", escape.v4), escape.arrived()
    # busybox's nc has no UDP; its tftp client sends one read request by UDP and waits.
    udp = _exec(kubectl, pod, "sh", "-c", f"timeout 2 tftp -g -r leak -l /dev/null {escape.v4} 9; echo $?")
    assert udp.stdout.strip().splitlines()[-1] != "0"
    tcp = _exec(kubectl, pod, "nc", "-w", "2", escape.v4, "80")
    assert tcp.returncode != 0
    gate.dropped(at_least=2)
    assert escape.arrived() == arrived


def _pod_pid(pod) -> int:
    """A process of the pod (its cgroup path names the pod's uid), for entering its netns."""
    uid = pod["metadata"]["uid"]
    for hierarchy in cgroups.hierarchies():
        for procs in (hierarchy / cgroups.PODS).glob(f"**/pod{uid}/**/cgroup.procs"):
            pids = procs.read_text().split()
            if pids:
                return int(pids[0])
    raise AssertionError(f"no process of pod {uid} under our cgroup root {cgroups.PODS}")


def test_a_pod_reaches_nothing_outside_by_ipv6_even_with_a_route(layout, outside, escape, kubectl, pod, wait_for, probes):
    gateway = _link_local(layout.cni_bridge, wait_for)
    netns = f"--net=/proc/{_pod_pid(pod)}/ns/net"
    subprocess.run(["nsenter", netns, "ip", "-6", "route", "add", OUTSIDE6_NET, "via", gateway, "dev", "eth0"], check=True)
    gate, arrived = probes.gate(IN6, "-i", layout.cni_bridge, "-d", escape.v6), escape.arrived()
    tcp = _exec(kubectl, pod, "nc", "-w", "2", escape.v6, "80")
    assert tcp.returncode != 0
    gate.dropped(at_least=1)
    assert escape.arrived() == arrived


def test_a_pod_resolves_no_public_name_and_cannot_reach_the_machines_resolvers(layout, outside, kubectl, pod, probes):
    resolv = _exec(kubectl, pod, "cat", "/etc/resolv.conf", check=True).stdout
    assert f"nameserver {layout.node_ip}" in resolv and not any(r in resolv for r in _machine_resolvers())
    lookup = _exec(kubectl, pod, "nslookup", "example.com")
    assert lookup.returncode != 0
    for resolver in [r for r in _machine_resolvers() if not r.startswith("127.") and ":" not in r]:
        gate = probes.gate(FORWARD, "-s", pod["status"]["podIP"], "-d", resolver)
        direct = _exec(kubectl, pod, "nslookup", "example.com", resolver)
        assert direct.returncode != 0
        gate.dropped(at_least=1)


def test_the_clusters_own_processes_cannot_send_off_the_machine(layout, outside, escape, probes):
    targets = {"iptables": escape.v4, "ip6tables": escape.v6}
    gates = {binary: probes.gate(output(binary), "-d", address) for binary, address in targets.items()}
    arrived = escape.arrived()
    for address in targets.values():
        # Run inside the harness's host cgroup, like containerd or the kubelet.
        proc = subprocess.run(cgroups.enter_host_argv([sys.executable, "-c", SEND, address]), capture_output=True, text=True, timeout=30)
        # UDP: EPERM at once from the OUTPUT drop; TCP: the SYN is dropped the same way.
        assert proc.stdout.startswith("failed") and proc.stdout.rstrip().endswith("[1, 1, 1]"), proc.stdout + proc.stderr
    for gate in gates.values():
        gate.dropped(at_least=4)
    assert escape.arrived() == arrived


@pytest.mark.alone_on_cluster(reason="containerd and the OUTPUT guard are every session's: 'nothing tried to leave' "
                              "and the mirror's dials are the machine-wide counters, which concurrent pulls and drops move")
def test_a_pod_whose_image_was_never_imported_fails_locally_and_nothing_is_dialled(layout, outside, escape, kubectl, namespace, wait_for):
    drops = {b: firewall.drop_counter(b, "security", "ZTR-E2E-OUTPUT") for b in ("iptables", "ip6tables")}
    mirror, arrived = firewall.rule_counter("iptables", "security", "ZTR-E2E-OUTPUT", MIRROR), escape.arrived()
    kubectl.apply(workloads.sleeper_pod("missing", "zt-relay-e2e/never-imported:1"), namespace=namespace)

    def pull_error():
        pod = kubectl.api.get("pod", "missing", namespace)
        for status in pod["status"].get("containerStatuses") or []:
            waiting = (status.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in ("ErrImagePull", "ImagePullBackOff") and waiting.get("message"):
                return waiting["message"]
        return None

    message = wait_for("the pull of a never-imported image to fail", pull_error, 60)
    assert configs.DEAD_REGISTRY.removeprefix("http://") in message and "refused" in message, message
    assert firewall.rule_counter("iptables", "security", "ZTR-E2E-OUTPUT", MIRROR) > mirror
    for binary, before in drops.items():
        assert firewall.drop_counter(binary, "security", "ZTR-E2E-OUTPUT") == before, f"{binary}: something tried to leave"
    assert escape.arrived() == arrived
