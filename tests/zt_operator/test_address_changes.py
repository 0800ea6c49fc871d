"""Review findings: the client address must never change silently.

Clients hard-code ``tcpFallbackRelay``; any change of ``status.address`` must be loud
(``previousAddress``, ``AddressStable=False``, a Warning Event), and the address must not
change when the load balancer did not.
"""

from __future__ import annotations

from tests.zt_operator.conftest import relay_body
from zt_operator import status

from tests.zt_operator.test_status import conditions, deployment, lb_service


def test_an_address_change_through_a_gap_without_address_is_still_an_address_change():
    # The Service is deleted (by someone, or a cloud LB re-provisioned) and recreated by the
    # operator: for a few passes it has no ingress yet, then a new IP. Clients still hold
    # the first address.
    first = status.observe(relay_body(), deployment(), lb_service(ip="198.51.100.7"))
    gap_wanted = status.observe(relay_body(), deployment(), lb_service(), previous=first)
    # What the relay's status becomes after the merge patch of ``changes`` (None removes).
    gap = {**first, **status.changes(first, gap_wanted)}
    gap = {k: v for k, v in gap.items() if v is not None}
    after = status.observe(relay_body(), deployment(), lb_service(ip="198.51.100.8"), previous=gap)
    assert after["previousAddress"] == "198.51.100.7"
    assert conditions(after)["AddressStable"] == ("False", "AddressChanged")
    assert ("Warning", "AddressChanged") in [(k, r) for k, r, _ in status.events(gap, after)]


def test_a_hostname_load_balancer_whose_dns_answers_rotate_keeps_its_address():
    # Cloud load-balancer hostnames (one A record per zone) answer in rotating order; the
    # load balancer did not change, so clients' tcpFallbackRelay must not either.
    service = lb_service(hostname="lb-1.example.net")
    first = status.observe(relay_body(), deployment(), service,
                           resolved={"lb-1.example.net": ["198.51.100.9", "198.51.100.10"]})
    again = status.observe(relay_body(), deployment(), service, previous=first,
                           resolved={"lb-1.example.net": ["198.51.100.10", "198.51.100.9"]})
    assert again["address"] == first["address"]
    assert [r for _, r, _ in status.events(first, again)] == []


def test_a_rotating_hostname_does_not_make_every_pass_write_status_and_warn():
    # Every status write comes back as a relay watch event, which requests the next pass:
    # if each pass sees the answers in a new order, the operator writes status and posts
    # an AddressChanged Warning in a loop, as fast as DNS answers.
    from tests.zt_operator.test_reconcile import FakeAccess, run

    answers = [["198.51.100.9", "198.51.100.10"], ["198.51.100.10", "198.51.100.9"]]

    class RotatingDNS(FakeAccess):
        calls_made = 0

        def resolve(self, hostname):
            RotatingDNS.calls_made += 1
            return answers[RotatingDNS.calls_made % 2]

    access = RotatingDNS()
    run(relay_body(), access)
    access.objects["Deployment"]["status"] = {"replicas": 2, "readyReplicas": 2, "updatedReplicas": 2}
    access.objects["Service"]["status"] = {"loadBalancer": {"ingress": [{"hostname": "lb-1.example.net"}]}}
    current: dict = {}
    warnings = 0
    for _ in range(6):  # six passes, each started by the previous pass's status write
        outcome = run(relay_body(**current), access)
        current = {k: v for k, v in {**current, **outcome.status_patch}.items() if v is not None}
        warnings += sum(1 for kind, reason, _ in outcome.events if reason == "AddressChanged")
    assert warnings == 0


def test_a_load_balancer_hostname_that_does_not_resolve_yet_is_looked_up_again_soon():
    # A cloud load balancer's DNS name often resolves a minute or more after the Service gets
    # it. The pass that sees the hostname finds no IP (Ready=False AwaitingAddress, no
    # clientConfig), and a ready relay is otherwise looked at again only at its resync, up to
    # 300 s later: users waited minutes for a local.conf line that was already there.
    from tests.zt_operator.test_reconcile import FakeAccess, conditions, run

    class LateDNS(FakeAccess):
        answer: list[str] = []

        def resolve(self, hostname):
            return list(self.answer)

    access = LateDNS()
    run(relay_body(), access)
    access.objects["Deployment"]["status"] = {"replicas": 2, "readyReplicas": 2, "updatedReplicas": 2}
    access.objects["Service"]["status"] = {"loadBalancer": {"ingress": [{"hostname": "lb-1.example.net"}]}}
    waiting = run(relay_body(), access)
    assert conditions(waiting)["Ready"] == ("False", "AwaitingAddress")
    assert waiting.recheck_seconds is not None and waiting.recheck_seconds <= 10, waiting.recheck_seconds
    LateDNS.answer = ["198.51.100.9"]
    resolved = run(relay_body(), access)
    assert conditions(resolved)["Ready"] == ("True", "Available")
    assert resolved.recheck_seconds is None  # resolved and ready: nothing to look at before the resync
