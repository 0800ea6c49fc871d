"""`down` removes every trace of ours and nothing else; `up` works again afterwards (local
backend only).

Marked `restarts_cluster`, so it runs after every other test of the session. It stops the
cluster, so outside CI it runs only with --with-restart (CI sets CI=true and runs it); it
holds this session's lock on the cluster, so another run's hold makes it fail, not the other.
"""

import os
import time
import uuid

import pytest

from e2e import decoys as decoys_mod
from e2e.cluster import image_import, node, testimages
from e2e.cluster.inventory import leftovers

pytestmark = pytest.mark.restarts_cluster

GRACE = 300
"""The grace period of the pod left terminating when `down` runs (seconds)."""


@pytest.fixture
def decoys():
    made = decoys_mod.create()
    yield made
    decoys_mod.remove(made)


def test_down_removes_only_ours_and_up_works_again(request, cluster, cluster_cli, kubectl, busybox_image, decoys):
    if cluster.backend != "local":
        pytest.skip(f"down/up is the local cluster's lifecycle, not --cluster={cluster.backend}'s")
    if not (os.environ.get("CI") or request.config.getoption("--with-restart")):
        pytest.skip("restarts the shared local cluster under any other session; enable with --with-restart (CI runs it)")
    intact = {name: True for name in decoys.survivors()}
    assert decoys.survivors() == intact
    ns = f"e2e-lifecycle-{uuid.uuid4().hex[:6]}"
    # Something running with a network namespace, IPAM lease, mounts and logs.
    kubectl.create_namespace(ns)
    kubectl("run", "sleeper", "-n", ns, f"--image={busybox_image}", "--image-pull-policy=IfNotPresent", "--", "sleep", "3600")
    kubectl("wait", "pod/sleeper", "-n", ns, "--for=condition=Ready", "--timeout=90s", timeout=100)

    # Already terminating with a grace period (as a test's namespace deletion leaves a pod, with
    # 30 s; `sleep` ignores the SIGTERM): `down` must not wait it out, and still tears its
    # sandbox down through the kubelet. 300 s here: a down that waits shows as one that gives
    # up its pod deletion (90 s) or waits it out, far above the 4-20 s of one that does not
    # (20 s seen at load 9).
    kubectl("delete", "pod", "sleeper", "-n", ns, "--wait=false", f"--grace-period={GRACE}")
    began = time.monotonic()
    assert "down: nothing left" in cluster_cli("down", timeout=GRACE + 60)
    assert time.monotonic() - began < 60, "down waited for a terminating pod's grace period"
    assert leftovers(cluster.layout) == {}
    assert decoys.survivors() == intact, "down touched another cluster's traces"

    cluster_cli("up")
    assert decoys.survivors() == intact, "up touched another cluster's traces"
    assert node.node_ready(kubectl, cluster.layout.node_name)
    # The images went with the state; put busybox back for anything that runs after.
    image_import.import_archive(testimages.busybox_archive())
    kubectl.create_namespace(ns)
    kubectl("run", "again", "-n", ns, f"--image={busybox_image}", "--image-pull-policy=IfNotPresent", "--", "sleep", "3600")
    kubectl("wait", "pod/again", "-n", ns, "--for=condition=Ready", "--timeout=90s", timeout=100)
    kubectl("delete", "namespace", ns, "--wait=false")


def test_a_component_can_be_taken_away_and_brought_back(request, cluster, kubectl):
    from e2e.cluster import configs, control, paths, processes

    if cluster.backend != "local":
        pytest.skip(f"stopping a component is the local cluster's, not --cluster={cluster.backend}'s")
    if not (os.environ.get("CI") or request.config.getoption("--with-restart")):
        pytest.skip("takes the shared local cluster's API server away; enable with --with-restart (CI runs it)")
    run = configs.StatePaths(paths.state_dir()).run
    before = processes.running_pid("kube-apiserver", run)
    stopped = control.stop("kube-apiserver")
    try:
        # It ends its open watches and exits by itself (configs.apiserver_command), rather
        # than waiting on them until the harness's SIGKILL.
        assert "stopped kube-apiserver (exited on SIGTERM" in stopped, stopped
        assert processes.running_pid("kube-apiserver", run) is None
        assert kubectl("get", "namespaces", check=False, timeout=15).returncode != 0
    finally:
        control.start("kube-apiserver")
    after = processes.running_pid("kube-apiserver", run)
    assert after is not None and after != before
    assert kubectl("get", "namespaces", timeout=30).returncode == 0
