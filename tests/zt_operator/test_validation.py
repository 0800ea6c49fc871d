"""Spec checks the schema cannot make: each message names its field."""

from __future__ import annotations

import pytest

from zt_operator import validation


def test_a_default_spec_is_valid():
    assert validation.validate({}) == []
    assert validation.validate(None) == []


@pytest.mark.parametrize("spec, message", [
    ({"relay": {"allowDestinations": ["10.0.0.1/8"]}},
     "spec.relay.allowDestinations[0]: '10.0.0.1/8' is not a CIDR range"),
    ({"relay": {"denyDestinations": ["10.0.0.0/8", "nonsense"]}},
     "spec.relay.denyDestinations[1]: 'nonsense' is not a CIDR range"),
    ({"service": {"loadBalancerSourceRanges": ["300.0.0.0/8"]}},
     "spec.service.loadBalancerSourceRanges[0]: '300.0.0.0/8' is not a CIDR range"),
    ({"relay": {"legacyTarget": "192.0.2.7"}},
     "spec.relay.legacyTarget: '192.0.2.7' is not HOST:PORT"),
    ({"relay": {"legacyTarget": "192.0.2.7:70000"}},
     "spec.relay.legacyTarget: '192.0.2.7:70000' is not HOST:PORT"),
    ({"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}},
     "spec.autoscaling: minReplicas (5) must not exceed maxReplicas (2)"),
    ({"autoscaling": {"enabled": True}, "resources": {"limits": {"memory": "1Gi"}}},
     "spec.resources.requests.cpu: required when spec.autoscaling.enabled is true"),
    ({"telemetry": {"otlpEndpoint": "collector:4318"}},
     "spec.telemetry.otlpEndpoint: 'collector:4318' is not an http:// or https:// URL"),
], ids=["host-bits", "not-cidr", "lb-range", "no-port", "bad-port", "min-max", "no-cpu-request", "otlp-url"])
def test_a_bad_field_is_reported_by_name(spec, message):
    (error,) = validation.validate(spec)
    assert error.startswith(message)


def test_all_problems_are_reported_at_once():
    errors = validation.validate({"relay": {"allowDestinations": ["x", "y"], "legacyTarget": "z"}})
    assert len(errors) == 3


def test_valid_values_pass():
    assert validation.validate({
        "relay": {"allowDestinations": ["10.0.0.0/8", "fd00::/8"], "legacyTarget": "[2001:db8::1]:9993"},
        "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 2},
        "telemetry": {"otlpEndpoint": "https://otel.example:4318"},
    }) == []


def test_min_over_max_is_fine_while_autoscaling_is_off():
    assert validation.validate({"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}) == []


@pytest.mark.parametrize("fallback, message", [
    ({"service": "site", "address": "10.0.0.5:443", "port": 443}, "spec.fallback: set either service"),
    ({}, None),
    ({"proxyProtocol": "v1"}, "spec.fallback: set either service"),
    ({"address": "10.0.0.5"}, "spec.fallback.address: '10.0.0.5' is not HOST:PORT"),
    ({"service": "site"}, "spec.fallback.port: required"),
    ({"service": "site", "port": 443}, None),
    ({"address": "site.example:443"}, None),
])
def test_a_fallback_names_one_backend(fallback, message):
    errors = validation.validate({"fallback": fallback})
    if message is None:
        assert errors == []
    else:
        assert len(errors) == 1 and errors[0].startswith(message)
