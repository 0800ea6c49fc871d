"""Review finding: a fallback Service the operator may not read.

With ``operator.watchNamespaces`` the operator has Roles only in the watched namespaces, yet
``spec.fallback.namespace`` may name another (an ingress controller's). Reading that
Service is then Forbidden on every pass: the relay is Degraded for ever, retried with
backoff for ever, and its NetworkPolicy is never created (the pass drops it "to keep it as
it is"), so a relay that asked for ``networkPolicy.enabled`` runs with no policy at all:
its metrics port open to every pod."""

from __future__ import annotations

from tests.zt_operator.conftest import relay_body
from tests.zt_operator.test_reconcile import FakeAccess, run
from zt_operator import kube

FORBIDDEN = kube.KubeError('reading Service ingress-nginx-controller: 403 services "ingress-nginx-controller" is '
                           'forbidden', "Forbidden", 403)


class NamespacedAccess(FakeAccess):
    """Roles only in the relay's namespace."""

    def live(self, kind, namespace, name, cached_only=False):
        if namespace != "relays":
            self.calls.append(("get", kind, cached_only))
            raise FORBIDDEN
        return super().live(kind, namespace, name, cached_only)


def test_a_new_relay_whose_fallback_service_is_unreadable_still_gets_its_network_policy():
    spec = {"networkPolicy": {"enabled": True},
            "fallback": {"service": "ingress-nginx-controller", "namespace": "ingress-nginx", "port": 443}}
    access = NamespacedAccess()
    run(relay_body(spec), access)
    assert ("apply", "NetworkPolicy", "zt-relay-operator") in access.calls


def test_an_unreadable_fallback_service_is_degraded_with_its_own_reason_and_the_backend_closed():
    from tests.zt_operator.test_reconcile import conditions

    spec = {"networkPolicy": {"enabled": True},
            "fallback": {"service": "ingress-nginx-controller", "namespace": "ingress-nginx", "port": 443}}
    access = NamespacedAccess()
    outcome = run(relay_body(spec), access)
    assert conditions(outcome)["Degraded"] == ("True", "FallbackServiceForbidden")
    policy = access.objects["NetworkPolicy"]
    assert all(rule.get("ports") != [{"protocol": "TCP", "port": 443}] for rule in policy["spec"]["egress"])
