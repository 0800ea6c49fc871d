"""`up`: bring the local single-node cluster up (idempotent), and start/stop one component.

Order (each step waits for the previous one to be healthy): our fixed ports free (`ports`)
-> record the sysctls -> our cgroups -> firewall (no egress) -> sink namespace and routes ->
PKI and configs -> the components of `components.COMPONENTS` in order -> node Ready ->
cluster objects (DNS, metrics API).

A healthy cluster is left alone; a slow one is waited for; a broken one is torn down and
rebuilt only if no other test run holds it (see `locks`).
"""

import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from e2e.cluster import (
    boot, build, cgroups, components, configs, firewall, health, image_import, ipsets, layout as layout_mod, locks, network,
    pause, paths, pki, ports, processes, sysctls, teardown,
)
from e2e.cluster.configs import StatePaths
from e2e.cluster.console import log
from e2e.cluster.kubectl import Kubectl, wait_for
from e2e.cluster.layout import Layout

REQUIRED_BINARIES = (*components.BUILT_BINARIES, *build.KUBE_COMMANDS)
SLOW_GRACE = 120
"""Seconds `up` waits for a slow (not broken) cluster before treating it as broken."""


def up() -> int:
    require_root_and_binaries()
    with locks.mutex():
        return _up()


def _up() -> int:
    started = time.monotonic()
    state = StatePaths(paths.state_dir())
    layout = health.current_layout()
    verdict, reason = health.health(layout, state)
    if verdict == "slow":
        log(f"cluster slow ({reason}); waiting up to {SLOW_GRACE} s before calling it broken")
        try:
            wait_for("the cluster to answer", lambda: health.health(layout, state)[0] == "ok", SLOW_GRACE, 2)
            verdict = "ok"
        except TimeoutError:
            verdict, reason = health.health(layout, state)
    if verdict == "ok":
        _restore_safety(layout)
        locks.share_inherited()
        log("cluster already up")
        print_access(state)
        return 0
    if verdict != "absent" or teardown.traces_present(layout):
        log(f"stale or broken cluster ({reason}): tearing it down first")
        try:
            with locks.sole_user():
                if teardown.sweep(layout, kube_chains=None) != 0:
                    raise SystemExit("e2e.cluster up: could not clear the stale state (see above)")
        except locks.InUse as exc:
            raise SystemExit(f"e2e.cluster up: the cluster is {verdict} ({reason}), but {exc}; not tearing it down") from None
    _refuse_foreign_kubernetes()
    layout_mod.check_disjoint(layout, network.machine_networks(), network.machine_routes())
    # After our own stale cluster is gone: whoever still listens on one of our ports is not us.
    ports.refuse_taken(layout)

    for d in (state.pki, state.kubeconfigs, state.logs, state.run, state.configs, state.cni_conf, state.pod_logs):
        d.mkdir(parents=True, exist_ok=True)
    os.chmod(state.root, 0o700)
    health.generation_file(state).write_text(health.HARNESS_GENERATION + "\n")
    boot.mark(state.root)
    sysctls.save(state.sysctl_record)
    log("safety: own cgroups, firewall (no egress, v4 and v6), sink namespace and routes")
    cgroups.prepare()
    firewall.install_all(layout, cgroups.HOST)
    network.setup_safety(layout)
    network.setup_node_address(layout)
    pki.write(layout, state)
    write_configs(layout, state)

    for comp in components.COMPONENTS:
        start_component(layout, state, comp.name)
        AFTER.get(comp.name, lambda layout, state: None)(layout, state)
    kubectl = health.admin()
    try:
        wait_for("default ServiceAccount", lambda: kubectl.api.exists("serviceaccount", "default", "default"), 30)
    finally:
        kubectl.close()
    sysctls.mark_ours(state.sysctl_record)
    locks.share_inherited()
    log(f"cluster up in {time.monotonic() - started:.1f} s")
    print_access(state)
    return 0


def _bind_admins(layout: Layout, state: StatePaths) -> None:
    super_admin = Kubectl(state.kubeconfig("super-admin"), binary=paths.binary("kubectl"))
    # kubeadm's admin.conf user is in kubeadm:cluster-admins, which nothing binds by default.
    super_admin("create", "clusterrolebinding", "kubeadm:cluster-admins", "--clusterrole=cluster-admin", "--group=kubeadm:cluster-admins")
    # The apiserver's kubelet client must be allowed to reach kubelets (logs, exec, metrics).
    super_admin("create", "clusterrolebinding", "zt-e2e:apiserver-kubelet-client", "--clusterrole=system:kubelet-api-admin", "--user=kube-apiserver-kubelet-client")
    shutil.copy(state.kubeconfig("admin"), paths.kubeconfig_path())


def _import_pause(layout: Layout, state: StatePaths) -> None:
    image_import.import_archive(pause.build_archive(layout.pause_image, paths.cache_root() / "pause"))


def _node_ready_and_our_rules_first(layout: Layout, state: StatePaths) -> None:
    kubectl = health.admin()
    wait_for(f"node {layout.node_name} Ready", lambda: health.node_ready(kubectl, layout.node_name), 90, 0.5)
    # kube-proxy inserts its FORWARD jumps at the top on its first sync, IPv4 and (a little
    # later) IPv6; ours must be first after that (KUBE-FORWARD accepts marked packets).
    wait_for("kube-proxy's first sync", lambda: _kube_proxy_synced(layout), 60, 0.3)
    try:
        wait_for("kube-proxy's first IPv6 sync", lambda: _kube_forward_jump("ip6tables"), 30, 0.3)
    except TimeoutError:
        log("kube-proxy programmed no IPv6 rules (no IPv6 here?); our IPv6 jumps stay first")
    firewall.ensure_first(layout, cgroups.HOST)


def _apply_cluster_objects(layout: Layout, state: StatePaths) -> None:
    health.admin().apply(*configs.dns_objects(layout), *configs.metrics_server_objects(layout))


AFTER = {
    "kube-apiserver": _bind_admins,
    "containerd": _import_pause,
    "kube-proxy": _node_ready_and_our_rules_first,
    "metrics-server": _apply_cluster_objects,
}
"""What `up` does once a component is ready, before starting the next one of
`components.COMPONENTS` (the one list: `up` starts exactly those, in that order)."""


def _restore_safety(layout: Layout) -> None:
    if not network.safety_in_place(layout):
        log("sink namespace or routes missing: restoring them")
        network.setup_safety(layout)
    if not firewall.in_place(layout, cgroups.HOST):
        log("firewall jumps missing: restoring them")
        firewall.install_all(layout, cgroups.HOST)
    firewall.ensure_first(layout, cgroups.HOST)


def _refuse_foreign_kubernetes() -> None:
    """Another kube-proxy, kubelet or kube-router in this network namespace uses the same fixed
    chain and ipset names: ours would overwrite its rules and `down` would remove them. Don't start."""
    foreign = firewall.present(firewall.kube_chain) + [f"ipset {name}" for name in ipsets.present()]
    if foreign:
        listing = "\n  ".join(foreign[:10])
        raise SystemExit(
            "e2e.cluster up: another kube-proxy or kubelet seems to run in this network namespace "
            f"(its chains, which ours would share):\n  {listing}\n"
            "Stop that cluster first. If these are traces of an earlier zt-relay harness run, remove "
            "them with `python -m e2e.cluster down --kube-chains`."
        )


def _kube_forward_jump(binary: str) -> bool:
    return "-j KUBE-FORWARD" in network.sh(binary, "-w", "5", "-S", "FORWARD").stdout


def _kube_proxy_synced(layout: Layout) -> bool:
    return components.BY_NAME["kube-proxy"].ready(layout, None) and _kube_forward_jump("iptables")


PROXY_VARIABLES = frozenset(
    name for scheme in ("http", "https", "all", "no", "ftp", "grpc") for name in (f"{scheme}_proxy", f"{scheme.upper()}_PROXY")
)


def cluster_env() -> dict[str, str]:
    """The environment of every cluster process: the caller's without proxy settings. A
    developer's local proxy (HTTPS_PROXY=http://127.0.0.1:3128: cntlm, px, an ssh tunnel) is
    loopback, which the firewall allows, and would carry the API server's calls to webhooks and
    aggregated APIs, or containerd's dials, off the machine."""
    return {k: v for k, v in os.environ.items() if k not in PROXY_VARIABLES}


def python_env() -> dict[str, str]:
    env = cluster_env()
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop(locks.USERS_FD_ENV, None)
    return env


def print_access(state: StatePaths) -> None:
    print(f"export KUBECONFIG={paths.kubeconfig_path()}")
    print(f"export PATH={paths.bin_dir()}:$PATH")
    print(f"logs: {state.logs}")


def require_root_and_binaries() -> None:
    if os.geteuid() != 0:
        raise SystemExit("e2e.cluster: must run as root (it manages network namespaces, iptables and containerd)")
    missing = [b for b in REQUIRED_BINARIES if not (paths.bin_dir() / b).exists()]
    if missing:
        raise SystemExit(f"e2e.cluster: missing binaries in {paths.bin_dir()}: {', '.join(missing)}; run `python -m e2e.cluster build`")
    for tool in ("containerd", "runc", "ctr", "iptables", "ip6tables", "conntrack", "ip", "ipset"):
        if shutil.which(tool) is None:
            raise SystemExit(f"e2e.cluster: `{tool}` not found; run `python -m e2e.cluster deps`")
    if not Path(configs.CNI_PLUGIN_DIR, "bridge").exists():
        raise SystemExit(f"e2e.cluster: no CNI plugins in {configs.CNI_PLUGIN_DIR}; run `python -m e2e.cluster deps`")


def start_component(layout: Layout, state: StatePaths, name: str, ready_timeout: float = 60) -> int:
    """Start one component inside our host cgroup and wait until it runs (and is ready)."""
    comp = components.get(name)
    argv = comp.command(layout, state, paths.bin_dir())
    env = python_env() if comp.python else cluster_env()
    if comp.env is not None:
        env = comp.env(env)
    pid = processes.start(name, cgroups.enter_host_argv(argv), state.run, state.logs, env=env, program=argv[0])
    log(f"started {name} (pid {pid})")

    def running() -> bool:
        if not processes.alive(pid):
            tail = (state.logs / f"{name}.log").read_text(errors="replace")[-2000:]
            raise SystemExit(f"e2e.cluster: {name} exited at once; log tail:\n{tail}")
        return processes.running_pid(name, state.run) == pid

    wait_for(f"{name} to start", running, 10, 0.05)
    if comp.ready is not None:
        # running() first: one that exits while we wait (a rejected flag, a panic) fails `up`
        # now, with its log, instead of at the timeout with only "not ready".
        try:
            wait_for(f"{name} ready", lambda: running() and comp.ready(layout, state), ready_timeout, 0.3)
        finally:
            components.close_probe(comp)
    return pid


def write_configs(layout: Layout, state: StatePaths) -> None:
    (state.configs / "containerd.toml").write_text(configs.containerd_config(layout, state))
    (state.configs / "registry.json").write_text(configs.registry_config(layout, state))
    for rel, body in configs.registry_hosts(layout).items():
        (state.registry_hosts / rel).parent.mkdir(parents=True, exist_ok=True)
        (state.registry_hosts / rel).write_text(body)
    state.resolv_conf.write_text(configs.resolv_conf(layout))
    (state.cni_conf / "10-ztr-e2e.conflist").write_text(configs.cni_conflist(layout, state))
    (state.configs / "kubelet.json").write_text(configs.kubelet_config(layout, state))
    (state.configs / "kube-proxy.json").write_text(configs.kube_proxy_config(layout, state))
    (state.configs / "Corefile").write_text(configs.corefile(layout, state))


# --- one component at a time (tests that take the API server away for a while) ------------


def stop(name: str) -> int:
    """Stop one running component of the cluster (`python -m e2e.cluster stop NAME`).

    Like `down`, refuses while another test run holds the cluster (`locks.sole_user`): taking
    its API server away for a while is pulling the floor from under it. (`start` is always
    allowed: it only brings back what is missing.)"""
    components.get(name)
    state = StatePaths(paths.state_dir())
    with locks.mutex():
        if processes.running_pid(name, state.run) is None:
            raise SystemExit(f"e2e.cluster stop: {name} is not running")
        began = time.monotonic()
        try:
            with locks.sole_user():
                exited = processes.stop(name, state.run)
        except locks.InUse as exc:
            raise SystemExit(f"e2e.cluster stop: {exc}; not taking {name} away from it") from None
    how = "exited on SIGTERM" if exited else "did not exit on SIGTERM: killed"
    log(f"stopped {name} ({how} after {time.monotonic() - began:.1f} s)")
    return 0


def start(name: str) -> int:
    """Start one stopped component again with its usual command and wait until it is ready."""
    components.get(name)
    state = StatePaths(paths.state_dir())
    with locks.mutex():
        if processes.running_pid(name, state.run) is not None:
            log(f"{name} is already running")
            return 0
        if not state.root.exists():
            raise SystemExit("e2e.cluster start: the cluster is not up (no state dir)")
        start_component(health.current_layout(), state, name)
    return 0


def restart(names: list[str]) -> int:
    """Stop the named components, all at once, then start each again in `up`'s order and wait
    until it is ready (`python -m e2e.cluster restart NAME...`: after an API outage, the API's
    watchers, e2e/recovery.py). One that was not running, or does not start, is named at the
    end, after every other one was started: none is left stopped because of another."""
    for name in names:
        components.get(name)
    order = [name for name in components.NAMES if name in names]
    state = StatePaths(paths.state_dir())
    failures: list[str] = []
    began = time.monotonic()
    with locks.mutex():
        if not state.root.exists():
            raise SystemExit("e2e.cluster restart: the cluster is not up (no state dir)")
        running = [name for name in order if processes.running_pid(name, state.run) is not None]
        failures += [f"{name} was not running" for name in order if name not in running]
        try:
            with locks.sole_user(), ThreadPoolExecutor(max(1, len(running))) as pool:
                list(pool.map(lambda name: processes.stop(name, state.run), running))
        except locks.InUse as exc:
            raise SystemExit(f"e2e.cluster restart: {exc}; not taking {', '.join(order)} away from it") from None
        log(f"stopped {', '.join(running)} in {time.monotonic() - began:.1f} s")
        layout = health.current_layout()
        for name in order:
            try:
                start_component(layout, state, name)
            except (SystemExit, TimeoutError) as exc:
                failures.append(f"{name} did not start again: {exc}")
    if failures:
        raise SystemExit("e2e.cluster restart: " + "; ".join(failures))
    log(f"restarted {', '.join(order)} in {time.monotonic() - began:.1f} s")
    return 0
