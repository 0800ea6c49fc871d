"""Hand the next test a whole cluster after a test took a component away.

client-go's reflectors (kube-controller-manager, the scheduler, the kubelet, kube-proxy) retry a
failed list/watch with a backoff of 800 ms doubling to 30 s, with jitter of up to as much again.
After a 30 s API outage each of them relists anywhere up to about a minute after /readyz answers,
independently. A test right after the outage then finds, say, no ServiceAccount in its new
namespace for 30 s (one CI run failed so). A test that stops a component waits for this before it
ends: a new namespace gets its ServiceAccount and a new Deployment's pod becomes ready.
"""

import time
import uuid

from e2e import workloads
from e2e.cluster.kubectl import Kubectl, wait_for


def wait_serves_new_workloads(kubectl: Kubectl, image: str, timeout: float = 180) -> tuple[float, float]:
    """Seconds until a new namespace has its ServiceAccount (the controller manager's namespace
    informer), and until a new Deployment has an available pod (its deployment and replica-set
    controllers, the scheduler, the kubelet). TimeoutError names the step that did not happen."""
    start = time.monotonic()
    deadline = start + timeout
    namespace = f"e2e-recovery-{uuid.uuid4().hex[:6]}"
    try:
        kubectl.create_namespace(namespace, timeout)
        account = time.monotonic() - start
        kubectl.apply(workloads.web_deployment("canary", image), namespace=namespace)
        wait_for(f"Deployment canary available in {namespace}", lambda: kubectl(
            "get", "deployment", "canary", "-n", namespace,
            "-o", "jsonpath={.status.availableReplicas}", check=False).stdout == "1",
            max(1.0, deadline - time.monotonic()))
    finally:
        kubectl("delete", "namespace", namespace, "--wait=false", "--ignore-not-found", check=False)
    return account, time.monotonic() - start
