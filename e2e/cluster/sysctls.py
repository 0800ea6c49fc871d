"""Kernel settings the cluster changes, saved before `up` changes anything and put back by `down`.

`up` sets ip_forward itself; the kubelet (protectKernelDefaults off) tunes vm/kernel keys;
kube-proxy and the CNI bridge may touch conntrack and forwarding. All of them are recorded
once (the first `up` after a clean machine) and restored to exactly what they were.
"""

import json
from pathlib import Path

WATCHED = (
    "net.ipv4.ip_forward",
    "net.ipv6.conf.all.forwarding",
    "net.ipv4.conf.all.route_localnet",
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
    "net.netfilter.nf_conntrack_max",
    "net.netfilter.nf_conntrack_tcp_timeout_established",
    "net.netfilter.nf_conntrack_tcp_timeout_close_wait",
    "net.bridge.bridge-nf-call-iptables",
)


def _path(key: str, root: Path) -> Path:
    return root.joinpath(*key.split("."))


def read(key: str, root: Path = Path("/proc/sys")) -> str | None:
    try:
        return _path(key, root).read_text().strip()
    except OSError:
        return None


def write(key: str, value: str, root: Path = Path("/proc/sys")) -> None:
    _path(key, root).write_text(value)


def save(record: Path, root: Path = Path("/proc/sys")) -> None:
    """Record the current values, unless a record exists (a crashed run's: its values are the
    machine's, today's may already be ours)."""
    if record.exists():
        return
    values = {key: read(key, root) for key in WATCHED}
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({k: v for k, v in values.items() if v is not None}, indent=1))


def restore(record: Path, root: Path = Path("/proc/sys")) -> list[str]:
    """Put every recorded value back; returns the keys that could not be written."""
    if not record.exists():
        return []
    failed = []
    for key, value in json.loads(record.read_text()).items():
        if read(key, root) != value:
            try:
                write(key, value, root)
            except OSError:
                failed.append(key)
    return failed


def changed(record: Path, root: Path = Path("/proc/sys")) -> dict[str, tuple[str, str | None]]:
    """Recorded keys whose value differs now: key -> (recorded, now)."""
    if not record.exists():
        return {}
    return {k: (v, read(k, root)) for k, v in json.loads(record.read_text()).items() if read(k, root) != v}
