"""Spec checks: the CRD's CEL rules (read here; the real API server runs them in
e2e/test_operator.py), and the one check CEL can't make."""

from __future__ import annotations

import pytest

from zt_operator import crd, validation

SCHEMA = crd.packaged()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
SPEC = SCHEMA["properties"]["spec"]["properties"]


def rules(schema: dict) -> str:
    return " ".join(rule["rule"] for rule in schema.get("x-kubernetes-validations") or [])


def test_a_default_spec_is_valid():
    assert validation.validate({}) == []
    assert validation.validate(None) == []


@pytest.mark.parametrize("path", [
    ("relay", "allowDestinations"), ("relay", "denyDestinations"), ("service", "loadBalancerSourceRanges")])
def test_cidr_lists_are_checked_by_cel_with_no_host_bits(path):
    items = SPEC[path[0]]["properties"][path[1]]["items"]
    assert "isCIDR(self)" in rules(items) and "cidr(self).masked()" in rules(items)
    assert items["maxLength"] <= 43  # keeps the rule's cost estimate within the API server's budget


@pytest.mark.parametrize("path", [("relay", "legacyTarget"), ("fallback", "address")])
def test_host_port_endpoints_are_checked_by_cel(path):
    field = SPEC[path[0]]["properties"][path[1]]
    assert "65535" in rules(field) and "lastIndexOf(':')" in rules(field)
    assert "HOST:PORT" in field["x-kubernetes-validations"][0]["message"]


def test_the_otlp_endpoint_is_an_http_url_checked_by_cel():
    field = SPEC["telemetry"]["properties"]["otlpEndpoint"]
    assert "isURL(self)" in rules(field) and "['http', 'https']" in rules(field)


def test_a_fallback_to_the_relays_own_service_without_a_namespace_is_refused_by_cel_at_the_root():
    (rule,) = SCHEMA["x-kubernetes-validations"]
    assert "self.spec.fallback.service != self.metadata.name" in rule["rule"]
    assert rule["fieldPath"] == ".spec.fallback.service"


@pytest.mark.parametrize("fallback, errors", [
    ({"service": "edge", "port": 443}, 1),
    ({"service": "edge", "namespace": "relays", "port": 443}, 1),
    ({"service": "edge", "namespace": "site", "port": 443}, 0),  # another namespace's Service
    ({"service": "site", "port": 443}, 0),
    ({"address": "edge:443"}, 0),
])
def test_a_fallback_to_the_relays_own_service_is_refused_naming_the_field(fallback, errors):
    found = validation.validate({"fallback": fallback}, "edge", "relays")
    assert len(found) == errors
    assert all(e.startswith("spec.fallback.service: 'edge' is this relay's own Service") for e in found)


def test_every_rule_at_the_root_ratchets_itself():
    """The API server ratchets a rule only while its node is unchanged; the root changes
    with every label and status write. A root rule without oldSelf would make a relay
    stored before the rule existed unwritable (e2e: test_a_relay_stored_before_a_cel_rule_...)."""
    for rule in SCHEMA["x-kubernetes-validations"]:
        assert rule.get("optionalOldSelf") is True and "oldSelf.hasValue()" in rule["rule"], rule["rule"]


@pytest.mark.parametrize("field", ["allowDestinations", "denyDestinations"])
def test_relay_destinations_take_a_bare_address_as_the_relay_does(field):
    # relay.filters.parse_cidr reads "198.18.0.5" as one host, and the operator's checks
    # before CEL accepted it; a Service's loadBalancerSourceRanges does not (CIDRs only).
    assert "isIP(self)" in rules(SPEC["relay"]["properties"][field]["items"])
    assert "isIP(self)" not in rules(SPEC["service"]["properties"]["loadBalancerSourceRanges"]["items"])


# The relay refuses IPv4-mapped ranges (inside ::ffff:0:0/96) in its CIDR flags at start
# (notes/relay3.md): it matches IPv4 destinations as IPv4, so a mapped allow would be dead
# and a mapped deny a silent no-op. The CRD's isCIDR/isIP refuse them too; a relay stored
# before the CEL rules (ratcheted) would give pods that never start, so the operator
# refuses it first and names the field and the IPv4 range to write.
@pytest.mark.parametrize("field", ["allowDestinations", "denyDestinations"])
@pytest.mark.parametrize("value, ipv4", [
    ("::ffff:10.0.0.0/104", "10.0.0.0/8"), ("::ffff:0:0/96", "0.0.0.0/0"),
    ("0:0:0:0:0:ffff:c612:0/127", "198.18.0.0/31"), ("::ffff:198.18.0.5", "198.18.0.5"),
])
def test_an_ipv4_mapped_destination_is_refused_naming_the_field_and_its_ipv4_range(field, value, ipv4):
    found = validation.validate({"relay": {field: ["2001:db8::/32", value]}}, "edge", "relays")
    assert len(found) == 1
    assert found[0].startswith(f"spec.relay.{field}[1]: ") and "IPv4-mapped" in found[0] and f"write {ipv4}" in found[0]


@pytest.mark.parametrize("value", ["::/0", "::/8", "2001:db8::/32", "10.0.0.0/8", "::ffff:0:0:0/96", "64:ff9b::/96"])
def test_ipv6_ranges_around_the_mapped_block_are_not_refused(value):
    assert validation.validate({"relay": {"allowDestinations": [value], "denyDestinations": [value]}}) == []


@pytest.mark.parametrize("field", ["allowDestinations", "denyDestinations"])
def test_the_crd_says_why_an_ipv4_mapped_range_is_refused(field):
    (rule,) = SPEC["relay"]["properties"][field]["items"]["x-kubernetes-validations"]
    assert "IPv4-mapped" in rule["messageExpression"] and "ffff" in rule["messageExpression"]
