"""Is the local cluster there, and is it well? (`status`, and `up`'s first question.)

`health()` tells four states apart, because only one of them justifies a rebuild:
  "ok"      every process runs and the node is Ready with the planned address;
  "slow"    every process runs but the API did not answer in time, or answered that it is
            overloaded (504 Timeout, 429, an etcd or TLS handshake timeout: `SLOW_ANSWERS`)
            on a loaded 2-core machine: wait, do not rebuild;
  "broken"  a process is gone, another kube-router runs beside ours (same network namespace),
            or the node is not the planned one: rebuild (`up` then refuses the other's chains);
  "absent"  nothing of ours is there.
"""

import subprocess

from e2e.cluster import components, network, paths, processes
from e2e.cluster.configs import StatePaths
from e2e.cluster.kubectl import Kubectl, KubectlError
from e2e.cluster.layout import Layout


def current_layout() -> Layout:
    dev, _ip = network.default_route()
    return Layout(primary_interface=dev)


def admin() -> Kubectl:
    return Kubectl(paths.kubeconfig_path(), binary=paths.binary("kubectl"))


def process_states(state: StatePaths) -> dict[str, int | None]:
    return {name: processes.running_pid(name, state.run) for name in components.NAMES}


def node_ready(kubectl: Kubectl, node_name: str, node_ip: str | None = None) -> bool:
    """The node is Ready (and, if given, has `node_ip` as its InternalIP)."""
    node = kubectl.json("get", "node", node_name, timeout=10)
    if node_ip is not None:
        addresses = {a["address"] for a in node["status"].get("addresses", []) if a["type"] == "InternalIP"}
        if node_ip not in addresses:
            return False
    return any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"].get("conditions", []))


HARNESS_GENERATION = "5"
"""Written to `<state>/generation` by `up`. A cluster without it (or with another value) was
brought up by an older harness (no cgroups, no firewall of this one; 3: kube-router behind its
shims, `kube_router_shim`; 4: a loopback registry containerd pulls from; 5: the shims take the
real tools from kube-router's environment, which an older kube-router lacks): `up` replaces it."""


def generation_file(state: StatePaths):
    return state.root / "generation"


SLOW_ANSWERS = (
    "(Timeout)",  # 504: "the server was unable to return a response in the time allotted"
    "(TooManyRequests)",  # 429: API priority and fairness shedding load
    "etcdserver: request timed out",
    "etcdserver: leader changed",
    "TLS handshake timeout",
    "context deadline exceeded",
    "Client.Timeout exceeded",
)
"""What kubectl prints when every process runs but the API server (or its etcd) is loaded:
on a busy 2-core machine that is "slow" (wait), never "broken" (rebuild). A refused
connection, a certificate error or NotFound stay "broken"."""


def is_slow_answer(stderr: str) -> bool:
    return any(marker in stderr for marker in SLOW_ANSWERS)


def health(layout: Layout, state: StatePaths, timeout: float = 10) -> tuple[str, str]:
    """(state, reason): see the module docstring."""
    running = process_states(state)
    if not state.root.exists():
        return "absent", f"no state dir {state.root}"
    generation = generation_file(state).read_text().strip() if generation_file(state).exists() else None
    if generation != HARNESS_GENERATION:
        return "broken", f"brought up by an older harness (generation {generation}, this one is {HARNESS_GENERATION})"
    stopped = [name for name, pid in running.items() if pid is None]
    if stopped:
        return "broken", f"not running: {', '.join(stopped)}"
    # Another kube-router beside ours (k3s, started after `up`, which refuses one already there)
    # shares the fixed KUBE-ROUTER-* chains and KUBE-SRC/DST-* sets and deletes ours as stale.
    others = processes.others_named("kube-router", running["kube-router"])
    if others:
        return "broken", (
            f"another kube-router runs in this network namespace (pid {', '.join(map(str, others))}): it shares "
            "kube-router's fixed chains and ipsets with ours, so NetworkPolicy here is not ours alone; stop it"
        )
    if not paths.kubeconfig_path().exists():
        return "broken", f"no kubeconfig at {paths.kubeconfig_path()}"
    try:
        node = admin().json("get", "node", layout.node_name, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "slow", f"kubectl get node did not answer within {timeout:.0f} s"
    except KubectlError as exc:
        if is_slow_answer(exc.proc.stderr or ""):
            return "slow", f"kubectl get node: the API server is overloaded, not broken: {exc}"
        return "broken", f"kubectl get node: {exc}"
    except Exception as exc:  # noqa: BLE001 - an API that refuses or errs is broken, not slow
        return "broken", f"kubectl get node: {exc}"
    addresses = {a["address"] for a in node["status"].get("addresses", []) if a["type"] == "InternalIP"}
    if layout.node_ip not in addresses:
        return "broken", f"node {layout.node_name} has addresses {sorted(addresses)}, not {layout.node_ip} (another address plan)"
    if not any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"].get("conditions", [])):
        return "slow", f"node {layout.node_name} not Ready yet"
    return "ok", "every process runs and the node is Ready"


def healthy(layout: Layout, state: StatePaths) -> bool:
    return health(layout, state)[0] == "ok"


def status() -> int:
    state = StatePaths(paths.state_dir())
    layout = current_layout()
    for name, pid in process_states(state).items():
        print(f"{name:26} {'running (pid %d)' % pid if pid else 'not running'}")
    verdict, reason = health(layout, state)
    print(f"{'node ' + layout.node_name:26} {verdict}: {reason}")
    if verdict == "ok":
        print(f"KUBECONFIG={paths.kubeconfig_path()}")
    print(f"logs: {state.logs}")
    return 0 if verdict == "ok" else 1


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
