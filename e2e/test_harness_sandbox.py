"""The harness's machine-level behaviour, each in a private sandbox (no cluster needed, as root).

Every e2e/sandbox/f*.sh script reproduces one review finding (e2e/sandbox/REVIEW.md) with the
harness's own code inside e2e/sandbox/sandbox.sh: a private network + mount namespace standing for
"a machine" (its own iptables, links, routes; tmpfs over /run, /sys/fs/cgroup, /var/lib/cni), so
nothing here touches the real machine or the real cluster. A script exits 0 when the harness
behaves, 1 when the finding reproduces. Findings not fixed yet are strict xfails.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

NEEDS_CLUSTER = False

SANDBOX = Path(__file__).parent / "sandbox"
NOT_FIXED = {
}


def _scripts():
    for path in sorted(SANDBOX.glob("*.sh")):
        if path.name == "sandbox.sh":
            continue
        marks = []
        if path.stem in NOT_FIXED:
            marks.append(pytest.mark.xfail(strict=True, reason=f"not fixed yet: {NOT_FIXED[path.stem]}"))
        yield pytest.param(path, id=path.stem, marks=marks)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, iptables)")
@pytest.mark.timeout(120)
@pytest.mark.parametrize("script", list(_scripts()))
def test_sandboxed_reproduction_passes(script):
    run = subprocess.run(["bash", str(script)], env=dict(os.environ, PY=sys.executable),
                         capture_output=True, text=True, timeout=110)
    assert run.returncode == 0, f"{script.name} exit {run.returncode}:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, iptables)")
@pytest.mark.timeout(180)
@pytest.mark.parametrize("script", ["f3b_pod_reaches_host_listener_ipv6", "f16_zerotier_interface_is_ours"])
def test_a_script_does_not_pass_when_the_pods_datagram_never_reaches_the_guard(tmp_path, script):
    """A PASS of "nothing arrived" proves the harness's guard only if the pod's datagram got as
    far as the guard (its drop counted): one lost on the way (a path not up yet) arrives nowhere
    either, and would pass with the guard gone. Here the pod sends nothing at all, so the
    wait for its datagram to be accounted for need not be the 30 s a loaded machine gets."""
    py = tmp_path / "python"
    py.write_text(f'#!/bin/sh\ncase "$*" in *sendto*) exit 0;; esac\nexec {sys.executable} "$@"\n')
    py.chmod(0o755)
    run = subprocess.run(["bash", str(SANDBOX / f"{script}.sh")], env=dict(os.environ, PY=str(py), ZTR_SANDBOX_PROOF_DEADLINE="2"),
                         capture_output=True, text=True, timeout=170)
    assert run.returncode != 0, f"{script} passed without the datagram:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
