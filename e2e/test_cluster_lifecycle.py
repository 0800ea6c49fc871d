"""`down` leaves nothing behind and `up` works again afterwards (local backend only).

Marked `restarts_cluster`, so it runs after every other test of the session.
"""

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from e2e.cluster import image_import, network, node, paths, processes, testimages
from e2e.cluster.configs import StatePaths

pytestmark = pytest.mark.restarts_cluster


def _argv(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _argv0(pid: int) -> str:
    return (_argv(pid) or [""])[0]


def leftovers(layout) -> dict[str, list[str]]:
    """Everything of the harness still present on the machine, by kind (empty lists = clean)."""
    state = StatePaths(paths.state_dir())
    bin_dir = str(paths.bin_dir())
    found: dict[str, list[str]] = {}
    cluster_binaries = {f"{bin_dir}/{name}" for name in node.PROCESSES}
    found["processes"] = [
        str(pid)
        for pid in processes.pids_mentioning(str(state.root)) + processes.pids_mentioning(bin_dir)
        if _argv0(pid) in cluster_binaries or str(state.root) in " ".join(_argv(pid))
    ]
    found["netns"] = network.list_netns("ztr") + network.list_netns("cni-")
    links = json.loads(network.sh("ip", "-j", "link").stdout)
    found["links"] = [link["ifname"] for link in links if link["ifname"].startswith("ztr")]
    routes = network.sh("ip", "-4", "route").stdout.splitlines()
    found["routes"] = [r for r in routes if any(r.startswith(c) for c in (*layout.sink_routes, layout.test_host_cidr))]
    found["iptables"] = []
    for binary in ("iptables", "ip6tables", "iptables-legacy", "ip6tables-legacy"):
        for table in ("filter", "nat", "mangle"):
            rules = subprocess.run([binary, "-t", table, "-S"], capture_output=True, text=True).stdout
            found["iptables"] += [f"{binary} {table}: {r}" for r in rules.splitlines() if "KUBE-" in r or "ZTR-" in r]
    mounts = Path("/proc/self/mountinfo").read_text()
    found["mounts"] = [line for line in mounts.splitlines() if str(state.root) in line or "/var/run/netns/cni-" in line]
    found["state dir"] = [str(state.root)] if state.root.exists() else []
    found["cgroups"] = [str(p) for p in Path("/sys/fs/cgroup").glob("*/kubepods")]
    found["cni cache"] = [str(p) for p in Path("/var/lib/cni").glob("**/ztr-e2e-*")]
    found["pod log links"] = [
        str(p) for p in Path("/var/log/containers").glob("*") if p.is_symlink() and str(state.root) in os.readlink(p)
    ] if Path("/var/log/containers").exists() else []
    return {kind: items for kind, items in found.items() if items}


def test_down_leaves_nothing_behind_and_up_works_again(cluster, kubectl, busybox_image, wait_for):
    if cluster.backend != "local":
        pytest.skip(f"down/up is the local cluster's lifecycle, not --cluster={cluster.backend}'s")
    ns = f"e2e-lifecycle-{uuid.uuid4().hex[:6]}"
    # Something running with a network namespace, IPAM lease, mounts and logs.
    kubectl("create", "namespace", ns)
    kubectl("run", "sleeper", "-n", ns, f"--image={busybox_image}", "--image-pull-policy=IfNotPresent", "--", "sleep", "3600")
    kubectl("wait", "pod/sleeper", "-n", ns, "--for=condition=Ready", "--timeout=90s", timeout=100)

    node.down()
    assert leftovers(cluster.layout) == {}

    node.up()
    assert node.node_ready(kubectl, cluster.layout.node_name)
    # The images went with the state; put busybox back for anything that runs after.
    image_import.import_archive(testimages.busybox_archive())
    kubectl("create", "namespace", ns)
    kubectl("run", "again", "-n", ns, f"--image={busybox_image}", "--image-pull-policy=IfNotPresent", "--", "sleep", "3600")
    kubectl("wait", "pod/again", "-n", ns, "--for=condition=Ready", "--timeout=90s", timeout=100)
    kubectl("delete", "namespace", ns, "--wait=false")
