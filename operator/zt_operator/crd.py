"""The operator brings the ZeroTierRelay CRD up to date at start.

Helm installs ``crds/`` once and never updates it, so after ``helm upgrade`` the cluster
would keep an old schema, and the API server would silently prune new fields from every
relay. The operator ships the same CRD file (``crd.yaml``, a link to the chart's) and
applies it at start when the cluster's ``schema-version`` annotation is older. It never
downgrades: an older operator started against a newer CRD leaves it alone (pruning fields
a newer spec uses would lose data).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from importlib import resources
from typing import Any

import yaml

from zt_operator import GROUP

VERSION_ANNOTATION = f"{GROUP}/schema-version"
log = logging.getLogger(__name__)

# The CRD content each schema version stands for, as shipped (fingerprint of ``spec``).
# A cluster at version N is never upgraded by an operator whose CRD also says N, so any
# change to the CRD needs a bump and a new entry here (a test checks the packaged CRD
# against its version's entry). 2 shipped without spec.fallback; 3 added it; 4 added status.lastAddress.
# 5 moved validation to CEL (CIDRs, HOST:PORT, OTLP URL, fallback to the own Service).
# 6: the root rule (own Service) ratchets itself, so relays stored under 4 stay writable;
# relay destinations take a bare address again (one host, as the relay and the operator before 5 read it).
# 7: the relay destinations' message says why an IPv4-mapped range is refused (messageExpression; rules unchanged).
# 8: spec.fallback.preconnect (--fallback-preconnect; no default: absent keeps the pod template).
# 9: preconnect's description: a backend that speaks first pauses the pool (it stopped it for good before).
SHIPPED_FINGERPRINTS = {2: "0774fc37b45f1939", 3: "ce3b9069adf7fc10", 4: "3b97df204a4592dc", 5: "7eef0a5bcbcb3c4c",
                        6: "0ed98c7ad85b2dc8", 7: "91f49c4049b054d9", 8: "019d9d6de681b8ff", 9: "53352b06a2b749df"}


# libyaml's safe loader where PyYAML has it (its wheels do): the same documents, ~10x less CPU
# (the CRD took 49 ms with the pure-Python one; it is read at every import of builders).
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def packaged() -> dict[str, Any]:
    """The CRD this operator was built with."""
    return yaml.load(resources.files("zt_operator").joinpath("crd.yaml").read_text(), Loader=SAFE_LOADER)


def _schema_defaults(schema: Mapping[str, Any]) -> Any:
    """What structural defaulting yields for an empty object of ``schema``."""
    if "default" in schema and schema.get("type") != "object":
        return schema["default"]
    if schema.get("type") == "object" and "properties" in schema:
        out = {}
        for key, sub in schema["properties"].items():
            if "default" in sub:
                value = sub["default"]
                nested = _schema_defaults(sub)
                out[key] = {**nested, **value} if isinstance(value, dict) and "properties" in sub else value
        return out
    return schema.get("default")


def spec_defaults(crd: Mapping[str, Any]) -> dict[str, Any]:
    """The defaults the API server gives an empty ``spec`` (read from the CRD, so the
    operator never keeps a second copy)."""
    (version,) = crd["spec"]["versions"]
    return _schema_defaults(version["schema"]["openAPIV3Schema"]["properties"]["spec"])


def fingerprint(crd: Mapping[str, Any]) -> str:
    """A short, stable digest of the CRD's ``spec`` (what the API server stores)."""
    return hashlib.sha256(json.dumps(crd["spec"], sort_keys=True).encode()).hexdigest()[:16]


def schema_version(crd: Mapping[str, Any] | None) -> int:
    """The CRD's schema version (0 when unknown: a CRD from before the annotation)."""
    raw = (((crd or {}).get("metadata") or {}).get("annotations") or {}).get(VERSION_ANNOTATION, "0")
    try:
        return int(raw)
    except ValueError:
        return 0


def needs_upgrade(live: Mapping[str, Any] | None, ours: Mapping[str, Any]) -> bool:
    """Whether to apply ``ours``: the live CRD exists and is older (install is Helm's job)."""
    return live is not None and schema_version(live) < schema_version(ours)


def ensure(get, apply) -> str:
    """Apply the packaged CRD through ``apply(manifest)`` if ``get()`` shows an older one;
    returns what happened (for the log)."""
    ours = packaged()
    live = get()
    if live is None:
        return "the ZeroTierRelay CRD is not installed (helm install creates it)"
    if not needs_upgrade(live, ours):
        return f"the ZeroTierRelay CRD is at schema version {schema_version(live)}"
    apply(ours)
    return f"upgraded the ZeroTierRelay CRD from schema version {schema_version(live)} to {schema_version(ours)}"
