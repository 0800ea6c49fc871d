"""The harness's own cgroups: its marker for "this process is ours".

Two trees, both named for the harness and nothing else:
- `HOST` (`zt-relay-e2e-host`, in the cgroup v2 hierarchy): every host process `up` starts
  (etcd ... containerd, kubelet, and their children such as containerd's shims). The
  firewall's OUTPUT jump matches it (`-m cgroup --path`), so the harness's own processes
  cannot send anything off the machine, whatever they try (an image pull, a DNS lookup).
- `PODS` (`/zt-relay-e2e-pods`, the kubelet's `cgroupRoot`): the kubelet puts every pod
  under it (`/zt-relay-e2e-pods/kubepods/...`) instead of the machine's `/kubepods`, which
  another kubelet (kind, k3s, minikube) may own.

`down` kills only processes in these trees and removes only these directories.
On a hybrid machine (cgroup v1 controllers plus v2 at /sys/fs/cgroup/unified, as here) the
v2 tree is under `unified`; on a pure v2 machine it is /sys/fs/cgroup itself.
"""

import os
from pathlib import Path

CGROUP_FS = Path("/sys/fs/cgroup")
HOST = "zt-relay-e2e-host"
PODS = "zt-relay-e2e-pods"


def unified_root(fs: Path = CGROUP_FS) -> Path:
    """The mount point of the cgroup v2 hierarchy."""
    if (fs / "cgroup.controllers").exists():
        return fs
    if (fs / "unified" / "cgroup.procs").exists():
        return fs / "unified"
    raise RuntimeError(f"no cgroup v2 hierarchy at {fs} or {fs / 'unified'} (needed to mark the harness's processes)")


def hierarchies(fs: Path = CGROUP_FS) -> list[Path]:
    """Every mounted hierarchy's root (v1 controllers, name=systemd, and v2)."""
    if (fs / "cgroup.controllers").exists():
        return [fs]
    return sorted(p for p in fs.iterdir() if p.is_dir() and (p / "cgroup.procs").exists())


def host_dir(fs: Path = CGROUP_FS) -> Path:
    return unified_root(fs) / HOST


def kubelet_cgroup_root() -> str:
    """The kubelet's `cgroupRoot` (a cgroup path, same in every hierarchy)."""
    return "/" + PODS


def ours(fs: Path = CGROUP_FS) -> list[Path]:
    """Existing top directories of our trees, in every hierarchy."""
    return [h / name for h in hierarchies(fs) for name in (HOST, PODS) if (h / name).is_dir()]


def prepare(fs: Path = CGROUP_FS) -> None:
    """Create the host tree (v2) and the pods tree in every hierarchy (the kubelet requires
    its cgroupRoot to exist). A v1 cpuset cgroup starts with no CPUs: copy the parent's."""
    host_dir(fs).mkdir(exist_ok=True)
    for h in hierarchies(fs):
        pods = h / PODS
        pods.mkdir(exist_ok=True)
        for knob in ("cpuset.cpus", "cpuset.mems"):
            if (pods / knob).exists() and not (pods / knob).read_text().strip():
                (pods / knob).write_text((h / knob).read_text())


def pids(fs: Path = CGROUP_FS) -> set[int]:
    """Every process in our trees, in any hierarchy."""
    found: set[int] = set()
    for top in ours(fs):
        for procs in [top / "cgroup.procs", *top.glob("**/cgroup.procs")]:
            try:
                found.update(int(p) for p in procs.read_text().split())
            except OSError:
                pass
    return found


def remove(fs: Path = CGROUP_FS) -> list[str]:
    """Remove our trees bottom-up; returns what could not be removed."""
    stuck = []
    for top in ours(fs):
        for dirpath, _dirs, _files in os.walk(top, topdown=False):
            try:
                os.rmdir(dirpath)
            except OSError as exc:
                stuck.append(f"{dirpath}: {exc.strerror}")
    return stuck


def enter_host_argv(argv: list[str], fs: Path = CGROUP_FS) -> list[str]:
    """`argv` wrapped so the process joins the host tree before it execs (no window in which
    it runs, and could send, outside it)."""
    procs = host_dir(fs) / "cgroup.procs"
    return ["/bin/sh", "-c", f'echo $$ > "{procs}" && exec "$@"', "zt-e2e-start", *argv]
