"""Checks of a ZeroTierRelay spec that the CRD's schema cannot make (pure).

The schema rejects mistakes at ``kubectl apply``, naming the field: types, bounds, enums,
and CEL rules (schema-version 5) for CIDR ranges (``isCIDR``, no host bits), HOST:PORT
endpoints, the OTLP endpoint URL (``isURL``), one fallback backend, autoscaling bounds and
its CPU request, and a fallback to the relay's own Service when no namespace is given.

What is left here needs what a CEL rule can't read: the relay's namespace (a rule sees
only ``metadata.name``). A relay stored under an older schema keeps an invalid value the
new rules would refuse (the API server ratchets unchanged fields); its pods then fail to
start, and the status says why (``Degraded``, CrashLoopBackOff with the relay's message).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def validate(spec: Mapping[str, Any] | None, name: str | None = None, namespace: str | None = None) -> list[str]:
    """Every problem found, each naming its field; an empty list means the spec is usable.
    ``name`` and ``namespace`` are the relay's (its Service has the same name)."""
    errors = []
    fallback = (spec or {}).get("fallback") or {}
    service = fallback.get("service")
    if service and name and service == name and fallback.get("namespace", namespace) == namespace:
        # The relay's own Service: every non-ZeroTier connection would loop relay -> relay
        # until the connection limit or the file descriptors run out.
        errors.append(f"spec.fallback.service: {name!r} is this relay's own Service (a connection loop); "
                      "name the site's backend Service")
    return errors
