"""`--cluster=existing` on a cluster the harness does not own: tests of this machine's own parts
(its cgroups, its firewall, its loopback) must skip there with a reason, not pass by looking at
the machine running pytest, and none may raise AttributeError. Run in a child pytest against a
KUBECONFIG whose API server does not exist (nothing there can pass by using the cluster)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

NOWHERE = """\
apiVersion: v1
kind: Config
clusters:
- name: nowhere
  cluster: {server: "https://127.0.0.1:9"}
users:
- name: nobody
  user: {token: "none"}
contexts:
- name: nowhere
  context: {cluster: nowhere, user: nobody}
current-context: nowhere
"""


@pytest.mark.timeout(120)
def test_the_machines_own_checks_do_not_pass_on_a_cluster_given_by_kubeconfig(tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(NOWHERE)
    env = {k: v for k, v in os.environ.items() if k != "CI"}  # under CI=true a skip would fail
    env["KUBECONFIG"] = str(kubeconfig)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "--only-e2e", "--part=cluster", "--cluster=existing",
         "--image-registry", "127.0.0.1:9/nowhere", "-p", "no:cacheprovider", "-q", "-rA",
         "e2e/test_review_egress.py"],
        capture_output=True, text=True, timeout=110, cwd=ROOT, env=env,
    )
    output = run.stdout + run.stderr
    passed = [line for line in output.splitlines() if line.startswith("PASSED ")]
    assert "AttributeError" not in output, output[-4000:]
    assert not passed, "passed against a cluster that does not exist (checked this machine instead):\n" + "\n".join(passed)
    assert " skipped" in output, output[-4000:]
