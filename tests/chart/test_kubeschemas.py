"""The offline schema converter (pure functions, no files)."""

from __future__ import annotations

from tests.chart import kubeschemas


def test_file_names_follow_kubeconforms_kind_suffix_convention():
    assert kubeschemas.schema_filename("", "v1", "Service") == "service-v1.json"
    assert kubeschemas.schema_filename("apps", "v1", "Deployment") == "deployment-apps-v1.json"
    assert kubeschemas.schema_filename("rbac.authorization.k8s.io", "v1", "ClusterRole") == "clusterrole-rbac-v1.json"


def test_strict_schemas_forbid_unknown_keys_but_keep_maps_and_preserved_fields():
    schema = {
        "type": "object",
        "properties": {
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "raw": {"type": "object", "properties": {"a": {}}, "x-kubernetes-preserve-unknown-fields": True},
            "port": {"x-kubernetes-int-or-string": True},
            "props": {"type": "object", "properties": {"oneOf": {"type": "array"}, "x-kubernetes-int-or-string": {"type": "boolean"}}},
        },
    }
    strict = kubeschemas.make_strict(schema)
    assert strict["additionalProperties"] is False
    assert strict["properties"]["labels"]["additionalProperties"] == {"type": "string"}
    assert "additionalProperties" not in strict["properties"]["raw"]
    assert strict["properties"]["port"]["oneOf"] == [{"type": "string"}, {"type": "integer"}]
    # Properties named like keywords are properties, not keywords.
    assert strict["properties"]["props"]["properties"]["oneOf"] == {"type": "array"}
    assert "additionalProperties" not in schema  # the input is left alone


def test_builtin_schemas_cover_each_group_version_kind_with_shared_definitions():
    swagger = {"definitions": {
        "io.k8s.api.core.v1.Service": {
            "type": "object",
            "properties": {"spec": {"$ref": "#/definitions/io.k8s.api.core.v1.ServiceSpec"}},
            "x-kubernetes-group-version-kind": [{"group": "", "kind": "Service", "version": "v1"}],
        },
        "io.k8s.api.core.v1.ServiceSpec": {"type": "object", "properties": {"type": {"type": "string"}}},
    }}
    (name, schema), = kubeschemas.builtin_schemas(swagger)
    assert name == "service-v1.json"
    assert schema["$ref"] == "#/definitions/io.k8s.api.core.v1.Service"
    assert schema["definitions"]["io.k8s.api.core.v1.ServiceSpec"]["additionalProperties"] is False
    assert "oneOf" in schema["definitions"]["io.k8s.apimachinery.pkg.util.intstr.IntOrString"]


def test_crd_schemas_skip_unserved_versions_and_add_the_standard_fields():
    crd = {"spec": {"group": "relay.zt-relay.dev", "names": {"kind": "ZeroTierRelay"}, "versions": [
        {"name": "v1alpha1", "served": True, "schema": {"openAPIV3Schema": {
            "type": "object", "properties": {"spec": {"type": "object", "properties": {"replicas": {"type": "integer"}}}}}}},
        {"name": "v0", "served": False, "schema": {"openAPIV3Schema": {"type": "object"}}},
    ]}}
    (name, schema), = kubeschemas.crd_schemas(crd)
    assert name == "zerotierrelay-relay-v1alpha1.json"
    assert set(schema["properties"]) == {"apiVersion", "kind", "metadata", "spec"}
    assert schema["properties"]["spec"]["additionalProperties"] is False
