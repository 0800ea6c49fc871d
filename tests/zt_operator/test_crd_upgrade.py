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
