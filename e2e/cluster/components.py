"""The cluster's host processes: ONE ordered list, how each is started, when it is ready.

`up` starts them in this order, `down` stops them in reverse, `status` and the inventory list
them, and `stop`/`start` (for tests that take one component away for a while) look them up
here. A component's command is a pure function of the layout and the state directory.
"""

import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from e2e.cluster import configs, kube_router_shim, paths
from e2e.cluster.configs import StatePaths
from e2e.cluster.kubectl import Kubectl
from e2e.cluster.layout import Layout

Command = Callable[[Layout, StatePaths, Path], list[str]]


@dataclass(frozen=True)
class Component:
    name: str
    """The pid-file and log-file name (`<state>/run/<name>.pid`, `<state>/logs/<name>.log`)."""
    command: Command
    """argv from (layout, state paths, bin dir)."""
    ready: Callable[[Layout, StatePaths], bool] | None = None
    """A probe that is truthy once the process serves (None: running is enough)."""
    python: bool = False
    """A Python module of this repository (needs the repository on PYTHONPATH)."""
    env: Callable[[dict[str, str]], dict[str, str]] | None = None
    """Adjusts the process's environment (kube-router's shims first on its PATH: `kube_router_shim`)."""


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return resp.status == 200


def _metrics_server_ready(layout: Layout, state: StatePaths) -> bool:
    """It serves: flags, certificate and kubeconfigs accepted (it exits on a bad one just after
    start). /livez, not /readyz: that waits for two scrapes (--metric-resolution each), which
    the tests that need metrics wait for themselves. Its certificate is self-signed (--cert-dir),
    and /livez needs no credentials."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    url = f"https://{layout.node_ip}:{layout.metrics_server_port}/livez"
    with urllib.request.urlopen(url, timeout=2, context=context) as resp:
        return resp.status == 200


class _ApiserverReady:
    """/readyz answers 200 (an error status or no answer raises: not yet). A GET of our own,
    not a kubectl process per poll (~70 ms of CPU each, every 0.3 s of each API server start),
    and on one reader for all the polls of a wait, not a TLS handshake each: `close_probe`
    after the wait closes it. (Kubectl.api makes it again for another or a rewritten kubeconfig.)"""

    def __init__(self) -> None:
        self.kubectl: Kubectl | None = None

    def __call__(self, layout: Layout, state: StatePaths) -> bool:
        kubeconfig = str(state.kubeconfig("super-admin"))
        if self.kubectl is None or self.kubectl.kubeconfig != kubeconfig:
            self.close()
            self.kubectl = Kubectl(kubeconfig, binary=paths.binary("kubectl"), timeout=10)
        self.kubectl.api.raw("/readyz")
        return True

    def close(self) -> None:
        if self.kubectl is not None:
            self.kubectl.close()
            self.kubectl = None


def close_probe(comp: Component) -> None:
    """Close what a component's ready probe kept across one wait's polls (the API server's reader)."""
    if isinstance(comp.ready, _ApiserverReady):
        comp.ready.close()


def _containerd_ready(layout: Layout, state: StatePaths) -> bool:
    if not state.containerd_socket.exists():
        return False
    argv = ["ctr", "--address", str(state.containerd_socket), "version"]
    return subprocess.run(argv, capture_output=True, timeout=5).returncode == 0


def _containerd_command(layout: Layout, state: StatePaths, bin_dir: Path) -> list[str]:
    return ["containerd", f"--config={state.configs / 'containerd.toml'}"]


def _lb_command(layout: Layout, state: StatePaths, bin_dir: Path) -> list[str]:
    return [sys.executable, "-m", "e2e.cluster.lb", "--kubeconfig", str(paths.kubeconfig_path()), "--pool", layout.lb_pool]


def _kube_router_synced() -> bool:
    """kube-router has made its chains and put its jump in FORWARD (its first sync)."""
    argv = ["iptables", "-w", "5", "-S", "FORWARD"]
    return "-j KUBE-ROUTER-FORWARD" in subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout


COMPONENTS = (
    Component("etcd", configs.etcd_command, lambda layout, state: _http_ok(f"http://127.0.0.1:{layout.etcd_client_port}/health")),
    Component("kube-apiserver", configs.apiserver_command, _ApiserverReady()),
    Component("kube-controller-manager", configs.controller_manager_command),
    Component("kube-scheduler", configs.scheduler_command),
    # The loopback registry containerd may pull from (configs.registry_hosts): where
    # `--cluster=existing --image-registry 127.0.0.1:23795/<path>` pushes its images when that
    # backend is pointed at this cluster (a recorded run, not in CI: README, "The same e2e elsewhere").
    Component(
        "registry", configs.registry_command, lambda layout, state: _http_ok(f"http://{layout.registry}/v2/"),
        env=configs.registry_environment,
    ),
    Component("containerd", _containerd_command, _containerd_ready),
    Component("kubelet", configs.kubelet_command),
    Component("kube-proxy", configs.kube_proxy_command, lambda layout, state: _http_ok(f"http://127.0.0.1:{layout.kube_proxy_healthz_port}/healthz")),
    # Its iptables-save/-restore and ipset are shims that show it, and let it write, only its
    # own chains and ipsets (review findings F23, F24; kube_router_view).
    Component("kube-router", configs.kube_router_command, lambda layout, state: _kube_router_synced(), env=kube_router_shim.environment),
    Component("coredns", configs.coredns_command),
    Component("metrics-server", configs.metrics_server_command, _metrics_server_ready),
    Component("lb-controller", _lb_command, python=True),
)
NAMES = tuple(c.name for c in COMPONENTS)
BY_NAME = {c.name: c for c in COMPONENTS}
BUILT_BINARIES = ("registry", "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kube-router", "coredns", "metrics-server")
"""The components that are binaries from the cache's bin dir (the others: system containerd, Python)."""


def get(name: str) -> Component:
    try:
        return BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown cluster component {name!r}; one of: {', '.join(NAMES)}") from None
