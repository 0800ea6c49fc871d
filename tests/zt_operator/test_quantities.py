"""Review finding: a quantity the API server canonicalises makes every pass re-apply.

``resources: {requests: {cpu: "0.5"}, limits: {memory: "1.5Gi"}}`` is valid in the CRD;
the API server stores the Deployment's container resources canonically (``500m``,
``1536Mi``; checked on a kube-apiserver v1.37.2), so ``plan.up_to_date`` never matches and
every pass of that relay (each resync, each child event) sends a Deployment apply: the
"a steady relay costs no API request" of the README does not hold."""

from __future__ import annotations

import copy

from tests.zt_operator.conftest import relay_body
from tests.zt_operator.test_reconcile import SETTINGS, FakeAccess, run
from zt_operator import reconcile

SPEC = {"resources": {"requests": {"cpu": "0.5", "memory": "1Gi"}, "limits": {"memory": "1.5Gi"}}}


def test_resources_written_in_another_notation_cost_no_apply_once_applied():
    body = relay_body(SPEC)
    built = reconcile._manifests(body, SETTINGS, [], None)
    live = {kind: copy.deepcopy(m) for kind, m in built.items() if m is not None}
    # As the API server returns it.
    live["Deployment"]["spec"]["template"]["spec"]["containers"][0]["resources"] = {
        "requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "1536Mi"}}
    access = FakeAccess(live)
    run(body, access)
    assert [c for c in access.calls if c[0] == "apply"] == []
