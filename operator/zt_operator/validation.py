"""Checks of a ZeroTierRelay spec that the CRD's schema cannot make (pure).

The schema rejects mistakes at ``kubectl apply``, naming the field: types, bounds, enums,
and CEL rules (schema-version 5) for CIDR ranges (``isCIDR``, no host bits), HOST:PORT
endpoints, the OTLP endpoint URL (``isURL``), one fallback backend, autoscaling bounds and
its CPU request, and a fallback to the relay's own Service when no namespace is given.

What is left here needs what a CEL rule can't read: the relay's namespace (a rule sees
only ``metadata.name``). A relay stored under an older schema keeps an invalid value the
new rules would refuse (the API server ratchets unchanged fields); its pods then fail to
start, and the status says why (``Degraded``, CrashLoopBackOff with the relay's message).
One such value is checked here too, because the relay refuses it at start and the fix is
not obvious: an IPv4-mapped destination range (inside ``::ffff:0:0/96``; the relay
matches IPv4 destinations as IPv4, so a mapped allow would be dead and a mapped deny a
silent no-op). Refused here, nothing is applied: the running pods keep the last good spec.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
DESTINATION_LISTS = ("allowDestinations", "denyDestinations")


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
    relay = (spec or {}).get("relay") or {}
    for field in DESTINATION_LISTS:
        for index, value in enumerate(relay.get(field) or []):
            ipv4 = _ipv4_of_mapped(value)
            if ipv4 is not None:
                errors.append(f"spec.relay.{field}[{index}]: {value!r} is an IPv4-mapped range, which the relay "
                              f"refuses (it matches IPv4 destinations as IPv4): write {ipv4}")
    return errors


def _ipv4_of_mapped(value: Any) -> str | None:
    """The IPv4 range (or address, for a bare one) that an IPv4-mapped ``value`` stands
    for; None for anything else (other mistakes are the CRD's to refuse)."""
    try:
        network = ipaddress.ip_network(str(value), strict=False)
    except ValueError:
        return None
    if not isinstance(network, ipaddress.IPv6Network) or not network.subnet_of(MAPPED):
        return None
    mapped = network.network_address.ipv4_mapped
    ipv4 = ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return str(ipv4) if "/" in str(value) else str(mapped)
