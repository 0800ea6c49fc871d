"""Traces of "another cluster" on the machine, which the harness must never touch.

Made by the lifecycle test before `down`/`up` and checked after each: a network namespace
named like a CNI pod namespace (`cni-decoy`), a chain named like Kubernetes' (`KUBE-DECOY`,
IPv4 and IPv6, with a rule and a jump to it), an ipset named like kube-router's
(`KUBE-DECOY`, with a member), a sleeping process in a `kubepods` cgroup
that is not the harness's (as another kubelet would have it), and a link named as ZeroTier
names the tap of network 5dfbd3d12c4a3698 (`ztrtlztz5u`: the harness's marker once was `ztr`).
"""

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

NETNS = "cni-decoy"
CHAIN = "KUBE-DECOY"
IPSET = "KUBE-DECOY"  # not KUBE-SRC-/KUBE-DST-: a running kube-router prunes those itself
IPSET_MEMBER = "198.18.0.7"
CGROUP = Path("/sys/fs/cgroup/pids/kubepods/zt-decoy")
ZEROTIER_TAP = "ztrtlztz5u"


@dataclass
class Decoys:
    sleeper: subprocess.Popen | None = None
    made: list[str] = field(default_factory=list)

    def survivors(self) -> dict[str, bool]:
        """Each decoy -> still intact."""
        alive = self.sleeper is not None and self.sleeper.poll() is None
        in_cgroup = alive and str(self.sleeper.pid) in (CGROUP / "cgroup.procs").read_text().split()
        result = {
            "netns cni-decoy": Path("/run/netns", NETNS).exists(),
            "sleeper in kubepods": bool(in_cgroup),
            f"link {ZEROTIER_TAP}": subprocess.run(["ip", "link", "show", ZEROTIER_TAP], capture_output=True).returncode == 0,
        }
        for binary in ("iptables", "ip6tables"):
            rules = subprocess.run([binary, "-w", "5", "-S"], capture_output=True, text=True).stdout.splitlines()
            result[f"{binary} {CHAIN}"] = f"-N {CHAIN}" in rules and f"-A {CHAIN} -j RETURN" in rules and f"-A INPUT -j {CHAIN}" in rules
        members = subprocess.run(["ipset", "list", IPSET], capture_output=True, text=True).stdout.split()
        result[f"ipset {IPSET}"] = IPSET_MEMBER in members
        return result


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30)


def create() -> Decoys:
    decoys = Decoys()
    remove(decoys)  # a crashed earlier run's
    _run("ip", "netns", "add", NETNS)
    _run("ip", "link", "add", ZEROTIER_TAP, "type", "bridge")  # a tap needs /dev/net/tun; the name is the point
    for binary in ("iptables", "ip6tables"):
        _run(binary, "-w", "5", "-N", CHAIN)
        _run(binary, "-w", "5", "-A", CHAIN, "-j", "RETURN")
        _run(binary, "-w", "5", "-A", "INPUT", "-j", CHAIN)
    _run("ipset", "create", IPSET, "hash:ip")
    _run("ipset", "add", IPSET, IPSET_MEMBER)
    CGROUP.mkdir(parents=True, exist_ok=True)
    decoys.sleeper = subprocess.Popen(["sleep", "3600"])
    (CGROUP / "cgroup.procs").write_text(str(decoys.sleeper.pid))
    return decoys


def remove(decoys: Decoys | None = None) -> None:
    if decoys is not None and decoys.sleeper is not None:
        decoys.sleeper.kill()
        decoys.sleeper.wait()
    subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)
    subprocess.run(["ip", "link", "del", ZEROTIER_TAP], capture_output=True)
    for binary in ("iptables", "ip6tables"):
        while subprocess.run([binary, "-w", "5", "-D", "INPUT", "-j", CHAIN], capture_output=True).returncode == 0:
            pass
        subprocess.run([binary, "-w", "5", "-F", CHAIN], capture_output=True)
        subprocess.run([binary, "-w", "5", "-X", CHAIN], capture_output=True)
    subprocess.run(["ipset", "destroy", IPSET], capture_output=True)
    for d in (CGROUP, CGROUP.parent):
        try:
            d.rmdir()
        except OSError:
            pass
