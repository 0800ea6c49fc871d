"""Checks of a ZeroTierRelay spec that the CRD schema cannot express (pure).

The schema (types, bounds, enums, CEL rules) rejects most mistakes at ``kubectl apply``.
What is left here would otherwise reach a relay pod and crash-loop it, for example a CIDR
with host bits set; instead the relay gets a ``Degraded`` condition naming the field.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from zt_operator import builders


def _cidr_errors(field: str, values: Any) -> list[str]:
    errors = []
    for index, value in enumerate(values or []):
        try:
            # strict, as the relay parses them: 10.0.0.1/8 is a typo, not 10.0.0.0/8
            ipaddress.ip_network(str(value).strip(), strict=True)
        except ValueError as exc:
            errors.append(f"spec.{field}[{index}]: {value!r} is not a CIDR range ({exc})")
    return errors


def _endpoint_error(field: str, value: str) -> str | None:
    host, sep, port = value.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        return f"spec.{field}: {value!r} is not HOST:PORT (e.g. 192.0.2.10:9993 or [2001:db8::1]:9993)"
    return None


def validate(spec: Mapping[str, Any] | None, name: str | None = None) -> list[str]:
    """Every problem found, each naming its field; an empty list means the spec is usable.
    ``name`` is the relay's (its Service has the same name)."""
    spec = builders.with_defaults(spec)
    relay = spec["relay"]
    errors = _cidr_errors("relay.allowDestinations", relay.get("allowDestinations"))
    errors += _cidr_errors("relay.denyDestinations", relay.get("denyDestinations"))
    errors += _cidr_errors("service.loadBalancerSourceRanges", spec["service"].get("loadBalancerSourceRanges"))
    if relay.get("legacyTarget"):
        error = _endpoint_error("relay.legacyTarget", relay["legacyTarget"])
        if error:
            errors.append(error)
    fallback = spec.get("fallback")
    if fallback:
        if bool(fallback.get("service")) == bool(fallback.get("address")):
            errors.append("spec.fallback: set either service (with port) or address")
        elif fallback.get("address"):
            error = _endpoint_error("fallback.address", fallback["address"])
            if error:
                errors.append(error)
        elif not fallback.get("port"):
            errors.append("spec.fallback.port: required with spec.fallback.service (the Service's port)")
        elif name and fallback["service"] == name:
            # The relay's own Service: every non-ZeroTier connection would loop relay -> relay
            # until the connection limit or the file descriptors run out.
            errors.append(f"spec.fallback.service: {name!r} is this relay's own Service (a connection loop); "
                          "name the site's backend Service")
    auto = spec["autoscaling"]
    if auto["enabled"]:
        if auto["minReplicas"] > auto["maxReplicas"]:
            errors.append(f"spec.autoscaling: minReplicas ({auto['minReplicas']}) must not exceed "
                          f"maxReplicas ({auto['maxReplicas']})")
        if not (spec["resources"].get("requests") or {}).get("cpu"):
            errors.append("spec.resources.requests.cpu: required when spec.autoscaling.enabled is true "
                          "(CPU utilization is measured against the request)")
    endpoint = (spec.get("telemetry") or {}).get("otlpEndpoint")
    if endpoint:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            errors.append(f"spec.telemetry.otlpEndpoint: {endpoint!r} is not an http:// or https:// URL")
    return errors
