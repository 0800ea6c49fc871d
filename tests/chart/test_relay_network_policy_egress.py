"""Review finding: the chart's relay NetworkPolicy (``networkPolicy.enabled``) lets relay
pods send only UDP 1025-65535 to public ranges. A relay with ``spec.telemetry`` or
``spec.fallback`` (issue 13) then can't resolve names (no port 53), can't reach the OTLP
endpoint, and can't open TCP to its fallback backend: the site behind the relay breaks.
Issue 14: "The relay NetworkPolicy lets DNS and the OTLP endpoint through when they are
configured"."""

from __future__ import annotations

RELAY_WITH_SITE = (
    "networkPolicy.enabled=true",
    "defaultRelay.enabled=true",
    "defaultRelay.spec.fallback.service=ingress-nginx-controller",
    "defaultRelay.spec.fallback.namespace=ingress-nginx",
    "defaultRelay.spec.fallback.port=443",
    "defaultRelay.spec.telemetry.otlpEndpoint=http://otel-collector.monitoring:4318",
)


def _egress_ports(policy: dict) -> set[tuple[str, int]]:
    found = set()
    for rule in policy["spec"].get("egress") or []:
        for port in rule.get("ports") or []:
            first, last = port.get("port"), port.get("endPort", port.get("port"))
            for number in (53, 443, 4318):
                if first is not None and first <= number <= last:
                    found.add((port.get("protocol", "TCP"), number))
    return found


def test_the_charts_relay_policy_lets_dns_otlp_and_the_fallback_backend_through(render):
    docs = render(*RELAY_WITH_SITE, include_crds=False)
    relay = next(d for d in docs if d["kind"] == "ZeroTierRelay")
    assert not (relay["spec"].get("networkPolicy") or {}).get("enabled")  # the chart's policy is the only one
    policy = next(d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"].endswith("-relays"))
    ports = _egress_ports(policy)
    assert {("UDP", 53), ("TCP", 4318), ("TCP", 443)} <= ports, ports
