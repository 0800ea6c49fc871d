"""CPU per call of the e2e cluster's kube-router shims (e2e/cluster/kube_router_bin/), beside the real tools.

    sudo python -m tests.bench.kube_router_shims                           # this tree, 100 calls each
    sudo python -m tests.bench.kube_router_shims --baseline-tree /tmp/old  # and another checkout's shims

kube-router calls them ~3,500 times in a CI run. Each call is made N times as kube-router makes
it (argv, stdin, the environment `kube_router_shim.environment` gives it), and the mean user+system
CPU of the call and all its children is printed, in ms. Root, iptables and ipset needed; it runs
in a private network namespace of its own (it re-runs itself under `unshare -n`), whose filter
table holds one kube-router pod chain.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

POD = "KUBE-POD-FW-AAAAAAAAAAAAAAAA"
SET = "KUBE-SRC-DDDDDDDDDDDDDDDD"
CALLS = [
    ("iptables -C (pass-through)", ["iptables", "-w", "-t", "filter", "-C", POD, "-j", "ACCEPT"], None),
    ("iptables -t filter -S", ["iptables", "-t", "filter", "-S", "--wait"], None),
    ("iptables-save -t filter", ["iptables-save", "-t", "filter"], None),
    ("iptables-restore -T filter", ["iptables-restore", "--wait", "-T", "filter"],
     f"*filter\n:{POD} - [0:0]\n-A {POD} -j ACCEPT\nCOMMIT\n".encode()),
    ("ipset save", ["ipset", "save"], None),
    ("ipset restore -exist", ["ipset", "restore", "-exist"],
     f"create {SET} hash:ip timeout 0\nadd {SET} 10.244.0.5 timeout 0\n".encode()),
]
"""The real iptables-restore runs the same input without --noflush (what kube-router asked)."""


def _environment(tree: Path, base: dict[str, str]) -> dict[str, str]:
    """`tree`'s kube_router_shim.environment(base), from a Python started in that tree."""
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); from e2e.cluster import kube_router_shim; "
            "print(json.dumps(kube_router_shim.environment(json.loads(sys.argv[2]))))")
    out = subprocess.run([sys.executable, "-c", code, str(tree), json.dumps(base)], capture_output=True, text=True,
                         check=True, cwd=tree).stdout
    return json.loads(out)


def _cpu_ms(argv: list[str], env: dict[str, str], stdin: bytes | None, n: int) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    for _ in range(n):
        subprocess.run(argv, env=env, input=stdin, stdout=subprocess.DEVNULL, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / n * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=100, help="calls of each (default 100)")
    parser.add_argument("--baseline-tree", metavar="DIR", help="another checkout whose shims run beside this one's")
    args = parser.parse_args()
    if os.environ.get("ZTR_BENCH_NETNS") != "1":
        env = dict(os.environ, ZTR_BENCH_NETNS="1")
        os.execvpe("unshare", ["unshare", "-n", sys.executable, "-m", "tests.bench.kube_router_shims", *sys.argv[1:]], env)
    base = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    subprocess.run(["iptables", "-w", "-N", POD], check=True)
    subprocess.run(["iptables", "-w", "-A", POD, "-j", "ACCEPT"], check=True)
    trees = [("this tree", Path(__file__).resolve().parents[2])]
    if args.baseline_tree:
        trees.append(("baseline", Path(args.baseline_tree).resolve()))
    shims = [(name, tree / "e2e" / "cluster" / "kube_router_bin", _environment(tree, base)) for name, tree in trees]
    print(f"CPU ms per call (user+sys, with children), mean of {args.n}")
    print(f"{'call':30} {'real':>6}" + "".join(f" {name:>10}" for name, _, _ in shims))
    for label, argv, stdin in CALLS:
        real = _cpu_ms(argv, base, stdin, args.n)
        row = [_cpu_ms([str(bin_dir / argv[0]), *argv[1:]], env, stdin, args.n) for _, bin_dir, env in shims]
        print(f"{label:30} {real:6.1f}" + "".join(f" {ms:10.1f}" for ms in row))


if __name__ == "__main__":
    main()
