"""Kernel settings the cluster changes, saved before `up` changes anything and put back by `down`.

`up` sets ip_forward itself; the kubelet (protectKernelDefaults off) tunes vm/kernel keys;
kube-proxy and the CNI bridge may touch conntrack and forwarding. All of them are recorded
once (the first `up` after a clean machine) and restored to exactly what they were.

The record carries the boot it was made in: after a reboot the values are the new boot's (and
docker, k3s or libvirt may have set ip_forward=1 again), so a record of another boot is thrown
away, never applied. `up` also records what the keys were once the cluster ran (`ours`): `down`
puts a key back only while it still holds that value (someone else changed it since: theirs).
"""

import json
from pathlib import Path

from e2e.cluster import boot

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


def _load(record: Path, this_boot: bool) -> dict | None:
    """The record as {"boot_id", "before", "ours"?}, or None when absent or of another boot.
    A record of an older harness (a flat {key: value}) has no boot id: used only when our
    cluster ran this boot by other evidence (`this_boot`)."""
    try:
        data = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    if "before" not in data:
        return {"before": data} if this_boot else None
    return data if data.get("boot_id") == boot.boot_id() else None


def save(record: Path, root: Path = Path("/proc/sys")) -> None:
    """Record the current values, unless a record of this boot exists (a crashed run's: its
    values are the machine's, today's may already be ours)."""
    if _load(record, this_boot=False) is not None:
        return
    values = {key: read(key, root) for key in WATCHED}
    record.parent.mkdir(parents=True, exist_ok=True)
    data = {"boot_id": boot.boot_id(), "before": {k: v for k, v in values.items() if v is not None}}
    record.write_text(json.dumps(data, indent=1))


def mark_ours(record: Path, root: Path = Path("/proc/sys")) -> None:
    """After `up`: the values the cluster runs with (ours to put back)."""
    data = _load(record, this_boot=False)
    if data is None:
        return
    data["ours"] = {key: read(key, root) for key in data["before"]}
    record.write_text(json.dumps(data, indent=1))


def _to_restore(record: Path, this_boot: bool, root: Path) -> dict[str, str]:
    data = _load(record, this_boot)
    if data is None:
        return {}
    ours = data.get("ours")
    todo = {}
    for key, value in data["before"].items():
        now = read(key, root)
        if now == value:
            continue
        if ours is not None and now != ours.get(key):
            continue  # changed by someone else since `up`: theirs now
        todo[key] = value
    return todo


def restore(record: Path, root: Path = Path("/proc/sys"), this_boot: bool = False) -> list[str]:
    """Put back every recorded value we changed; returns the keys that could not be written."""
    failed = []
    for key, value in _to_restore(record, this_boot, root).items():
        try:
            write(key, value, root)
        except OSError:
            failed.append(key)
    return failed


def changed(record: Path, root: Path = Path("/proc/sys"), this_boot: bool = False) -> dict[str, tuple[str, str | None]]:
    """Recorded keys we changed and would put back: key -> (recorded, now)."""
    return {k: (v, read(k, root)) for k, v in _to_restore(record, this_boot, root).items()}
