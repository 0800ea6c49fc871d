"""The cluster's fixed address plan and names: one frozen dataclass, no I/O.

Every range avoids the machine's own networks (eth0 192.0.2.0/24, docker0 172.17.0.0/16).
Pods, Services and the load-balancer pool are routed to a sink namespace (see `network`), so
an address in them that no Kubernetes rule claims never follows the default route out.
"""

import ipaddress
import re
from dataclasses import dataclass

MARKER = "ztr-"
"""Every link and network namespace the harness creates is named `ztr-...`. ZeroTier names its
Linux taps "zt" + 8 base32 characters of the network id (a-z, 2-7, no dash), so no ZeroTier
interface can carry this marker; the earlier marker `ztr` (no dash) matched about one
ZeroTier network in 32 (5dfbd3d12c4a3698 is `ztrtlztz5u`)."""
TEST_HOST_VETH = re.compile(r"ztr-th\d{1,3}")
"""A test host's veth on the host side: `ztr-th` + the last octet of its address."""
ESCAPE_LINK = re.compile(r"ztr-x[0-9a-f]{6}")
"""The egress tests' second way out (test_cluster_egress `escape`), one per run: a veth into a
namespace `ztr-x-<tag>` counting what arrives. A run killed mid-test leaves both: ours to remove."""
ESCAPE_NETNS_PREFIX = "ztr-x-"
LEGACY_TEST_HOST_VETH = re.compile(r"ztrh\d{1,3}")
"""The same veth as named by the harness before the dash (4 to 7 characters: a ZeroTier tap
name always has 10). `down` still removes these (a link never outlives the boot)."""


@dataclass(frozen=True)
class Layout:
    """Addresses, names and ports of the local cluster."""

    primary_interface: str
    """The interface of the default route; forwarded cluster traffic towards it is dropped."""
    node_ip: str = "10.252.0.1"
    """The node's InternalIP, on a port-less bridge of its own (`node_interface`): nothing of
    the cluster listens on the machine's real interfaces, the address is the same on every
    machine, and kubeadm (which refuses loopback addresses) accepts it."""
    node_interface: str = "ztr-node0"
    node_name: str = "ztr-e2e-node"
    cluster_cidr: str = "10.244.0.0/16"
    """All pod addresses; the node's own pod subnet is `pod_subnet`."""
    pod_subnet: str = "10.244.0.0/24"
    service_cidr: str = "10.96.0.0/16"
    lb_pool: str = "10.250.0.0/24"
    """Addresses the LoadBalancer stand-in hands out (.0 and the broadcast are skipped)."""
    test_host_cidr: str = "10.251.0.0/24"
    """Test-host namespaces ("a client on the internet", "a ZeroTier root"); .1 is the host."""
    cni_bridge: str = "ztr-cni0"
    hosts_bridge: str = "ztr-hosts0"
    sink_netns: str = "ztr-sink"
    sink_host_veth: str = "ztr-sink0"
    sink_link_cidr: str = "169.254.123.0/30"
    """The /30 between the host and the sink namespace; the sink is the routes' next hop."""
    test_host_netns_prefix: str = "ztr-h-"
    apiserver_port: int = 6443
    etcd_client_port: int = 23790
    etcd_peer_port: int = 23800
    metrics_server_port: int = 4443
    registry_port: int = 23795
    """The image registry (`registry serve`) on 127.0.0.1 only: containerd pulls from it; pods
    and test hosts cannot reach it (the machine's loopback is not theirs)."""
    controller_manager_port: int = 10257
    """kube-controller-manager's HTTPS (health, metrics) on 127.0.0.1."""
    scheduler_port: int = 10259
    """kube-scheduler's HTTPS (health, metrics) on 127.0.0.1."""
    kubelet_port: int = 10250
    """The kubelet's API on the node IP (the apiserver's exec/logs, metrics-server's scrape)."""
    kubelet_healthz_port: int = 10248
    kube_proxy_healthz_port: int = 10256
    """kube-proxy's /healthz on 127.0.0.1: `up` waits on it."""
    kube_proxy_metrics_port: int = 10249
    dns_port: int = 53
    """CoreDNS on the node IP, UDP and TCP; the kube-dns Service's targetPort (its own port
    stays 53, where pods' resolv.conf sends)."""
    pause_image: str = "zt-relay-e2e/pause:1"

    @property
    def apiserver_url(self) -> str:
        return f"https://{self.node_ip}:{self.apiserver_port}"

    @property
    def registry(self) -> str:
        """host:port of the loopback registry (`--image-registry` for --cluster=existing here)."""
        return f"127.0.0.1:{self.registry_port}"

    @property
    def kubernetes_service_ip(self) -> str:
        """The first address of the service range: the `kubernetes` Service's ClusterIP."""
        return str(ipaddress.ip_network(self.service_cidr)[1])

    @property
    def dns_service_ip(self) -> str:
        """The `kube-dns` Service's ClusterIP (the conventional tenth address)."""
        return str(ipaddress.ip_network(self.service_cidr)[10])

    @property
    def sink_routes(self) -> tuple[str, ...]:
        """Ranges whose unclaimed addresses must end in the sink instead of the default route."""
        return (self.cluster_cidr, self.service_cidr, self.lb_pool)

    @property
    def sink_host_address(self) -> str:
        return str(ipaddress.ip_network(self.sink_link_cidr)[1])

    @property
    def sink_address(self) -> str:
        return str(ipaddress.ip_network(self.sink_link_cidr)[2])

    @property
    def hosts_gateway(self) -> str:
        return str(ipaddress.ip_network(self.test_host_cidr)[1])

    @property
    def cluster_links(self) -> tuple[str, ...]:
        """The links the cluster's traffic enters the machine by: the pods' bridge and the test
        hosts' bridge (test hosts' and pods' veths are ports of these)."""
        return (self.cni_bridge, self.hosts_bridge)

    @property
    def own_links(self) -> tuple[str, ...]:
        """Every fixed link of ours (test hosts' veths come and go: `is_own_link`)."""
        return (self.cni_bridge, self.hosts_bridge, self.sink_host_veth, self.node_interface)

    def is_own_link(self, name: str) -> bool:
        """Exact names only: a link merely starting like ours is someone else's."""
        return name in self.own_links or TEST_HOST_VETH.fullmatch(name) is not None or ESCAPE_LINK.fullmatch(name) is not None

    def is_own_netns(self, name: str) -> bool:
        return name == self.sink_netns or name.startswith((self.test_host_netns_prefix, ESCAPE_NETNS_PREFIX))

    def lb_addresses(self) -> list[str]:
        return [str(ip) for ip in ipaddress.ip_network(self.lb_pool).hosts()]


def check_disjoint(layout: Layout, machine_networks: list[str], machine_routes: list[str] = ()) -> None:
    """Raise ValueError if a cluster range overlaps a network on the machine's interfaces
    (`network.machine_networks`: real neighbours), or holds a route of the machine
    (`network.machine_routes`: equal to or inside a range of ours, e.g. a VPN's 10.96.0.0/16 to
    a dev cluster's Services, which the sink route would replace or swallow).

    A route that merely CONTAINS a range of ours is no conflict: a split-tunnel VPN's
    10.0.0.0/8, a full-tunnel VPN's 0.0.0.0/1 + 128.0.0.0/1 (the default route in two halves),
    zeroconf's 169.254.0.0/16 on an ordinary desktop. The sink route is more specific: while up
    it takes only our slice (which would otherwise leave the machine by that route), replaces
    nothing, and `down` deletes only routes on our sink link."""
    ours = {
        "node_ip": f"{layout.node_ip}/32",
        "cluster_cidr": layout.cluster_cidr,
        "service_cidr": layout.service_cidr,
        "lb_pool": layout.lb_pool,
        "test_host_cidr": layout.test_host_cidr,
        "sink_link_cidr": layout.sink_link_cidr,
    }
    for field_name, cidr in ours.items():
        mine = ipaddress.ip_network(cidr)
        for other in machine_networks:
            if mine.overlaps(ipaddress.ip_network(other, strict=False)):
                raise ValueError(f"layout.{field_name} {cidr} overlaps the machine's network {other}")
        for other in machine_routes:
            theirs = ipaddress.ip_network(other, strict=False)
            if theirs.subnet_of(mine):
                raise ValueError(f"layout.{field_name} {cidr} holds the machine's route {other} (the sink route would take it over)")
    if not ipaddress.ip_network(layout.pod_subnet).subnet_of(ipaddress.ip_network(layout.cluster_cidr)):
        raise ValueError(f"layout.pod_subnet {layout.pod_subnet} is not inside cluster_cidr {layout.cluster_cidr}")
