"""Review findings on the real cluster (local backend), safe by construction: the "outside"
(198.18.0.0/15, 2001:2::/48) is routed into a counting namespace by test_cluster_egress's
`escape` fixture, so a leak lands there and never on the wire.

    flock /tmp/zt-e2e.lock sh -c '.venv/bin/python -m pytest --with-e2e e2e/test_review_egress.py -p no:cacheprovider -v; \
        .venv/bin/python -m e2e.cluster down'
"""

import socket
import subprocess
import threading

import pytest

from e2e import workloads
from e2e.cluster import cgroups, firewall
from e2e.test_cluster_egress import OUTSIDE4, escape, layout, outside  # noqa: F401 - fixtures


@pytest.fixture
def host_network_pod(kubectl, namespace, busybox_image, wait_for_pods_ready):
    spec = workloads.sleeper_pod("hostnet", busybox_image)
    spec["spec"]["hostNetwork"] = True
    kubectl.apply(spec, namespace=namespace)
    (ready,) = wait_for_pods_ready(namespace, "app=hostnet")
    return ready


def test_a_host_network_pod_sends_nothing_off_the_machine(layout, outside, escape, kubectl, host_network_pod):  # noqa: F811
    """F5. ZTR-E2E-OUTPUT matches only the cgroup of the harness's host processes; a pod with
    hostNetwork runs under the kubelet's cgroupRoot (/zt-relay-e2e-pods, v1 and - runc joins
    it in hybrid mode - v2), so its packets pass OUTPUT unfiltered and FORWARD never sees them."""
    pod = host_network_pod
    arrived = escape.arrived()
    for _ in range(3):
        kubectl("exec", "-n", pod["metadata"]["namespace"], pod["metadata"]["name"], "--", "sh", "-c",
                f"timeout 2 tftp -g -r leak -l /dev/null {escape.v4} 9; true", timeout=30)
    v4, v6 = escape.arrived()
    assert v4 == arrived[0], f"{v4 - arrived[0]} packets of a hostNetwork pod left by the second interface"


def test_a_pod_cannot_reach_a_resolver_or_proxy_running_on_the_machine(layout, kubectl, namespace, busybox_image, wait_for_pods_ready):  # noqa: F811
    """F3. A resolver on the machine (dnsmasq on docker0/virbr0, unbound on 0.0.0.0) or a proxy
    forwards what it gets off the machine. Before ZTR-E2E-INPUT pods reached every host listener:
    a UDP listener bound to 0.0.0.0 got a pod's datagram at docker0's address."""
    kubectl.apply(workloads.sleeper_pod("asker", busybox_image), namespace=namespace)
    wait_for_pods_ready(namespace, "app=asker")
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("0.0.0.0", 0))
    listener.settimeout(5)
    port = listener.getsockname()[1]
    got = []
    def listen():
        try:
            got.append(listener.recvfrom(512))
        except TimeoutError:
            pass  # nothing arrived: what must happen

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    targets = [a for a in ("172.17.0.1", layout.node_ip)]
    for address in targets:
        kubectl("exec", "-n", namespace, "asker", "--", "sh", "-c",
                f"timeout 2 tftp -g -r q -l /dev/null {address} {port}; true", timeout=30)
    thread.join(6)
    listener.close()
    assert not got, f"a host listener on 0.0.0.0:{port} got a pod's datagram: {got}"


def test_pod_processes_run_in_the_cgroup_the_pods_output_rule_matches(layout):  # noqa: F811 - local backend only: this machine's cgroups
    """F5, the cause: every pod process sits under cgroups.PODS in the v2 hierarchy, which
    ZTR-E2E-PODS-OUT matches (v4 and v6)."""
    root = cgroups.unified_root()
    pods = [p for p in (root / cgroups.PODS).glob("**/cgroup.procs") if p.read_text().split()]
    assert pods, f"no pod process under {root / cgroups.PODS}: the rule would match nothing"
    for binary in ("iptables", "ip6tables"):
        assert f"-m cgroup --path {cgroups.PODS} -j ZTR-E2E-PODS-OUT" in " ".join(firewall.listing(binary, "filter"))


def _udp_listener(address: str, ports) -> tuple[socket.socket, int]:
    for port in ports:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((address, port))
            return sock, port
        except OSError:
            sock.close()
    raise RuntimeError(f"no free UDP port on {address} among {ports}")


def _received(sock: socket.socket, send) -> list:
    """Datagrams `sock` got while `send()` ran (it returns once its sends are done)."""
    got = []
    sock.settimeout(5)

    def listen():
        try:
            got.append(sock.recvfrom(512))
        except TimeoutError:
            pass  # nothing arrived: what must happen

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    send()
    thread.join(6)
    sock.close()
    return got


def test_a_pod_cannot_reach_a_listener_of_the_machine_in_the_node_port_range(layout, kubectl, namespace, busybox_image, wait_for_pods_ready):  # noqa: F811
    """F25 (review-harness2). ZTR-E2E-INPUT accepted 30000-32767 on every address of the machine:
    an owner's proxy there (Plex on 32400, a SOCKS proxy) got the cluster's traffic."""
    kubectl.apply(workloads.sleeper_pod("asker", busybox_image), namespace=namespace)
    wait_for_pods_ready(namespace, "app=asker")
    listener, port = _udp_listener("0.0.0.0", range(32700, 32767))

    def send():
        for address in ("172.17.0.1", layout.node_ip):
            kubectl("exec", "-n", namespace, "asker", "--", "sh", "-c",
                    f"timeout 2 tftp -g -r q -l /dev/null {address} {port}; true", timeout=30)

    got = _received(listener, send)
    assert not got, f"a host listener on 0.0.0.0:{port} (NodePort range) got a pod's datagram: {got}"


def test_a_host_network_pod_cannot_reach_a_resolver_of_the_machine_on_loopback(layout, kubectl, host_network_pod):  # noqa: F811
    """F26 (review-harness2). OUTPUT let pods (hostNetwork) and the harness's processes send
    anything to loopback, where a desktop's resolver listens (systemd-resolved on 127.0.0.53)."""
    listener, port = _udp_listener("127.0.0.53", [53])
    pod = host_network_pod

    def send():
        kubectl("exec", "-n", pod["metadata"]["namespace"], pod["metadata"]["name"], "--", "sh", "-c",
                f"timeout 2 tftp -g -r q -l /dev/null 127.0.0.53 {port}; true", timeout=30)

    got = _received(listener, send)
    assert not got, f"a resolver on 127.0.0.53:53 got a hostNetwork pod's datagram: {got}"
