"""Bring the local single-node cluster up and tear it down completely.

Order of `up` (each step waits for the previous one to be healthy):
  safety network (sink + forward rules) -> PKI and kubeconfigs (kubeadm phases) -> etcd ->
  kube-apiserver -> controller-manager, scheduler -> containerd (+ pause image) -> kubelet,
  kube-proxy -> node Ready -> CoreDNS, metrics-server (host processes) -> LoadBalancer stand-in.
`down` runs in reverse and then sweeps whatever a crashed run may have left (see `down`).
"""

import contextlib
import fcntl
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from e2e.cluster import build, configs, image_import, inventory, layout as layout_mod, network, paths, pause, processes
from e2e.cluster.configs import StatePaths
from e2e.cluster.kubectl import Kubectl, wait_for
from e2e.cluster.layout import Layout

# Start order; `down` stops in reverse.
PROCESSES = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "containerd",
    "kubelet",
    "kube-proxy",
    "coredns",
    "metrics-server",
    "lb-controller",
)
REQUIRED_BINARIES = ("etcd", *build.KUBE_COMMANDS, "coredns", "metrics-server")
KUBELET_CHAINS = ("KUBE-FIREWALL", "KUBE-KUBELET-CANARY", "KUBE-IPTABLES-HINT")


def current_layout() -> Layout:
    dev, _ip = network.default_route()
    return Layout(primary_interface=dev)


def _log(msg: str) -> None:
    print(f"[e2e.cluster {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _admin() -> Kubectl:
    return Kubectl(paths.kubeconfig_path(), binary=paths.binary("kubectl"))


def _bin() -> Path:
    return paths.bin_dir()


# --- status ---------------------------------------------------------------------------------


def process_states(state: StatePaths) -> dict[str, int | None]:
    return {name: processes.running_pid(name, state.run) for name in PROCESSES}


def node_ready(kubectl: Kubectl, node_name: str, node_ip: str | None = None) -> bool:
    """The node is Ready (and, if given, has `node_ip` as its InternalIP)."""
    node = kubectl.json("get", "node", node_name, timeout=10)
    if node_ip is not None:
        addresses = {a["address"] for a in node["status"].get("addresses", []) if a["type"] == "InternalIP"}
        if node_ip not in addresses:
            return False
    return any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"].get("conditions", []))


def healthy(layout: Layout, state: StatePaths) -> bool:
    if not all(process_states(state).values()) or not paths.kubeconfig_path().exists():
        return False
    try:
        # A cluster started with another address plan is not the one wanted: restart it.
        return node_ready(_admin(), layout.node_name, layout.node_ip)
    except Exception:  # noqa: BLE001 - anything wrong means "not healthy"
        return False


def status() -> int:
    state = StatePaths(paths.state_dir())
    layout = current_layout()
    for name, pid in process_states(state).items():
        print(f"{name:26} {'running (pid %d)' % pid if pid else 'not running'}")
    ok = healthy(layout, state)
    print(f"{'node ' + layout.node_name:26} {'Ready' if ok else 'not ready'}")
    if ok:
        print(f"KUBECONFIG={paths.kubeconfig_path()}")
    print(f"logs: {state.logs}")
    return 0 if ok else 1


def print_logs(lines: int) -> int:
    logs = StatePaths(paths.state_dir()).logs
    if not logs.exists():
        print(f"no logs: {logs} does not exist (the cluster is down)")
        return 0
    for log in sorted(logs.glob("*.log")):
        tail = log.read_text(errors="replace").splitlines()[-lines:]
        print(f"===== {log} (last {len(tail)} lines)")
        print("\n".join(tail))
    return 0


# --- up -------------------------------------------------------------------------------------


LOCK_FILE = Path("/run/zt-relay-e2e.lock")


@contextlib.contextmanager
def _exclusive():
    """One `up`/`down` at a time on this machine (several pytest sessions may call `up`)."""
    with open(LOCK_FILE, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def up() -> int:
    with _exclusive():
        return _up()


def down() -> int:
    """Stop everything and remove every trace; safe to run when nothing is up."""
    if os.geteuid() != 0:
        raise SystemExit("e2e.cluster: must run as root")
    with _exclusive():
        return _down()


def _up() -> int:
    started = time.monotonic()
    _require_root_and_binaries()
    state = StatePaths(paths.state_dir())
    layout = current_layout()
    if healthy(layout, state):
        if not network.safety_in_place(layout):
            _log("safety net incomplete (sink, routes or forward chain missing): restoring it")
            network.setup_safety(layout)
        network.ensure_forward_chain_first(layout)
        _log("cluster already up")
        _print_access(state)
        return 0
    if state.root.exists() or network.list_netns(layout.sink_netns):
        _log("stale state found: tearing it down first")
        if _down() != 0:
            raise SystemExit("e2e.cluster up: could not clear the stale state (see above)")
    layout_mod.check_disjoint(layout, network.machine_networks())

    _log("safety: sink namespace, sink routes, forward rules")
    network.setup_safety(layout)
    network.setup_node_address(layout)
    for d in (state.pki, state.kubeconfigs, state.logs, state.run, state.configs, state.cni_conf, state.pod_logs):
        d.mkdir(parents=True, exist_ok=True)
    os.chmod(state.root, 0o700)
    _write_pki(layout, state)
    _write_configs(layout, state)
    bin_dir = _bin()

    _start(state, "etcd", configs.etcd_command(layout, state, bin_dir))
    wait_for("etcd health", lambda: _http_ok(f"http://127.0.0.1:{layout.etcd_client_port}/health"), 30, 0.2)
    _start(state, "kube-apiserver", configs.apiserver_command(layout, state, bin_dir))
    super_admin = Kubectl(state.kubeconfig("super-admin"), binary=paths.binary("kubectl"))
    wait_for("kube-apiserver /readyz", lambda: super_admin("get", "--raw=/readyz", check=False, timeout=5).returncode == 0, 60, 0.3)
    # kubeadm's admin.conf user is in kubeadm:cluster-admins, which nothing binds by default.
    super_admin("create", "clusterrolebinding", "kubeadm:cluster-admins", "--clusterrole=cluster-admin", "--group=kubeadm:cluster-admins")
    # The apiserver's kubelet client must be allowed to reach kubelets (logs, exec, metrics).
    super_admin("create", "clusterrolebinding", "zt-e2e:apiserver-kubelet-client", "--clusterrole=system:kubelet-api-admin", "--user=kube-apiserver-kubelet-client")
    shutil.copy(state.kubeconfig("admin"), paths.kubeconfig_path())
    _start(state, "kube-controller-manager", configs.controller_manager_command(layout, state, bin_dir))
    _start(state, "kube-scheduler", configs.scheduler_command(layout, state, bin_dir))

    _start(state, "containerd", ["containerd", f"--config={state.configs / 'containerd.toml'}"])
    wait_for("containerd socket", lambda: state.containerd_socket.exists() and _ctr_ok(), 30, 0.2)
    image_import.import_archive(pause.build_archive(layout.pause_image, paths.cache_root() / "pause"))
    _start(state, "kubelet", configs.kubelet_command(layout, state, bin_dir))
    _start(state, "kube-proxy", configs.kube_proxy_command(layout, state, bin_dir))
    kubectl = _admin()
    wait_for(f"node {layout.node_name} Ready", lambda: node_ready(kubectl, layout.node_name), 90, 0.5)
    # kube-proxy inserts its FORWARD jumps on its first sync; ours must stay first after that.
    wait_for("kube-proxy's first sync", lambda: _http_ok("http://127.0.0.1:10256/healthz") and _kube_proxy_forward_rules(), 60, 0.3)
    network.ensure_forward_chain_first(layout)

    _start(state, "coredns", configs.coredns_command(layout, state, bin_dir))
    _start(state, "metrics-server", configs.metrics_server_command(layout, state, bin_dir))
    kubectl.apply(*configs.dns_objects(layout), *configs.metrics_server_objects(layout))
    _start(state, "lb-controller", [sys.executable, "-m", "e2e.cluster.lb", "--kubeconfig", str(paths.kubeconfig_path())], env=_python_env())
    wait_for("default ServiceAccount", lambda: kubectl("get", "serviceaccount", "default", check=False).returncode == 0, 30)
    _log(f"cluster up in {time.monotonic() - started:.1f} s")
    _print_access(state)
    return 0


def _python_env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _print_access(state: StatePaths) -> None:
    print(f"export KUBECONFIG={paths.kubeconfig_path()}")
    print(f"export PATH={paths.bin_dir()}:$PATH")
    print(f"logs: {state.logs}")


def _require_root_and_binaries() -> None:
    if os.geteuid() != 0:
        raise SystemExit("e2e.cluster: must run as root (it manages network namespaces, iptables and containerd)")
    missing = [b for b in REQUIRED_BINARIES if not (_bin() / b).exists()]
    if missing:
        raise SystemExit(f"e2e.cluster: missing binaries in {_bin()}: {', '.join(missing)}; run `python -m e2e.cluster build`")
    for tool in ("containerd", "runc", "ctr", "iptables", "conntrack", "ip"):
        if shutil.which(tool) is None:
            raise SystemExit(f"e2e.cluster: `{tool}` not found; run `python -m e2e.cluster deps`")
    if not Path(configs.CNI_PLUGIN_DIR, "bridge").exists():
        raise SystemExit(f"e2e.cluster: no CNI plugins in {configs.CNI_PLUGIN_DIR}; run `python -m e2e.cluster deps`")


def _start(state: StatePaths, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
    pid = processes.start(name, argv, state.run, state.logs, env=env)
    _log(f"started {name} (pid {pid})")
    time.sleep(0.2)
    if processes.running_pid(name, state.run) is None:
        tail = (state.logs / f"{name}.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{name} exited at once; log tail:\n{tail}")


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return resp.status == 200


def _kube_proxy_forward_rules() -> bool:
    return "KUBE-FORWARD" in network.sh("iptables", "-S", "FORWARD").stdout


def _ctr_ok() -> bool:
    sock = StatePaths(paths.state_dir()).containerd_socket
    return subprocess.run(["ctr", "--address", str(sock), "version"], capture_output=True, timeout=5).returncode == 0


def _write_pki(layout: Layout, state: StatePaths) -> None:
    cfg = state.configs / "kubeadm.json"
    cfg.write_text(configs.kubeadm_config(layout, state))
    kubeadm = paths.binary("kubeadm")
    run = lambda *a: subprocess.run([kubeadm, *a], check=True, capture_output=True, text=True, timeout=60)  # noqa: E731
    run("init", "phase", "certs", "all", f"--config={cfg}")
    run("init", "phase", "kubeconfig", "all", f"--config={cfg}", f"--kubeconfig-dir={state.kubeconfigs}")
    proxy = run("kubeconfig", "user", f"--config={cfg}", "--client-name=system:kube-proxy")
    state.kubeconfig("kube-proxy").write_text(proxy.stdout)
    for conf in state.kubeconfigs.iterdir():
        os.chmod(conf, 0o600)


def _write_configs(layout: Layout, state: StatePaths) -> None:
    (state.configs / "containerd.toml").write_text(configs.containerd_config(layout, state))
    (state.cni_conf / "10-ztr-e2e.conflist").write_text(configs.cni_conflist(layout, state))
    (state.configs / "kubelet.json").write_text(configs.kubelet_config(layout, state))
    (state.configs / "kube-proxy.json").write_text(configs.kube_proxy_config(layout, state))
    (state.configs / "Corefile").write_text(configs.corefile(layout, state))


# --- down -----------------------------------------------------------------------------------


def _down() -> int:
    state = StatePaths(paths.state_dir())
    layout = current_layout()
    states = process_states(state)
    processes.stop("lb-controller", state.run)
    if states["kube-apiserver"] and states["kubelet"] and states["containerd"]:
        _delete_pods_through_kubelet(state)
    for name in reversed(PROCESSES):
        if name != "containerd":
            processes.stop(name, state.run)
    if processes.running_pid("containerd", state.run):
        _remove_containers(state)
    processes.stop("containerd", state.run)
    _kill_leftovers(state)
    _unmount_under(state.root)
    for ns in network.list_netns("cni-"):
        network.delete_netns(ns)
    _iptables_cleanup()
    network.teardown(layout)
    _remove_cgroups()
    _remove_cni_cache()
    _remove_container_log_links(state)
    for cidr in layout.sink_routes + (layout.test_host_cidr,):
        subprocess.run(["conntrack", "-D", "-d", cidr], capture_output=True)
        subprocess.run(["conntrack", "-D", "-s", cidr], capture_output=True)
    shutil.rmtree(state.root, ignore_errors=True)
    left = inventory.leftovers(layout)
    if left:
        _log(f"down: left behind: {json.dumps(left, indent=2)}")
        return 1
    _log("down: nothing left")
    return 0


def _delete_pods_through_kubelet(state: StatePaths) -> None:
    """Delete every pod while kubelet, containerd and CNI still exist, so sandboxes are torn
    down properly (network namespaces, IPAM leases). The controller-manager is stopped first
    so nothing recreates them."""
    processes.stop("kube-controller-manager", state.run)
    kubectl = _admin()
    try:
        kubectl("delete", "pods", "--all", "--all-namespaces", "--grace-period=1", "--wait=true", timeout=90)
        wait_for("pod sandboxes stopped", lambda: not _running_tasks(state), 30)
    except Exception as exc:  # noqa: BLE001 - the sweep below still removes what is left
        _log(f"down: graceful pod removal incomplete ({exc}); sweeping")


def _running_tasks(state: StatePaths) -> list[str]:
    out = subprocess.run(
        ["ctr", "--address", str(state.containerd_socket), "-n", "k8s.io", "tasks", "ls", "-q"],
        capture_output=True, text=True, timeout=10,
    ).stdout
    return out.split()


def _remove_containers(state: StatePaths) -> None:
    ctr = ["ctr", "--address", str(state.containerd_socket), "-n", "k8s.io"]
    for task in _running_tasks(state):
        subprocess.run([*ctr, "tasks", "kill", "-s", "SIGKILL", task], capture_output=True, timeout=10)
    time.sleep(0.5)
    for task in _running_tasks(state):
        subprocess.run([*ctr, "tasks", "delete", "-f", task], capture_output=True, timeout=10)
    out = subprocess.run([*ctr, "containers", "ls", "-q"], capture_output=True, text=True, timeout=10).stdout
    for container in out.split():
        subprocess.run([*ctr, "containers", "rm", container], capture_output=True, timeout=10)


def _kill_leftovers(state: StatePaths) -> None:
    """containerd shims (their command line names our socket) and any process left in the
    kubelet's pod cgroups."""
    victims = set(processes.pids_mentioning(str(state.root)))
    for procs in Path("/sys/fs/cgroup").glob("*/kubepods/**/cgroup.procs"):
        victims.update(int(p) for p in procs.read_text().split())
    for pid in victims:
        processes.kill_and_wait(pid, timeout=5)


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root).rstrip("/") + "/"
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point.startswith(prefix) or point == str(root):
            points.append(point)
    return points


def _unmount_under(root: Path) -> None:
    for _ in range(3):
        points = _mounts_under(root)
        if not points:
            return
        for point in sorted(points, key=len, reverse=True):
            if subprocess.run(["umount", point], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", point], capture_output=True)


def _iptables_cleanup() -> None:
    """kube-proxy --cleanup removes its own rules; the kubelet's chains need removing by hand."""
    proxy = paths.bin_dir() / "kube-proxy"
    if proxy.exists():
        subprocess.run([str(proxy), "--cleanup", "--v=0"], capture_output=True, timeout=60)
    for binary in ("iptables", "ip6tables", "iptables-legacy", "ip6tables-legacy"):
        if shutil.which(binary) is None:
            continue
        for table in ("filter", "nat", "mangle"):
            _remove_kube_chains(binary, table)


def kube_chain_cleanup_commands(rules: list[str]) -> list[list[str]]:
    """From `iptables -S` output, the commands removing every KUBE-* chain and jump to one.

    Jumps from other chains are deleted first, then the chains flushed, then deleted.
    """
    chains = [line.split()[1] for line in rules if line.startswith("-N KUBE-")]
    jumps = []
    for line in rules:
        parts = shlex.split(line)  # comments are quoted and may contain spaces
        if parts[:1] == ["-A"] and not parts[1].startswith("KUBE-") and "-j" in parts:
            if parts[parts.index("-j") + 1] in chains:
                jumps.append(["-D", *parts[1:]])
    return jumps + [["-F", c] for c in chains] + [["-X", c] for c in chains]


def _remove_kube_chains(binary: str, table: str) -> None:
    listing = subprocess.run([binary, "-t", table, "-S"], capture_output=True, text=True)
    if listing.returncode != 0:
        return
    for cmd in kube_chain_cleanup_commands(listing.stdout.splitlines()):
        subprocess.run([binary, "-t", table, *cmd], capture_output=True)


def _remove_cgroups() -> None:
    for top in Path("/sys/fs/cgroup").glob("*/kubepods"):
        for dirpath, _dirs, _files in os.walk(top, topdown=False):
            try:
                os.rmdir(dirpath)
            except OSError:
                pass


def _remove_cni_cache() -> None:
    results = Path("/var/lib/cni/results")
    cache = Path("/var/lib/cni/cache/results")
    for d in (results, cache):
        if d.exists():
            for f in d.glob(f"{configs.CNI_NETWORK}-*"):
                f.unlink(missing_ok=True)


def _remove_container_log_links(state: StatePaths) -> None:
    links = Path("/var/log/containers")
    if not links.exists():
        return
    for link in links.iterdir():
        if link.is_symlink() and os.readlink(link).startswith(str(state.root)):
            link.unlink()
