"""The operator upgrades an older CRD at start, and never downgrades one."""

from __future__ import annotations

from zt_operator import crd


def with_version(version: str | None) -> dict:
    meta = {"name": "zerotierrelays.relay.zt-relay.dev"}
    if version is not None:
        meta["annotations"] = {crd.VERSION_ANNOTATION: version}
    return {"metadata": meta}


def test_the_packaged_crd_is_the_charts_and_carries_a_schema_version():
    ours = crd.packaged()
    assert ours["metadata"]["name"] == "zerotierrelays.relay.zt-relay.dev"
    assert crd.schema_version(ours) >= 2


def test_an_older_or_unversioned_crd_is_upgraded_a_newer_one_is_not():
    ours = crd.packaged()
    version = crd.schema_version(ours)
    assert crd.needs_upgrade(with_version(None), ours)
    assert crd.needs_upgrade(with_version(str(version - 1)), ours)
    assert not crd.needs_upgrade(with_version(str(version)), ours)
    assert not crd.needs_upgrade(with_version(str(version + 1)), ours)
    assert not crd.needs_upgrade(None, ours)


def test_ensure_applies_only_when_needed():
    applied = []
    assert "upgraded" in crd.ensure(lambda: with_version("1"), applied.append)
    assert applied == [crd.packaged()]
    applied.clear()
    crd.ensure(lambda: with_version("999"), applied.append)
    crd.ensure(lambda: None, applied.append)
    assert applied == []


# Review: the schema a CRD version stands for, as first shipped. A cluster whose CRD says
# version N is never upgraded by an operator whose CRD also says N, so the CRD's content
# must never change without a bump. Version 2 shipped (ac4205f) without spec.fallback;
# the CRD now carries spec.fallback and still says 2: a cluster upgraded at ac4205f keeps
# the old schema and the API server silently prunes every relay's spec.fallback.
# The registry lives in crd.SHIPPED_FINGERPRINTS; version 2's entry is the reviewer's
# fingerprint of the CRD as shipped at ac4205f.


def test_the_crd_schema_never_changes_without_a_schema_version_bump():
    ours = crd.packaged()
    version = crd.schema_version(ours)
    assert crd.SHIPPED_FINGERPRINTS[2] == "0774fc37b45f1939"
    assert version in crd.SHIPPED_FINGERPRINTS, (
        f"schema-version {version} has no recorded fingerprint: add {crd.fingerprint(ours)!r} to crd.SHIPPED_FINGERPRINTS")
    assert crd.SHIPPED_FINGERPRINTS[version] == crd.fingerprint(ours), (
        f"the CRD changed but still says schema-version {version}: bump it (and record the new fingerprint)")


def test_the_fallback_field_needs_version_3_or_later():
    ours = crd.packaged()
    (v,) = ours["spec"]["versions"]
    assert "fallback" in v["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert crd.schema_version(ours) >= 3
