"""Config files and command lines of the cluster's processes, as pure functions.

Everything here is derived from a `Layout` and the state directory, so it is tested without
starting anything. JSON is written where YAML is expected (JSON is YAML) to need no library.
The comments name the trap each non-default setting avoids (see the shared k8s notes).
"""

import json
from pathlib import Path

from e2e.cluster import cgroups, versions
from e2e.cluster.layout import Layout

CNI_PLUGIN_DIR = "/usr/lib/cni"  # Debian's containernetworking-plugins
CNI_NETWORK = "ztr-e2e"
APISERVER_ADMISSION_PLUGINS = ("NodeRestriction", "OwnerReferencesPermissionEnforcement")
CONTROLLERS = (
    # What the workloads under test run on: Deployments and their ReplicaSets, owner-reference
    # cleanup (a relay's children, foreground deletion), namespace deletion.
    "deployment-controller", "replicaset-controller", "garbage-collector-controller", "namespace-controller",
    # Services' endpoints (kube-proxy, kube-router and the tests read EndpointSlices).
    "endpoints-controller", "endpointslice-controller",
    # The relays' autoscaling and disruption budgets.
    "horizontal-pod-autoscaler-controller", "disruption-controller",
    # A namespace's default ServiceAccount, the tokens of the controllers' own accounts
    # (--use-service-account-credentials), and kube-root-ca.crt in every namespace (projected
    # into each pod's token volume: a pod without it never starts).
    "serviceaccount-controller", "serviceaccount-token-controller", "root-ca-certificate-publisher-controller",
    # The node: its pod CIDR, its not-ready taint taken off once it is Ready (the kubelet
    # registers it tainted), taint-based eviction, pods of a gone node cleaned up.
    "node-ipam-controller", "node-lifecycle-controller", "taint-eviction-controller", "pod-garbage-collector-controller",
    # The default ServiceCIDR's status (ClusterIP allocation) and the aggregated admin/edit/view roles.
    "service-cidr-controller", "clusterrole-aggregation-controller",
)
"""The controllers kube-controller-manager runs: what a test or the chart relies on. Left out
(each a set of watches and periodic passes, ~half of the 45 on by default): Jobs, CronJobs,
StatefulSets, DaemonSets, ReplicationControllers, volumes (PV/PVC binding, attach/detach,
expansion, protection), ResourceQuota (it watches every quotable kind), CSR signing and
approval (the kubelet's certificates come from the PKI made at `up`), DRA, the TTL
annotations, EndpointSlice mirroring, storage-version GC and migration, the legacy token
cleaner and the ValidatingAdmissionPolicy status; nothing here creates those objects."""
DEAD_REGISTRY = "http://127.0.0.1:1"
"""Where containerd is told every registry lives: nothing listens, so a pull of an image
that was never imported fails at once, locally ("connection refused")."""
REGISTRIES = (
    "_default", "docker.io", "registry-1.docker.io", "ghcr.io", "quay.io", "registry.k8s.io", "k8s.gcr.io",
    "gcr.io", "public.ecr.aws", "mcr.microsoft.com", "registry.gitlab.com", "nvcr.io",
)
"""Registries given a hosts.toml (`_default` is every other one, where containerd supports
it; a registry it still resolves by itself is dropped by the firewall's OUTPUT chain)."""


class StatePaths:
    """Named paths under one state directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pki = root / "pki"
        self.kubeconfigs = root / "kubeconfigs"
        self.logs = root / "logs"
        self.run = root / "run"
        self.etcd_data = root / "etcd"
        self.containerd = root / "containerd"
        self.containerd_socket = root / "containerd" / "containerd.sock"
        self.cni_conf = root / "cni" / "net.d"
        self.cni_ipam = root / "cni" / "ipam"
        self.kubelet_root = root / "kubelet"
        self.pod_logs = root / "pod-logs"
        self.configs = root / "configs"
        self.metrics_server = root / "metrics-server"
        self.registry_hosts = root / "configs" / "certs.d"
        self.registry_data = root / "registry"
        self.resolv_conf = root / "configs" / "resolv.conf"
        self.sysctl_record = root / "sysctl.json"

    def kubeconfig(self, name: str) -> Path:
        return self.kubeconfigs / f"{name}.conf"


def kubeadm_config(layout: Layout, state: StatePaths) -> str:
    """kubeadm is used for PKI and kubeconfigs only (`init phase certs|kubeconfig`)."""
    init = {
        "apiVersion": "kubeadm.k8s.io/v1beta4",
        "kind": "InitConfiguration",
        "localAPIEndpoint": {"advertiseAddress": layout.node_ip, "bindPort": layout.apiserver_port},
        "nodeRegistration": {"name": layout.node_name},
    }
    cluster = {
        "apiVersion": "kubeadm.k8s.io/v1beta4",
        "kind": "ClusterConfiguration",
        "kubernetesVersion": versions.KUBERNETES,
        "clusterName": "zt-relay-e2e",
        "certificatesDir": str(state.pki),
        "networking": {
            "serviceSubnet": layout.service_cidr,
            "podSubnet": layout.cluster_cidr,
            "dnsDomain": "cluster.local",
        },
        "apiServer": {"certSANs": [layout.node_ip, "127.0.0.1", "localhost", layout.kubernetes_service_ip]},
        # Every key (CAs, serving and client certificates, the ServiceAccount signing key):
        # P-256 keys are made at once, kubeadm's default RSA-2048 ones took 4-7 s of `up`.
        "encryptionAlgorithm": "ECDSA-P256",
    }
    return "---\n".join(json.dumps(doc, indent=2) + "\n" for doc in (init, cluster))


def etcd_command(layout: Layout, state: StatePaths, bin_dir: Path) -> list[str]:
    # Plain HTTP on loopback only: the apiserver is its only client, and nothing else listens.
    client = f"http://127.0.0.1:{layout.etcd_client_port}"
    peer = f"http://127.0.0.1:{layout.etcd_peer_port}"
    return [
        str(bin_dir / "etcd"),
        "--name=ztr-e2e",
        f"--data-dir={state.etcd_data}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=ztr-e2e={peer}",
        "--listen-metrics-urls=",
        "--log-level=warn",
        # Small and fast: a test cluster never needs compaction history or big snapshots.
        "--quota-backend-bytes=1073741824",
        "--unsafe-no-fsync",
    ]


def apiserver_command(layout: Layout, state: StatePaths, bin_dir: Path) -> list[str]:
    pki = state.pki
    return [
        str(bin_dir / "kube-apiserver"),
        # The node IP, not 0.0.0.0: pods reach it through the `kubernetes` Service, tests
        # through the kubeconfig, and nothing listens on other interfaces.
        f"--advertise-address={layout.node_ip}",
        f"--bind-address={layout.node_ip}",
        f"--secure-port={layout.apiserver_port}",
        f"--etcd-servers=http://127.0.0.1:{layout.etcd_client_port}",
        f"--service-cluster-ip-range={layout.service_cidr}",
        "--service-node-port-range=30000-32767",
        # As in a real cluster, so a chart's RBAC mistake fails here too.
        "--authorization-mode=Node,RBAC",
        # OwnerReferencesPermissionEnforcement as on hardened clusters (OpenShift): setting
        # blockOwnerDeletion needs delete (finalizers) permission on the owner, so an
        # operator missing that RBAC fails here too.
        "--enable-admission-plugins=" + ",".join(APISERVER_ADMISSION_PLUGINS),
        "--allow-privileged=true",
        f"--client-ca-file={pki / 'ca.crt'}",
        f"--tls-cert-file={pki / 'apiserver.crt'}",
        f"--tls-private-key-file={pki / 'apiserver.key'}",
        f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
        f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
        # The node name does not resolve here; logs/exec/metrics would fail with a DNS error.
        "--kubelet-preferred-address-types=InternalIP",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={pki / 'sa.pub'}",
        f"--service-account-signing-key-file={pki / 'sa.key'}",
        f"--proxy-client-cert-file={pki / 'front-proxy-client.crt'}",
        f"--proxy-client-key-file={pki / 'front-proxy-client.key'}",
        f"--requestheader-client-ca-file={pki / 'front-proxy-ca.crt'}",
        "--requestheader-allowed-names=front-proxy-client",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-username-headers=X-Remote-User",
        # metrics-server runs as a host process: reach it at its endpoint, not the ClusterIP.
        "--enable-aggregator-routing=true",
        "--profiling=false",
        # On SIGTERM, end every open watch at once (its client re-lists from elsewhere) and
        # wait for them at most this long. Without it (0 s) the HTTP server's shutdown waits
        # for the watch streams to close by themselves, up to --request-timeout (60 s), and
        # `stop` took 5-15 s (the SIGKILL of processes.stop): seen in a goroutine dump,
        # net/http.(*Server).Shutdown under RunServer, with the listener already closed.
        "--shutdown-watch-termination-grace-period=5s",
        "--v=1",
    ]


def controller_manager_command(layout: Layout, state: StatePaths, bin_dir: Path) -> list[str]:
    kubeconfig = state.kubeconfig("controller-manager")
    pki = state.pki
    return [
        str(bin_dir / "kube-controller-manager"),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={layout.controller_manager_port}",
        f"--client-ca-file={pki / 'ca.crt'}",
        f"--requestheader-client-ca-file={pki / 'front-proxy-ca.crt'}",
        f"--cluster-signing-cert-file={pki / 'ca.crt'}",
        f"--cluster-signing-key-file={pki / 'ca.key'}",
        f"--root-ca-file={pki / 'ca.crt'}",
        f"--service-account-private-key-file={pki / 'sa.key'}",
        # Each controller gets its own ServiceAccount, so RBAC is exercised as in production.
        "--use-service-account-credentials=true",
        "--allocate-node-cidrs=true",
        f"--cluster-cidr={layout.cluster_cidr}",
        "--node-cidr-mask-size=24",
        f"--service-cluster-ip-range={layout.service_cidr}",
        "--leader-elect=false",
        # The HorizontalPodAutoscaler looks at the metrics every second, not every 15 s: a new
        # figure (one per --metric-resolution) is acted on at once. The autoscaler tests wait
        # for its decisions (first measurement, scale-up) on conditions, never for a number of
        # periods, so a shorter period only shortens those waits; a sync with nothing new costs
        # a read of the scale and of metrics-server, and writes nothing.
        # Left at their defaults, on purpose: --horizontal-pod-autoscaler-cpu-initialization-period
        # (5 min: for that long after a pod's start, its CPU figure counts only once the window
        # it was measured over began after the pod became Ready, so the start-up burst of a
        # relay never counts; every test pod is younger than that, so an idle pod's figure is
        # an idle one, which the tests' baselines rely on) and --horizontal-pod-autoscaler-
        # initial-readiness-delay (30 s: read only after that period).
        "--horizontal-pod-autoscaler-sync-period=1s",
        "--controllers=" + ",".join(CONTROLLERS),
        "--v=1",
    ]


def scheduler_command(layout: Layout, state: StatePaths, bin_dir: Path) -> list[str]:
    kubeconfig = state.kubeconfig("scheduler")
    return [
        str(bin_dir / "kube-scheduler"),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={layout.scheduler_port}",
        "--leader-elect=false",
        "--v=1",
    ]


def containerd_config(layout: Layout, state: StatePaths) -> str:
    """A containerd of our own: own root, state and socket, so Docker's is never touched."""
    c = state.containerd
    return f"""\
version = 2
root = "{c / 'root'}"
state = "{c / 'state'}"

[grpc]
  address = "{state.containerd_socket}"

[ttrpc]
  address = "{c / 'containerd.sock.ttrpc'}"

[debug]
  address = "{c / 'debug.sock'}"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{c / 'opt'}"

[plugins."io.containerd.grpc.v1.cri"]
  # No registry here: the sandbox image is built locally and imported (see pause.py).
  sandbox_image = "{layout.pause_image}"
  # This sandbox lacks CAP_SYS_RESOURCE; without this every pod sandbox fails in runc.
  restrict_oom_score_adj = true
  enable_selinux = false
  # Pod network namespaces under our state dir, not /var/run/netns/cni-* where another
  # runtime's live: `down` finds ours by path and never touches theirs.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_PLUGIN_DIR}"
    conf_dir = "{state.cni_conf}"
  # Every registry is a dead local mirror (see registry_hosts): nothing is ever pulled.
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{state.registry_hosts}"
"""


def _hosts_toml(server: str) -> str:
    return f'server = "{server}"\n\n[host."{server}"]\n  capabilities = ["pull", "resolve"]\n'


def registry_hosts(layout: Layout) -> dict[str, str]:
    """`<registry>/hosts.toml` files for containerd's config_path: every registry -> DEAD_REGISTRY,
    except our own loopback registry (`layout.registry`), pulled from over plain HTTP. An image
    it lacks fails there (404), locally; nothing else is dialled."""
    dead = _hosts_toml(DEAD_REGISTRY)
    return {
        **{f"{registry}/hosts.toml": dead for registry in REGISTRIES},
        f"{layout.registry}/hosts.toml": _hosts_toml(f"http://{layout.registry}"),
    }


def registry_config(layout: Layout, state: StatePaths) -> str:
    """The CNCF distribution registry's config: loopback only, storage under the state dir (so
    `down` removes it), no debug listener, no pull-through proxy, no notifications."""
    config = {
        "version": "0.1",
        "log": {"level": "info", "formatter": "text"},
        "storage": {"filesystem": {"rootdirectory": str(state.registry_data)}, "delete": {"enabled": True}},
        "http": {"addr": layout.registry},
    }
    return json.dumps(config, indent=2) + "\n"


def registry_command(layout: Layout, state: StatePaths, bin_dir: Path) -> list[str]:
    return [str(bin_dir / "registry"), "serve", str(state.configs / "registry.json")]


def registry_environment(env: dict[str, str]) -> dict[str, str]:
    """Its OpenTelemetry exporter would otherwise dial an OTLP collector (localhost:4318)."""
    return {**env, "OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none", "OTEL_SDK_DISABLED": "true"}


def resolv_conf(layout: Layout) -> str:
    """The kubelet's resolvConf (what `dnsPolicy: Default` pods get): the cluster's CoreDNS,
    which answers cluster names only, instead of the machine's resolvers."""
    return f"nameserver {layout.node_ip}\noptions ndots:1\n"


def cni_conflist(layout: Layout, state: StatePaths) -> str:
    config = {
        "cniVersion": "1.0.0",
        "name": CNI_NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": layout.cni_bridge,
                "isGateway": True,
                # No masquerade: test hosts see real pod addresses, and nothing may leave anyway.
                "ipMasq": False,
                # A pod reaching itself through its own Service needs hairpin.
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": layout.pod_subnet}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    # IPAM leases under the state dir, so `down` removes them with it.
                    "dataDir": str(state.cni_ipam),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    return json.dumps(config, indent=2) + "\n"


def kubelet_config(layout: Layout, state: StatePaths) -> str:
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        # The apiserver and metrics-server reach the kubelet at the node's InternalIP.
        "address": layout.node_ip,
        "port": layout.kubelet_port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": layout.kubelet_healthz_port,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(state.pki / "ca.crt")},
        },
        "authorization": {"mode": "Webhook"},
        # This machine has cgroup v1, which kubelet >= 1.35 refuses unless told otherwise.
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        # Pods under a cgroup of ours, not the machine's /kubepods (another kubelet's).
        "cgroupRoot": cgroups.kubelet_cgroup_root(),
        "containerRuntimeEndpoint": f"unix://{state.containerd_socket}",
        "clusterDomain": "cluster.local",
        "clusterDNS": [layout.dns_service_ip],
        "podLogsDir": str(state.pod_logs),
        "resolvConf": str(state.resolv_conf),
        # Imported images cannot be pulled back: never garbage-collect them, never evict.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "localStorageCapacityIsolation": False,
        "protectKernelDefaults": False,
        "serializeImagePulls": False,
        "maxPods": 110,
        "rotateCertificates": False,
        "registerNode": True,
        # Faster status for tests (defaults are 10 s / 5 min): a changed node status (Ready,
        # images) is posted within 4 s.
        "nodeStatusUpdateFrequency": "4s",
        # An unchanged one only every 5 minutes, the default: left unset it follows the update
        # frequency, and the whole Node (its list of images included) was PATCHed every 4 s,
        # written to etcd and sent to every Node watcher (the controller manager, the scheduler,
        # kube-proxy, kube-router, metrics-server, CoreDNS). The node's heartbeat is its Lease
        # (renewed every 10 s), not its status.
        "nodeStatusReportFrequency": "5m",
        "syncFrequency": "10s",
        "fileCheckFrequency": "10s",
    }
    return json.dumps(config, indent=2) + "\n"


def kubelet_command(layout: Layout, state: StatePaths, bin_dir: Path) -> list[str]:
    return [
        str(bin_dir / "kubelet"),
        f"--config={state.configs / 'kubelet.json'}",
        f"--kubeconfig={state.kubeconfig('kubelet')}",
        f"--root-dir={state.kubelet_root}",
        f"--cert-dir={state.kubelet_root / 'pki'}",
        f"--node-ip={layout.node_ip}",
        f"--hostname-override={layout.node_name}",
        "--v=1",
    ]


def kube_proxy_config(layout: Layout, state: StatePaths) -> str:
    config = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(state.kubeconfig("kube-proxy"))},
        "mode": "iptables",
        "hostnameOverride": layout.node_name,
        "clusterCIDR": layout.cluster_cidr,
        "healthzBindAddress": f"127.0.0.1:{layout.kube_proxy_healthz_port}",
        "metricsBindAddress": f"127.0.0.1:{layout.kube_proxy_metrics_port}",
        # NodePorts on the node IP only: no route_localnet sysctl, no ports on docker0.
        "nodePortAddresses": ["primary"],
        "iptables": {"localhostNodePorts": False, "syncPeriod": "30s", "minSyncPeriod": "0s"},
        # Leave the machine's conntrack sysctls alone (they are not ours to change).
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
    }
    return json.dumps(config, indent=2) + "\n"


def kube_proxy_command(layout: Layout, state: StatePaths, bin_dir: Path) -> list[str]:
    return [str(bin_dir / "kube-proxy"), f"--config={state.configs / 'kube-proxy.json'}", "--v=1"]


def kube_router_command(layout: Layout, state: StatePaths, bin_dir: Path) -> list[str]:
    """kube-router's NetworkPolicy controller only (iptables + ipset): no routing, no proxy
    (kube-proxy is the proxy; its advisory GHSA-phqm-jgc3-qf8g is in the proxy)."""
    return [
        str(bin_dir / "kube-router"),
        "--run-firewall=true",
        "--run-router=false",
        "--run-service-proxy=false",
        f"--kubeconfig={state.kubeconfig('admin')}",
        f"--hostname-override={layout.node_name}",
        f"--service-cluster-ip-range={layout.service_cidr}",
        "--service-node-port-range=30000-32767",  # as the apiserver's
        "--enable-ipv4=true",
        "--enable-ipv6=false",  # the cluster is IPv4 only; it never touches ip6tables
        # Its health server binds every address (no option to choose one): off. Readiness
        # is its chains being there (components).
        "--health-port=0",
        "--metrics-port=0",
        "--v=1",
    ]


def metrics_server_command(layout: Layout, state: StatePaths, bin_dir: Path) -> list[str]:
    kubeconfig = state.kubeconfig("admin")
    return [
        str(bin_dir / "metrics-server"),
        f"--secure-port={layout.metrics_server_port}",
        f"--bind-address={layout.node_ip}",
        f"--cert-dir={state.metrics_server}",
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        f"--requestheader-client-ca-file={state.pki / 'front-proxy-ca.crt'}",
        "--kubelet-preferred-address-types=InternalIP",
        # The kubelet's serving cert is self-signed (no serving-cert bootstrap here).
        "--kubelet-insecure-tls",
        # Its minimum (default 60 s), so a new pod has a CPU figure sooner: a rate needs two
        # scrapes, and the autoscaler takes a pod's first figure only from a window that began
        # after the pod was Ready (see the controller manager): from the second scrape after Ready.
        # Here the kubelet's /metrics/resource figures are read when asked (seen: their
        # timestamps are milliseconds old at every scrape), so its cAdvisor housekeeping
        # interval (10-20 s) adds nothing and is left alone. metrics-server refuses to start
        # unless the resolution is at least 10 s and 9/10 of it covers --kubelet-request-timeout
        # (default 10 s): a scrape of one local kubelet takes milliseconds, 5 s is plenty.
        "--metric-resolution=10s",
        "--kubelet-request-timeout=5s",
    ]


def host_endpoint_slice(layout: Layout, service: str, ports: list[dict]) -> dict:
    """An EndpointSlice sending a selector-less kube-system Service to a process on the node."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service}-host",
            "namespace": "kube-system",
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [layout.node_ip], "conditions": {"ready": True}}],
        "ports": ports,
    }


def metrics_server_objects(layout: Layout) -> list[dict]:
    """A selector-less Service, its EndpointSlice to the host process, and the APIService."""
    name = "metrics-server"
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": "kube-system"},
            "spec": {"ports": [{"name": "https", "port": 443, "targetPort": layout.metrics_server_port}]},
        },
        host_endpoint_slice(layout, name, [{"name": "https", "port": layout.metrics_server_port, "protocol": "TCP"}]),
        {
            "apiVersion": "apiregistration.k8s.io/v1",
            "kind": "APIService",
            "metadata": {"name": "v1beta1.metrics.k8s.io"},
            "spec": {
                "service": {"name": name, "namespace": "kube-system", "port": 443},
                "group": "metrics.k8s.io",
                "version": "v1beta1",
                "insecureSkipTLSVerify": True,
                "groupPriorityMinimum": 100,
                "versionPriority": 100,
            },
        },
    ]


def corefile(layout: Layout, state: StatePaths) -> str:
    """Cluster names only. There is deliberately no `forward` (and no `.` zone): a query for
    any other name is refused instead of being sent to an upstream resolver off the machine."""
    return f"""\
cluster.local:{layout.dns_port} in-addr.arpa:{layout.dns_port} ip6.arpa:{layout.dns_port} {{
    bind {layout.node_ip}
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {state.kubeconfig("admin")}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }}
    cache 5
}}
"""


def coredns_command(layout: Layout, state: StatePaths, bin_dir: Path) -> list[str]:
    return [str(bin_dir / "coredns"), "-conf", str(state.configs / "Corefile")]


def dns_objects(layout: Layout) -> list[dict]:
    """`kube-dns` at the conventional ClusterIP, pointing at CoreDNS on the node (a host process)."""
    name = "kube-dns"
    ports = [("dns", "UDP"), ("dns-tcp", "TCP")]
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": "kube-system", "labels": {"k8s-app": name}},
            "spec": {
                "clusterIP": layout.dns_service_ip,
                "ports": [{"name": n, "port": 53, "protocol": p, "targetPort": layout.dns_port} for n, p in ports],
            },
        },
        host_endpoint_slice(layout, name, [{"name": n, "port": layout.dns_port, "protocol": p} for n, p in ports]),
    ]
