"""`down`: stop the local cluster and remove every trace of it - and only of it.

What is ours is found by its marker, never by a generic name:
  processes   our pid files; our cgroups (`cgroups`); cluster programs whose arguments put
              their state under our state dir (an older harness's shims)
  pods        through our own kubelet and containerd (their sockets are in our state dir)
  netns       pod namespaces live under our state dir (containerd's
              netns_mounts_under_state_dir); test hosts and the sink are `ztr-*`; a pod
              namespace of an older harness run is found through our CNI network's cache
  links       our exact names (`layout.own_links`, test hosts' `ztr-th<N>`, the older
              harness's `ztrh<N>` veths); the CNI bridge's veths go with the pod namespaces
  firewall    `ZTR-E2E-*` chains and their jumps; Kubernetes' and kube-router's fixed chains,
              and kube-router's ipsets, only when our cluster ran (see `firewall`)
  sysctls     put back as recorded by `up` (`sysctls`)
  files       the state dir, our CNI network's cache entries, our pod log links
Other clusters' `cni-*` namespaces, `kubepods` cgroups and KUBE-* chains are left alone.
"""

import json
import os
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from e2e.cluster import (
    boot, cgroups, components, configs, firewall, health, inventory, ipsets, locks, network, paths, processes, sysctls,
)
from e2e.cluster.configs import StatePaths
from e2e.cluster.console import log
from e2e.cluster.kubectl import wait_for
from e2e.cluster.layout import Layout

CNI_CACHE = Path("/var/lib/cni")


def down(kube_chains: bool | None = None, force: bool = False) -> int:
    """Stop everything and remove every trace; safe to run when nothing is up.

    Refuses while another test run holds the cluster (`locks`), unless `force`."""
    if os.geteuid() != 0:
        raise SystemExit("e2e.cluster: must run as root")
    with locks.mutex():
        layout = health.current_layout()
        if force:
            return sweep(layout, kube_chains)
        try:
            with locks.sole_user():
                return sweep(layout, kube_chains)
        except locks.InUse as exc:
            raise SystemExit(f"e2e.cluster down: {exc}; not stopping it (use --force to anyway)") from None


def traces_present(layout: Layout) -> bool:
    """Anything of ours on the machine (so `up` must clear it first)."""
    return bool(inventory.leftovers(layout, kube_chains=False))


def sweep(layout: Layout, kube_chains: bool | None = None) -> int:
    """`kube_chains`: remove Kubernetes' fixed KUBE-* chains - True always (`down --kube-chains`),
    False never, None when our cluster ran this boot (`boot`: a state dir alone is no evidence)."""
    state = StatePaths(paths.state_dir())
    ran = boot.ours_ran_this_boot(state.root, state.run)
    kube_chains = ran if kube_chains is None else kube_chains
    states = health.process_states(state)
    took = _Steps()
    with ThreadPoolExecutor(len(components.NAMES)) as pool:
        # The LB stand-in gives its addresses back before it exits (up to its watch timeout,
        # 5 s): meanwhile the pods go.
        lb = pool.submit(processes.stop, "lb-controller", state.run)
        if states["kube-apiserver"] and states["kubelet"] and states["containerd"]:
            _delete_pods_through_kubelet(state)
        took("pods")
        lb.result()
        # The API's clients at once; then the API server (it writes to etcd as it stops), etcd.
        last = ("kube-apiserver", "etcd", "containerd")
        list(pool.map(lambda name: processes.stop(name, state.run), [n for n in components.NAMES if n not in last]))
    for name in last[:2]:
        processes.stop(name, state.run)
    if processes.running_pid("containerd", state.run):
        _remove_containers(state)
    processes.stop("containerd", state.run)
    _kill_ours(state)
    took("processes")
    _unmount_under(state.root)
    for ns in legacy_pod_netns():
        network.delete_netns(ns)
    if kube_chains:
        _remove_kube_chains()
    network.teardown(layout)
    failed = sysctls.restore(state.sysctl_record, this_boot=ran)
    _remove_cni_cache()
    _remove_container_log_links(state)
    # Connections of our ranges, only if our cluster ran this boot: elsewhere they are another
    # cluster's (kubeadm + flannel: pods 10.244/16, Services 10.96/12) or a VPN's, live ones.
    for cidr in layout.sink_routes + (layout.test_host_cidr,) if ran else ():
        subprocess.run(["conntrack", "-D", "-d", cidr], capture_output=True)
        subprocess.run(["conntrack", "-D", "-s", cidr], capture_output=True)
    took("network")
    # Last: until every sender (test hosts, pods) and forwarding are gone, nothing may leave.
    firewall.remove(firewall.ours)
    stuck = cgroups.remove()  # after the rules matching them
    shutil.rmtree(state.root, ignore_errors=True)
    took("firewall")
    left = inventory.leftovers(layout, kube_chains=kube_chains)
    if failed:
        left["sysctls not restored"] = failed
    if stuck:
        left.setdefault("cgroups", []).extend(stuck)
    if left:
        log(f"down: left behind: {json.dumps(left, indent=2)}")
        return 1
    log(f"down: nothing left ({took})")
    return 0


class _Steps:
    """Seconds each step of `sweep` took, for the log (where a slow `down` spent its time)."""

    def __init__(self) -> None:
        self.last, self.steps = time.monotonic(), []

    def __call__(self, name: str) -> None:
        now = time.monotonic()
        self.steps.append(f"{name} {now - self.last:.1f} s")
        self.last = now

    def __str__(self) -> str:
        return ", ".join(self.steps)


def _delete_pods_through_kubelet(state: StatePaths) -> None:
    """Delete every pod while kubelet, containerd and CNI still exist, so sandboxes are torn
    down properly (network namespaces, IPAM leases). The controller-manager is stopped first
    so nothing recreates them."""
    processes.stop("kube-controller-manager", state.run)
    kubectl = health.admin()
    try:
        kubectl("delete", "pods", "--all", "--all-namespaces", "--grace-period=1", "--wait=false", timeout=60)
        # A pod already terminating keeps the grace period it began with (a test's namespace
        # deletion: 30 s, and `sleep` ignores SIGTERM), a stop the kubelet has already asked
        # containerd for: `down` waited it out. Its containers die now; the kubelet still tears
        # the sandboxes down. It restarts none: it knew of the deletion (its watch) long before
        # its next look at the containers (once a second).
        _kill_app_containers(state)
        kubectl("delete", "pods", "--all", "--all-namespaces", "--grace-period=1", "--wait=true", timeout=90)
        wait_for("pod sandboxes stopped", lambda: not _running_tasks(state), 30)
    except Exception as exc:  # noqa: BLE001 - the sweep below still removes what is left
        log(f"down: graceful pod removal incomplete ({exc}); sweeping")


def _ctr(state: StatePaths) -> list[str]:
    return ["ctr", "--address", str(state.containerd_socket), "-n", "k8s.io"]


def _running_tasks(state: StatePaths) -> list[str]:
    return subprocess.run([*_ctr(state), "tasks", "ls", "-q"], capture_output=True, text=True, timeout=10).stdout.split()


def _kill_app_containers(state: StatePaths) -> None:
    """SIGKILL every pod's containers, not their sandboxes (pause: the kubelet stops those)."""
    listed = subprocess.run([*_ctr(state), "containers", "ls", "-q", 'labels."io.cri-containerd.kind"==container'],
                            capture_output=True, text=True, timeout=10).stdout.split()
    for container in listed:
        subprocess.run([*_ctr(state), "tasks", "kill", "-s", "SIGKILL", container], capture_output=True, timeout=10)


def _remove_containers(state: StatePaths) -> None:
    for task in _running_tasks(state):
        subprocess.run([*_ctr(state), "tasks", "kill", "-s", "SIGKILL", task], capture_output=True, timeout=10)
    try:
        wait_for("killed tasks to stop", lambda: not _running_tasks(state), 10, 0.2)
    except TimeoutError:
        pass  # deleted with -f below, and their processes are killed by cgroup after that
    for task in _running_tasks(state):
        subprocess.run([*_ctr(state), "tasks", "delete", "-f", task], capture_output=True, timeout=10)
    out = subprocess.run([*_ctr(state), "containers", "ls", "-q"], capture_output=True, text=True, timeout=10).stdout
    for container in out.split():
        subprocess.run([*_ctr(state), "containers", "rm", container], capture_output=True, timeout=10)


def _kill_ours(state: StatePaths) -> None:
    """Every process in our cgroups (host processes, shims, pods); and, for traces of an older
    harness (before cgroups were ours), a cluster program whose arguments put its state under
    our state dir (a shim: `-address <state>/...`; `processes.is_cluster_process`, never a
    `tail -f` of a log there) or whose root filesystem is a snapshot under it (a container)."""
    victims = cgroups.pids() | set(processes.cluster_pids(str(state.root))) | set(processes.pids_rooted_under(str(state.root) + "/"))
    victims.discard(os.getpid())
    processes.kill_all_and_wait(victims, timeout=5)


def mounts_under(root: Path) -> list[str]:
    prefix = str(root).rstrip("/") + "/"
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point.startswith(prefix) or point == str(root):
            points.append(point)
    return points


def _unmount_under(root: Path) -> None:
    for _ in range(3):
        points = mounts_under(root)
        if not points:
            return
        for point in sorted(points, key=len, reverse=True):
            if subprocess.run(["umount", point], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", point], capture_output=True)


def cni_cache_files() -> list[Path]:
    """Our CNI network's cache entries (libcni names them `<network>-<container>-<if>`)."""
    return sorted(p for p in CNI_CACHE.glob(f"**/{configs.CNI_NETWORK}-*") if p.is_file())


def legacy_pod_netns() -> list[str]:
    """Pod namespaces in /var/run/netns that our CNI network configured (an older harness
    kept them there); found through the sandbox path in our network's cached results."""
    found = set()
    for cache in cni_cache_files():
        try:
            cached = json.loads(cache.read_text())
        except (OSError, ValueError):
            continue
        result = cached.get("result") or {}
        for iface in result.get("interfaces") or []:
            sandbox = iface.get("sandbox") or ""
            if sandbox.startswith(("/var/run/netns/", "/run/netns/")):
                found.add(sandbox.rsplit("/", 1)[1])
    return sorted(ns for ns in found if (network.NETNS_DIR / ns).exists())


def _remove_kube_chains() -> None:
    """kube-proxy's, the kubelet's and kube-router's chains, by their exact names (and their
    generated KUBE-SVC-..., KUBE-POD-FW-... ones), then kube-router's ipsets. Not `kube-proxy --cleanup`: it also flushes every IPVS service and
    deletes the nftables `kube-proxy` tables of the machine, whoever made them."""
    firewall.remove(firewall.kube_chain)
    ipsets.remove()  # after the rules that use them


def _remove_cni_cache() -> None:
    for f in cni_cache_files():
        f.unlink(missing_ok=True)


def _remove_container_log_links(state: StatePaths) -> None:
    links = Path("/var/log/containers")
    if not links.exists():
        return
    for link in links.iterdir():
        if link.is_symlink() and os.readlink(link).startswith(str(state.root)):
            link.unlink()
