"""ClusterIP, NodePort and LoadBalancer Services carry traffic from a host outside the cluster,
and pods reach such hosts with their own addresses (what a relay needs towards a ZeroTier root)."""

import ipaddress
import json
import socket
import subprocess
import sys

import pytest

from e2e import workloads
from e2e.cluster import locks, network

FETCH = """
import sys, urllib.request
print(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode().strip())
"""


def _fetch_from(host, url: str) -> str | None:
    proc = host.run(sys.executable, "-c", FETCH, url, check=False, timeout=15)
    return proc.stdout.strip() if proc.returncode == 0 else None


@pytest.fixture
def web(kubectl, namespace, busybox_image, wait_for_pods_ready):
    kubectl.apply(workloads.web_deployment("web", busybox_image, replicas=2), namespace=namespace)
    pods = wait_for_pods_ready(namespace, "app=web", count=2)
    return {p["metadata"]["name"] for p in pods}


def test_a_cluster_ip_reaches_the_pods_from_a_test_host(kubectl, namespace, web, test_hosts, wait_for):
    kubectl.apply(workloads.service("web"), namespace=namespace)
    ip = kubectl.api.get("service", "web", namespace)["spec"]["clusterIP"]
    client = test_hosts("client")
    served = wait_for(f"http://{ip}/ from the test host", lambda: _fetch_from(client, f"http://{ip}/"), 30)
    assert served in web


def test_a_node_port_reaches_the_pods_from_a_test_host(kubectl, namespace, web, cluster, test_hosts, wait_for):
    kubectl.apply(workloads.service("web", "NodePort"), namespace=namespace)
    port = kubectl.api.get("service", "web", namespace)["spec"]["ports"][0]["nodePort"]
    url = f"http://{cluster.layout.node_ip}:{port}/"
    client = test_hosts("client")
    assert wait_for(f"{url} from the test host", lambda: _fetch_from(client, url), 30) in web


@pytest.mark.parametrize("policy", ["Cluster", "Local"], ids=["policy-cluster", "policy-local"])
def test_a_load_balancer_address_is_assigned_and_reaches_the_pods(kubectl, namespace, web, test_hosts, wait_for, policy):
    kubectl.apply(workloads.service("web", "LoadBalancer", external_traffic_policy=policy), namespace=namespace)

    def ingress_ip():
        svc = kubectl.api.get("service", "web", namespace)
        return (svc["status"].get("loadBalancer", {}).get("ingress") or [{}])[0].get("ip")

    ip = wait_for("the LB stand-in to assign an address", ingress_ip, 30)
    client = test_hosts("client")
    assert wait_for(f"http://{ip}/ from the test host", lambda: _fetch_from(client, f"http://{ip}/"), 30) in web


# One connection, one socket: SYN retransmits keep the source port, as any client's do.
CONNECT_ONCE = """
import socket, sys
with socket.create_connection((sys.argv[1], 80), timeout=float(sys.argv[2])) as s:
    s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
    print(b"".join(iter(lambda: s.recv(4096), b"")).decode().strip().splitlines()[-1])
"""


def test_a_connection_begun_before_its_load_balancer_address_is_programmed_gets_through_once_it_is(
    kubectl, namespace, web, cluster, test_hosts, wait_for, probes
):
    """A client's first SYN may beat kube-proxy to a just-assigned address (the chart test's
    tunnel did): it lands in the sink, and the retransmits must reach the pods once kube-proxy
    has programmed the address, not stay pinned to the sink by a conntrack entry."""
    layout = cluster.layout
    claimed = {i.get("ip") for svc in kubectl.json("get", "services", "--all-namespaces")["items"]
               for i in (svc["status"].get("loadBalancer", {}).get("ingress") or [])}
    address = next(ip for ip in reversed(layout.lb_addresses()) if ip not in claimed)
    client = test_hosts("client")
    # This client's SYNs in the sink (the sink's own counter is every session's).
    in_sink = probes.count("iptables", "raw", "PREROUTING", "-s", client.address, "-d", address, "-p", "tcp",
                           "--dport", "80", first=True, netns=layout.sink_netns)
    connect = client.popen(sys.executable, "-c", CONNECT_ONCE, address, "25",
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for("the first SYN in the sink", lambda: probes.packets(in_sink) > 0, 10, interval=0.1)
        service = workloads.service("web", "LoadBalancer", external_traffic_policy="Local")
        service["spec"]["loadBalancerIP"] = address
        kubectl.apply(service, namespace=namespace)
        wait_for(f"kube-proxy to program {address}", lambda: f"-d {address}/32" in network.sh(
            "iptables", "-w", "5", "-t", "nat", "-S", "KUBE-SERVICES").stdout, 20, interval=0.2)
        out, err = connect.communicate(timeout=40)
    finally:
        if connect.poll() is None:
            connect.kill()
            connect.communicate()
    assert connect.returncode == 0, f"the connection to {address} never got through: {err.strip()}"
    assert out.strip() in web


@pytest.mark.alone_on_cluster(reason="the LoadBalancer pool is the machine's: a concurrent Service may take the released address")
def test_deleting_a_load_balancer_service_releases_its_address(kubectl, namespace, cluster, wait_for):
    kubectl.apply(workloads.service("first", "LoadBalancer"), namespace=namespace)

    def ip_of(name):
        svc = kubectl.api.get("service", name, namespace)
        return (svc["status"].get("loadBalancer", {}).get("ingress") or [{}])[0].get("ip")

    first = wait_for("an address for the first Service", lambda: ip_of("first"), 30)
    kubectl("delete", "service", "first", "-n", namespace)
    kubectl.apply(workloads.service("second", "LoadBalancer"), namespace=namespace)
    # The pool hands out the lowest free address, so the released one comes back.
    assert wait_for("an address for the second Service", lambda: ip_of("second"), 30) == first


UDP_LISTEN = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 9993))
print("listening", flush=True)
s.settimeout(float(sys.argv[1]))
data, (ip, port) = s.recvfrom(2048)
print(ip, data.decode(errors="replace"))
"""


def test_a_pod_reaches_a_test_host_by_udp_with_its_own_address(kubectl, namespace, busybox_image, test_hosts, wait_for_pods_ready):
    root = test_hosts("root")
    kubectl.apply(workloads.sleeper_pod("sender", busybox_image), namespace=namespace)
    (pod,) = wait_for_pods_ready(namespace, "app=sender")
    listener = root.popen(sys.executable, "-c", UDP_LISTEN, "20", stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout.readline().strip() == "listening"
        # busybox's nc has no UDP; its tftp client sends a read request ("hello") by UDP.
        # One request, no retry: on a local veth path a lost first datagram is a bug.
        send = f"timeout 2 tftp -g -r hello -l /dev/null {root.address} 9993; true"
        kubectl("exec", "-n", namespace, "sender", "--", "sh", "-c", send)
        out, _ = listener.communicate(timeout=25)
    finally:
        listener.kill()
        listener.communicate()
    source, payload = out.split(maxsplit=1)
    assert source == pod["status"]["podIP"]  # no masquerade: the root sees the pod itself
    assert "hello" in payload


def test_pods_resolve_service_names_and_nothing_else(kubectl, namespace, web, busybox_image, wait_for_pods_ready, wait_for):
    kubectl.apply(workloads.service("web"), workloads.sleeper_pod("client", busybox_image), namespace=namespace)
    wait_for_pods_ready(namespace, "app=client")
    ip = kubectl.api.get("service", "web", namespace)["spec"]["clusterIP"]
    fqdn = f"web.{namespace}.svc.cluster.local"

    # nslookup has busybox's own resolver; static glibc can't load NSS, so wget can't resolve.
    def resolve():
        proc = kubectl("exec", "-n", namespace, "client", "--", "nslookup", fqdn, check=False)
        return proc.stdout if proc.returncode == 0 else None

    assert f"Address: {ip}" in wait_for(f"{fqdn} to resolve in a pod", resolve, 30)
    request = f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} 80"

    def fetch():  # kube-proxy may not have programmed the new Service yet
        proc = kubectl("exec", "-n", namespace, "client", "--", "sh", "-c", request, check=False)
        return proc.stdout.strip().splitlines()[-1] if proc.returncode == 0 and proc.stdout.strip() else None

    assert wait_for(f"http://{ip}/ from the pod", fetch, 30) in web
    # CoreDNS here has no upstream: outside names are refused, never forwarded off the machine.
    outside = kubectl("exec", "-n", namespace, "client", "--", "nslookup", "example.com", check=False)
    assert outside.returncode != 0 and "REFUSED" in outside.stdout


STALE_MAC = "02:7a:72:00:0e:2e"
"""A locally administered MAC no link here has: the one a removed test host had, as far as the
machine's neighbour table still knows."""


def _neighbours(layout) -> dict[str, str]:
    out = network.sh("ip", "-j", "-4", "neigh", "show", "dev", layout.hosts_bridge).stdout
    return {n["dst"]: n.get("lladdr", "") for n in json.loads(out or "[]")}


def test_a_test_host_on_a_freed_address_gets_the_first_datagram_whatever_the_machine_remembered(cluster, test_hosts):
    """Test hosts take the first free address, so a new one often has the address of one just
    removed. Removing a host's link does not always take the machine's neighbour entry for it
    (seen REACHABLE with the old MAC after `delete_test_host`, 1 time in 3), and while another
    host keeps the bridge up nothing flushes it: a first datagram to the new host went to the old
    MAC and was lost (a pod's UDP to a ZeroTier root in shard runs). Here every free address gets
    such an entry first (under the lock that address picking takes, so no other run's new host
    is given one), whatever address the new host then takes."""
    layout = cluster.layout
    test_hosts("keeper")  # the bridge keeps its carrier: a carrier loss flushes its neighbours
    with locks.exclusive(network.HOSTS_LOCK):
        used = network.used_host_addresses(layout)
        free = [str(ip) for ip in ipaddress.ip_network(layout.test_host_cidr).hosts() if str(ip) not in used]
        batch = "".join(f"neigh replace {ip} lladdr {STALE_MAC} dev {layout.hosts_bridge} nud reachable\n" for ip in free)
        subprocess.run(["ip", "-batch", "-"], input=batch, text=True, check=True, capture_output=True)
    try:
        root = test_hosts("root")
        assert _neighbours(layout).get(root.address) != STALE_MAC
        listener = root.popen(sys.executable, "-c", UDP_LISTEN, "5", stdout=subprocess.PIPE, text=True)
        try:
            assert listener.stdout.readline().strip() == "listening"
            # One datagram, no retry, from the machine: routed by the bridge, where the pods'
            # packets to a test host go too.
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
                sender.sendto(b"first", (root.address, 9993))
            out, _ = listener.communicate(timeout=10)
        finally:
            listener.kill()
            listener.communicate()
        assert out.split() == [layout.hosts_gateway, "first"], out
    finally:
        with locks.exclusive(network.HOSTS_LOCK):
            stale = [ip for ip, mac in _neighbours(layout).items() if mac == STALE_MAC]
            batch = "".join(f"neigh del {ip} dev {layout.hosts_bridge}\n" for ip in stale)
            subprocess.run(["ip", "-batch", "-"], input=batch, text=True, check=False, capture_output=True)
