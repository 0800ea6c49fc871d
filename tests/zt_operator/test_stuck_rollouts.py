"""Review finding: a stuck rollout of a live relay is reported with the pods' reason.

``kubectl patch ztr edge --type=merge -p '{"spec":{"image":"typo"}}'`` on a relay with all
its pods ready: the surge pod can't pull, the old pods stay ready (``maxUnavailable: 0``),
so ``readyReplicas == spec.replicas`` and the pods are never listed. The relay shows
``RollingOut`` until the progress deadline (600 s), not ``ImagePullBackOff``.
"""

from __future__ import annotations

from tests.zt_operator.conftest import IMAGE, relay_body
from tests.zt_operator.test_reconcile import FakeAccess, conditions, run
from zt_operator import builders

STUCK_POD = {
    "metadata": {"name": "edge-7d9c-x1"},
    "status": {"containerStatuses": [{"name": "relay", "state": {"waiting": {
        "reason": "ImagePullBackOff", "message": "Back-off pulling image \"typo\""}}}]},
}


class PodsAccess(FakeAccess):
    def list_pods(self, namespace, selector):
        self.calls.append(("list", "Pod"))
        return [STUCK_POD]


def test_an_image_typo_on_a_live_relay_is_degraded_with_the_pull_error_not_rolling_out():
    body = relay_body({"image": "typo"})
    live = builders.deployment(body, default_image=IMAGE, default_pull_policy="IfNotPresent")
    live["metadata"]["ownerReferences"][0]["uid"] = body["metadata"]["uid"]
    live["metadata"]["generation"] = 5
    # Two old pods ready, one surge pod of the new template stuck on its image.
    live["status"] = {"observedGeneration": 5, "replicas": 3, "updatedReplicas": 1, "readyReplicas": 2,
                      "availableReplicas": 2, "unavailableReplicas": 1,
                      "conditions": [{"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"}]}
    access = PodsAccess({"Deployment": live})
    outcome = run(body, access)
    assert conditions(outcome)["Degraded"] == ("True", "ImagePullBackOff")
    # ... and it is looked at again, since a pod's state changes no watched child.
    assert outcome.recheck_seconds is not None
