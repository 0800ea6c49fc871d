"""kube-router's ipsets: listed and destroyed by their exact name patterns, like its chains.

kube-router's NetworkPolicy controller keeps the addresses of each policy's pods in ipsets
named `KUBE-SRC-<hash>` / `KUBE-DST-<hash>` (and, briefly, `TMP-<hash>` while it swaps them
in), and leaves them behind when it stops. Like Kubernetes' KUBE-* chains these names are
fixed, so they count as ours only where our cluster ran (`firewall` explains the rule);
a set named otherwise is never touched. The cluster is IPv4 only, so no `inet6:` sets.
"""

import re
import shutil
import subprocess

KUBE_ROUTER_SET = re.compile(r"^(KUBE-SRC-|KUBE-DST-)[A-Z2-7]{16}$|^TMP-[A-Z2-7]{16}$")
"""kube-router v2.1's names: a prefix and 16 characters of base32."""


def kube_router_set(name: str) -> bool:
    return bool(KUBE_ROUTER_SET.match(name))


def names() -> list[str]:
    """Every ipset on the machine (none where the `ipset` tool is missing)."""
    if shutil.which("ipset") is None:
        return []
    proc = subprocess.run(["ipset", "list", "-n"], capture_output=True, text=True, timeout=30)
    return proc.stdout.split() if proc.returncode == 0 else []


def present(is_ours=kube_router_set) -> list[str]:
    return [name for name in names() if is_ours(name)]


def remove(is_ours=kube_router_set) -> None:
    """Destroy the matching sets; call after the chains that use them are gone (a set in use
    by a rule cannot be destroyed). One `ipset restore` for all; it stops at its first failing
    line (a set gone meanwhile, one still in use), so then what is left is destroyed one by one."""
    doomed = present(is_ours)
    if not doomed:
        return
    script = "".join(f"destroy {name}\n" for name in doomed)
    if subprocess.run(["ipset", "restore"], input=script, capture_output=True, text=True, timeout=30).returncode == 0:
        return
    for name in present(is_ours):
        subprocess.run(["ipset", "destroy", name], capture_output=True, timeout=30)
