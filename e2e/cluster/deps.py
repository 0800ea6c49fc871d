"""Debian packages the local cluster and the image build need; installed by `deps`.

One list, so `.ci/run` (fresh machine) and humans install the same thing.
"""

import os
import subprocess

APT_PACKAGES = (
    "containerd",  # the node's container runtime (we run our own instance)
    "runc",
    "containernetworking-plugins",  # bridge, host-local, portmap in /usr/lib/cni
    "iptables",  # kube-proxy (iptables mode), the safety rules
    "conntrack",  # kube-proxy clears stale UDP flows with it
    "iproute2",  # network namespaces for the sink and test hosts
    "docker.io",  # builds the project image; `docker save` feeds image import
    "busybox-static",  # the harness's own test image (shell, httpd, nc)
    "gcc",  # the static pause binary
    "libc6-dev",
    "nginx-light",  # the real website behind --fallback in tests/relay/test_fallback_probes.py
)


def missing(packages: tuple[str, ...] = APT_PACKAGES) -> list[str]:
    out = subprocess.run(
        ["dpkg-query", "-W", "-f=${Package} ${db:Status-Status}\n", *packages], capture_output=True, text=True
    ).stdout
    installed = {line.split()[0] for line in out.splitlines() if line.endswith(" installed")}
    return [p for p in packages if p not in installed]


def install() -> int:
    todo = missing()
    if not todo:
        print("deps: all Debian packages present")
        return 0
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *todo], check=True, env=env)
    print(f"deps: installed {' '.join(todo)}")
    return 0
