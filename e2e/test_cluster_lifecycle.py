"""`down` leaves nothing behind and `up` works again afterwards (local backend only).

Marked `restarts_cluster`, so it runs after every other test of the session. It stops the
cluster other pytest sessions on the machine may be using, so outside CI it runs only with
--with-restart (CI sets CI=true and runs it).
"""

import os
import uuid

import pytest

from e2e.cluster import image_import, node, testimages
from e2e.cluster.inventory import leftovers

pytestmark = pytest.mark.restarts_cluster


def test_down_leaves_nothing_behind_and_up_works_again(request, cluster, cluster_cli, kubectl, busybox_image):
    if cluster.backend != "local":
        pytest.skip(f"down/up is the local cluster's lifecycle, not --cluster={cluster.backend}'s")
    if not (os.environ.get("CI") or request.config.getoption("--with-restart")):
        pytest.skip("restarts the shared local cluster under any other session; enable with --with-restart (CI runs it)")
    ns = f"e2e-lifecycle-{uuid.uuid4().hex[:6]}"
    # Something running with a network namespace, IPAM lease, mounts and logs.
    kubectl("create", "namespace", ns)
    kubectl("run", "sleeper", "-n", ns, f"--image={busybox_image}", "--image-pull-policy=IfNotPresent", "--", "sleep", "3600")
    kubectl("wait", "pod/sleeper", "-n", ns, "--for=condition=Ready", "--timeout=90s", timeout=100)

    assert "down: nothing left" in cluster_cli("down")
    assert leftovers(cluster.layout) == {}, "left behind (or another session ran `up` meanwhile)"

    cluster_cli("up")
    assert node.node_ready(kubectl, cluster.layout.node_name)
    # The images went with the state; put busybox back for anything that runs after.
    image_import.import_archive(testimages.busybox_archive())
    kubectl("create", "namespace", ns)
    kubectl("run", "again", "-n", ns, f"--image={busybox_image}", "--image-pull-policy=IfNotPresent", "--", "sleep", "3600")
    kubectl("wait", "pod/again", "-n", ns, "--for=condition=Ready", "--timeout=90s", timeout=100)
    kubectl("delete", "namespace", ns, "--wait=false")
