"""Hand the next test a whole cluster after a test took a component away.

client-go's reflectors (kube-controller-manager, the scheduler, the kubelet, kube-proxy, kube-router,
CoreDNS, metrics-server) retry a failed list/watch with a backoff of 800 ms doubling to 30 s,
with jitter of up to as much again (client-go tools/cache/reflector.go; no component has a
flag for it). A restarted API server answers its first requests with 403 Forbidden: it serves
a moment before its RBAC caches are synced (measured: all of them but CoreDNS and the kubelet
logged "Failed to watch ... forbidden" 2 s before /readyz answered). After a 30 s outage each
of them waits out its capped backoff, 30 to 60 s, before it lists again: kube-proxy kept
the `kubernetes` Service without endpoints for 40 s after /readyz (the API server had removed
its own address from it when it stopped), and a new namespace had no ServiceAccount for as
long (one CI run failed so). `restart_api_watchers` restarts them instead: a started
component lists at once. `wait_serves_new_workloads` proves the cluster whole again: a new
namespace gets its ServiceAccount and a new Deployment's pod becomes ready.
"""

import subprocess
import time
import uuid

from e2e import workloads
from e2e.cluster.kubectl import Kubectl, wait_for

API_WATCHERS = (
    "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kube-router", "coredns", "metrics-server",
)
"""The host components that list and watch the API through client-go (in `up`'s order). The
kubelet logged no refusal but waits out the same backoff from its refused connections during
the outage (measured: a new pod ran 27 s after the others' restart); restarting it leaves
running containers alone (their readiness probes run again at once). Not the LB stand-in:
it retries every second (e2e.cluster.lb)."""


def restart_api_watchers() -> float:
    """After the API server's return (`control.stopped` exited): restart the API watchers so that
    none waits out client-go's backoff. Seconds taken. One `e2e.cluster restart` stops them all at
    once and starts each again in `up`'s order (`startup.restart`: one that was not running is
    started too, and one that fails is named after all the others were started)."""
    from e2e.cluster import control

    start = time.monotonic()
    try:
        control.restart(API_WATCHERS)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:  # control._cli's failures
        raise RuntimeError(f"restarting the cluster's API watchers:\n{exc}") from None
    return time.monotonic() - start


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
