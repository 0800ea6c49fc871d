"""The CRD file agrees with the operator: defaults, relay fields, scale and printer columns."""

from __future__ import annotations

from pathlib import Path

import yaml

from relay import cli
from zt_operator import GROUP, KIND, PLURAL, VERSION, builders, crd

CRD_FILE = Path(__file__).resolve().parents[2] / "charts" / "zt-relay" / "crds" / "zerotierrelays.yaml"
CRD = yaml.load(CRD_FILE.read_text(), Loader=crd.SAFE_LOADER)  # libyaml where PyYAML has it: ~10x less CPU
(VERSION_ENTRY,) = CRD["spec"]["versions"]
SPEC_SCHEMA = VERSION_ENTRY["schema"]["openAPIV3Schema"]["properties"]["spec"]


def schema_defaults(schema: dict) -> object:
    """What structural defaulting yields for an empty object of ``schema``."""
    if "default" in schema and schema.get("type") != "object":
        return schema["default"]
    if schema.get("type") == "object" and "properties" in schema:
        out = {}
        for key, sub in schema["properties"].items():
            if "default" in sub:
                value = sub["default"]
                out[key] = {**schema_defaults(sub), **value} if isinstance(value, dict) and "properties" in sub else value
        return out
    return schema.get("default")


def test_the_crd_names_match_the_operator():
    assert CRD["metadata"]["name"] == f"{PLURAL}.{GROUP}"
    assert CRD["spec"]["group"] == GROUP
    assert CRD["spec"]["names"]["kind"] == KIND
    assert CRD["spec"]["names"]["shortNames"] == ["ztr"]
    assert CRD["spec"]["scope"] == "Namespaced"
    assert VERSION_ENTRY["name"] == VERSION


def test_the_operators_defaults_are_the_schemas():
    assert schema_defaults(SPEC_SCHEMA) == builders.DEFAULTS
    assert builders.DEFAULTS["replicas"] == 2 and builders.DEFAULTS["service"]["port"] == 443
    assert builders.DEFAULTS["relay"] == {"drainSeconds": 30, "logFormat": "json"}


def test_every_relay_field_in_the_schema_is_mapped_and_the_relay_knows_each_variable():
    schema_fields = set(SPEC_SCHEMA["properties"]["relay"]["properties"])
    assert schema_fields == set(builders.RELAY_ENV)
    relay_variables = {option.env for option in cli.OPTIONS}
    assert {variable for variable, _ in builders.RELAY_ENV.values()} <= relay_variables


def test_the_scale_subresource_reads_spec_and_status_replicas_and_the_selector():
    assert VERSION_ENTRY["subresources"] == {
        "status": {},
        "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas",
                  "labelSelectorPath": ".status.selector"},
    }


def test_kubectl_get_shows_ready_replicas_address_and_age():
    columns = [c["name"] for c in VERSION_ENTRY["additionalPrinterColumns"] if not c.get("priority")]
    assert columns == ["Ready", "Replicas", "Address", "Age"]


def test_the_schema_bounds_autoscaling_with_a_cel_rule():
    rules = SPEC_SCHEMA["properties"]["autoscaling"]["x-kubernetes-validations"]
    assert [r["message"] for r in rules] == ["minReplicas must not exceed maxReplicas"]
    assert "self.minReplicas <= self.maxReplicas" in rules[0]["rule"]


def test_every_status_field_the_operator_writes_is_in_the_schema():
    # A field missing here is pruned silently by the API server.
    from tests.zt_operator.conftest import relay_body
    from zt_operator import status as relay_status

    written = relay_status.observe(relay_body(), None, None)
    schema = VERSION_ENTRY["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert set(written) - {"conditions"} <= set(schema)
    assert set(schema["conditions"]["items"]["properties"]) >= set(written["conditions"][0]) | {"lastTransitionTime"}


def test_the_service_schema_has_every_field_the_builder_reads():
    service = SPEC_SCHEMA["properties"]["service"]["properties"]
    assert {"loadBalancerIP", "annotations", "loadBalancerSourceRanges", "loadBalancerClass"} <= set(service)


def test_every_fallback_setting_in_the_schema_is_mapped_with_the_relays_bounds():
    fallback = SPEC_SCHEMA["properties"]["fallback"]["properties"]
    backend = {"service", "namespace", "port", "address"}  # the --fallback address itself
    assert set(fallback) - backend == set(builders.FALLBACK_ENV)
    from relay import backend_pool

    preconnect = fallback["preconnect"]
    assert (preconnect["type"], preconnect["minimum"], preconnect["maximum"]) == ("integer", 0, backend_pool.MAX_SIZE)
    assert "default" not in preconnect  # absent: the relay's default (off), no variable, no pod roll


def test_the_preconnect_description_says_the_pool_pauses_as_the_relay_does():
    # The pool pauses (for 5 minutes, doubling up to an hour: relay/preconnect.py), it no
    # longer stops for good; kubectl explain and the operator README say what the relay does.
    from relay import preconnect

    text = " ".join(SPEC_SCHEMA["properties"]["fallback"]["properties"]["preconnect"]["description"].split())
    assert preconnect.PAUSE_MIN < preconnect.PAUSE_MAX  # a pause that comes back
    assert "pauses the pool" in text and "stops" not in text, text
    assert "closes idle connections" in text, text  # the other trigger of a pause
