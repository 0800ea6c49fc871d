"""What of the local cluster is present on the machine: the check behind a clean `down`.

Each kind of trace is listed by its marker only (see `teardown`): our cgroups and pid files,
the state dir's path, the cluster binaries' paths, our exact `ztr-...` link and namespace
names (`layout.MARKER`: never a ZeroTier tap's), `ZTR-E2E-*` chains. Things
that merely look like a cluster's (`cni-*` namespaces, `/kubepods` cgroups, other KUBE-*
chains) belong to someone else and are never listed.
"""

import json
import os
from pathlib import Path

from e2e.cluster import cgroups, configs, firewall, ipsets, network, paths, processes


def _argv(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _route_dev(route: str) -> str:
    parts = route.split()
    return parts[parts.index("dev") + 1] if "dev" in parts else ""


def leftovers(layout, kube_chains: bool = True) -> dict[str, list[str]]:
    """Everything of the harness still on the machine, by kind; {} means clean.

    `kube_chains`: also list the fixed chains of kube-proxy, the kubelet and kube-router, and
    kube-router's ipsets (meaningful only
    where our cluster ran: `up` refuses to share them with another cluster)."""
    from e2e.cluster import teardown  # teardown imports this module

    state = configs.StatePaths(paths.state_dir())
    root = str(state.root)
    found: dict[str, list[str]] = {}
    candidates = cgroups.pids() | set(processes.cluster_pids(root))
    candidates.discard(os.getpid())
    found["processes"] = [f"{pid} {' '.join(_argv(pid))[:120]}" for pid in sorted(candidates) if _argv(pid)]
    found["netns"] = [ns for ns in network.list_netns("") if layout.is_own_netns(ns)] + teardown.legacy_pod_netns()
    links = json.loads(network.sh("ip", "-j", "link").stdout)
    veths = set(network.test_host_veths())
    found["links"] = [link["ifname"] for link in links if layout.is_own_link(link["ifname"]) or link["ifname"] in veths]
    # Routes on our links only: a route of the machine for the same prefix is not ours.
    found["routes"] = [r for r in network.sh("ip", "-4", "route").stdout.splitlines() if _route_dev(r) in found["links"]]
    found["firewall"] = firewall.present(firewall.ours) + (firewall.present(firewall.kube_chain) if kube_chains else [])
    found["ipsets"] = ipsets.present() if kube_chains else []
    found["mounts"] = teardown.mounts_under(state.root)
    found["state dir"] = [root] if state.root.exists() else []
    found["cgroups"] = [str(p) for p in cgroups.ours()]
    found["cni cache"] = [str(p) for p in teardown.cni_cache_files()]
    found["netns config"] = [str(p) for p in network.netns_etc_dirs(layout)]
    logs = Path("/var/log/containers")
    found["pod log links"] = (
        [str(p) for p in logs.iterdir() if p.is_symlink() and os.readlink(p).startswith(root)] if logs.exists() else []
    )
    return {kind: items for kind, items in found.items() if items}
