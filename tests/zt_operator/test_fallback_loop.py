"""Review finding: a fallback that points back at the relay itself.

``spec.fallback.service`` naming the relay's own Service (same name, same namespace: the
Service the operator creates) makes every non-ZeroTier connection hop relay -> relay ->
... until ``fallback.maxConnections`` (10,000 per pod) or the file descriptors run out:
one HTTP request is enough, and the real site traffic is then refused. Neither the CRD,
``validation`` nor the relay refuses it."""

from __future__ import annotations

from tests.zt_operator.conftest import relay_body
from tests.zt_operator.test_reconcile import FakeAccess, conditions, run


def test_a_fallback_to_the_relays_own_service_is_an_invalid_spec():
    body = relay_body({"fallback": {"service": "edge", "port": 443}})  # the relay is "edge" in "relays"
    outcome = run(body, FakeAccess())
    assert outcome.result == "invalid"
    assert conditions(outcome)["Degraded"] == ("True", "InvalidSpec")
