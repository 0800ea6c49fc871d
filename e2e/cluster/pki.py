"""Certificates and kubeconfigs of the local cluster, made with kubeadm's init phases only."""

import os
import subprocess

from e2e.cluster import configs, paths
from e2e.cluster.configs import StatePaths
from e2e.cluster.layout import Layout


def write(layout: Layout, state: StatePaths) -> None:
    cfg = state.configs / "kubeadm.json"
    cfg.write_text(configs.kubeadm_config(layout, state))
    kubeadm = paths.binary("kubeadm")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([kubeadm, *args], check=True, capture_output=True, text=True, timeout=60)

    run("init", "phase", "certs", "all", f"--config={cfg}")
    run("init", "phase", "kubeconfig", "all", f"--config={cfg}", f"--kubeconfig-dir={state.kubeconfigs}")
    proxy = run("kubeconfig", "user", f"--config={cfg}", "--client-name=system:kube-proxy")
    state.kubeconfig("kube-proxy").write_text(proxy.stdout)
    for conf in state.kubeconfigs.iterdir():
        os.chmod(conf, 0o600)
