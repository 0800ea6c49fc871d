"""What of the local cluster is present on the machine: the check behind a clean `down`.

Each kind of trace (process, network namespace, link, route, firewall rule, mount, state
dir, cgroup, CNI cache, pod log link) is listed by what identifies it as ours: the `ztr`
names, the state dir's path, the cluster binaries' paths, the KUBE-/ZTR- chains.
"""

import json
import os
import subprocess
from pathlib import Path

from e2e.cluster import configs, network, paths, processes
from e2e.cluster.layout import Layout

CLUSTER_PROCESSES = (
    "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler",
    "kubelet", "kube-proxy", "coredns", "metrics-server",
)


def _argv(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def leftovers(layout: Layout) -> dict[str, list[str]]:
    """Everything of the harness still on the machine, by kind; {} means clean."""
    state = configs.StatePaths(paths.state_dir())
    root = str(state.root)
    binaries = {str(paths.bin_dir() / name) for name in CLUSTER_PROCESSES}
    found: dict[str, list[str]] = {}
    pids = set(processes.pids_mentioning(root)) | set(processes.pids_mentioning(str(paths.bin_dir())))
    found["processes"] = [
        f"{pid} {' '.join(_argv(pid))[:120]}"
        for pid in sorted(pids)
        if (_argv(pid) or [""])[0] in binaries or root in " ".join(_argv(pid))
    ]
    found["netns"] = network.list_netns("ztr") + network.list_netns("cni-")
    links = json.loads(network.sh("ip", "-j", "link").stdout)
    found["links"] = [link["ifname"] for link in links if link["ifname"].startswith("ztr")]
    ranges = (*layout.sink_routes, layout.test_host_cidr)
    found["routes"] = [r for r in network.sh("ip", "-4", "route").stdout.splitlines() if r.startswith(ranges)]
    found["firewall"] = []
    for binary in ("iptables", "ip6tables", "iptables-legacy", "ip6tables-legacy"):
        for table in ("filter", "nat", "mangle"):
            out = subprocess.run([binary, "-t", table, "-S"], capture_output=True, text=True).stdout
            found["firewall"] += [f"{binary} -t {table}: {r}" for r in out.splitlines() if "KUBE-" in r or "ZTR-" in r]
    mountinfo = Path("/proc/self/mountinfo").read_text().splitlines()
    found["mounts"] = [line.split()[4] for line in mountinfo if root in line or "/run/netns/cni-" in line]
    found["state dir"] = [root] if state.root.exists() else []
    found["cgroups"] = [str(p) for p in Path("/sys/fs/cgroup").glob("*/kubepods")]
    found["cni cache"] = [str(p) for p in Path("/var/lib/cni").glob(f"**/{configs.CNI_NETWORK}-*")]
    logs = Path("/var/log/containers")
    found["pod log links"] = (
        [str(p) for p in logs.iterdir() if p.is_symlink() and os.readlink(p).startswith(root)] if logs.exists() else []
    )
    return {kind: items for kind, items in found.items() if items}
