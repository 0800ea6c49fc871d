"""Debian packages the local cluster and the image build need; installed by `deps`.

One list, so `.ci/run` (fresh machine) and humans install the same thing.

A tool that is already there is never installed again, whatever package brought it: a
workstation with Docker's own packages (docker-ce, containerd.io, which Provides and Conflicts
with containerd and runc) has no package named docker.io/containerd/runc, and installing them
would make apt remove the developer's Docker. So those are checked by their commands, and
`deps` refuses to install over a conflicting package.
"""

import os
import shutil
import subprocess

APT_PACKAGES = (
    "containerd",  # the node's container runtime (we run our own instance)
    "runc",
    "containernetworking-plugins",  # bridge, host-local, portmap in /usr/lib/cni
    "iptables",  # kube-proxy (iptables mode), the safety rules
    "conntrack",  # kube-proxy clears stale UDP flows with it
    "ipset",  # kube-router's NetworkPolicy controller keeps its address sets with it
    "iproute2",  # network namespaces for the sink and test hosts
    "docker.io",  # builds the project image; `docker save` feeds image import
    "busybox-static",  # the harness's own test image (shell, httpd, nc)
    "gcc",  # the static pause binary
    "libc6-dev",
    "nginx-light",  # the real website behind --fallback in tests/relay/test_fallback_probes.py
    "python3-venv",  # .ci/run makes its virtualenv right after `deps` (ensurepip)
)

# Packages judged by the commands they provide (another package may provide them).
COMMANDS = {"containerd": ("containerd",), "runc": ("runc",), "docker.io": ("dockerd", "docker")}

# Installed packages that conflict with ours: never install over them.
CONFLICTS = {"containerd": ("containerd.io",), "runc": ("containerd.io",), "docker.io": ("docker-ce", "moby-engine")}


def _installed(packages) -> set[str]:
    out = subprocess.run(
        ["dpkg-query", "-W", "-f=${Package} ${db:Status-Status}\n", *packages], capture_output=True, text=True
    ).stdout
    return {line.split()[0] for line in out.splitlines() if line.endswith(" installed")}


def missing(packages: tuple[str, ...] = APT_PACKAGES) -> list[str]:
    installed = _installed(packages)
    todo = []
    for p in packages:
        if p in installed:
            continue
        cmds = COMMANDS.get(p)
        if cmds and all(shutil.which(c) for c in cmds):
            continue
        if cmds and _installed(CONFLICTS.get(p, ())):
            continue  # provided by a conflicting package (e.g. containerd.io): reported by conflicts()
        todo.append(p)
    return todo


def conflicts(packages: tuple[str, ...] = APT_PACKAGES) -> list[str]:
    """Installed packages that would be removed if we installed ours, for the ones we lack."""
    installed = _installed(packages)
    found = []
    for p in packages:
        if p in installed or not CONFLICTS.get(p):
            continue
        cmds = COMMANDS.get(p, ())
        if cmds and all(shutil.which(c) for c in cmds):
            continue
        found += [f"{c} (instead of {p})" for c in sorted(_installed(CONFLICTS[p]))]
    return found


def install() -> int:
    clash = conflicts()
    if clash:
        print("deps: refusing to install over " + ", ".join(clash) + ": provide the missing commands "
              "(containerd, runc, dockerd) from those packages instead")
        return 1
    todo = missing()
    if not todo:
        print("deps: all Debian packages present")
        return 0
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    # -y only under CI: on a workstation apt shows what it would do (and remove) and asks.
    yes = ["-y"] if os.environ.get("CI") == "true" else []
    subprocess.run(["apt-get", "install", *yes, "-qq", "--no-install-recommends", *todo], check=True, env=env)
    print(f"deps: installed {' '.join(todo)}")
    return 0
