"""A relay's status from its children as they are (pure; the time is a parameter).

``observe`` turns the live Deployment and Service into the status the relay should show;
``merge_conditions`` keeps each condition's ``lastTransitionTime`` unless its status
flipped; ``changes`` is the minimal status patch; ``events`` names the transitions worth a
Kubernetes Event. Condition types, following Kubernetes conventions:

- ``Ready``: at least one relay pod is ready and clients have an address to use;
- ``Progressing``: a rollout or scale is under way;
- ``Degraded``: the spec is invalid, applying children failed, or pods are missing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from zt_operator import builders

CONDITION_TYPES = ("Ready", "Progressing", "Degraded")


def _condition(kind: str, ok: bool, reason: str, message: str, generation: int | None) -> dict[str, Any]:
    return {
        "type": kind,
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
    }


def service_address(service: Mapping[str, Any] | None) -> str | None:
    """Where clients reach the relays: the load balancer's IP or hostname, or the cluster
    IP for a ClusterIP Service (in-cluster clients). None while unknown (NodePort: any
    node's address, which the Service does not say)."""
    if not service:
        return None
    kind = service.get("spec", {}).get("type")
    if kind == "LoadBalancer":
        for ingress in (service.get("status") or {}).get("loadBalancer", {}).get("ingress") or []:
            if ingress.get("ip") or ingress.get("hostname"):
                return ingress.get("ip") or ingress.get("hostname")
        return None
    if kind == "ClusterIP":
        ip = service.get("spec", {}).get("clusterIP")
        return ip if ip and ip != "None" else None
    return None


def observe(
    body: Mapping[str, Any],
    deployment: Mapping[str, Any] | None,
    service: Mapping[str, Any] | None,
    *,
    invalid: Sequence[str] = (),
    apply_error: str | None = None,
) -> dict[str, Any]:
    """The status the relay should have, without transition times (see ``merge_conditions``)."""
    name = body["metadata"]["name"]
    generation = body["metadata"].get("generation")
    spec = builders.with_defaults(body.get("spec"))
    port = spec["service"]["port"]
    dep_status = (deployment or {}).get("status") or {}
    replicas = dep_status.get("replicas") or 0
    ready = dep_status.get("readyReplicas") or 0
    address = service_address(service)
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "replicas": replicas,
        "readyReplicas": ready,
        "selector": builders.selector_string(name),
        "service": name,
        "address": address,
        "clientConfig": builders.client_config(address, port),
    }

    if invalid:
        message = "; ".join(invalid)
        status["conditions"] = [
            _condition("Ready", False, "InvalidSpec", message, generation),
            _condition("Progressing", False, "InvalidSpec", "nothing is applied until the spec is fixed", generation),
            _condition("Degraded", True, "InvalidSpec", message, generation),
        ]
        return status

    desired = (deployment or {}).get("spec", {}).get("replicas", 0) if deployment else 0
    updated = dep_status.get("updatedReplicas") or 0
    stale = dep_status.get("observedGeneration", 0) < (deployment or {}).get("metadata", {}).get("generation", 0)
    rolling = deployment is not None and (stale or updated < desired or replicas > updated)

    if deployment is None:
        ready_condition = _condition("Ready", False, "Creating", "the relay Deployment does not exist yet", generation)
    elif desired == 0:
        ready_condition = _condition("Ready", False, "ScaledToZero", "replicas is 0", generation)
    elif ready == 0:
        ready_condition = _condition("Ready", False, "NoReadyReplicas", f"0/{desired} relay pods ready", generation)
    elif not address:
        waiting = ("waiting for the load balancer to assign an address"
                   if spec["service"]["type"] == "LoadBalancer"
                   else f"a {spec['service']['type']} Service has no single address; use a node's address")
        ready_condition = _condition("Ready", False, "AwaitingAddress", waiting, generation)
    else:
        ready_condition = _condition("Ready", True, "Available",
                                     f"{ready}/{desired} relay pods ready at {address} port {port}", generation)

    if rolling:
        progressing = _condition("Progressing", True, "RollingOut", f"{updated}/{desired} pods updated, {ready} ready", generation)
    else:
        progressing = _condition("Progressing", False, "Complete", f"{replicas} pods up to date", generation)

    if apply_error:
        degraded = _condition("Degraded", True, "ApplyFailed", apply_error, generation)
    elif deployment is not None and not rolling and ready < desired:
        degraded = _condition("Degraded", True, "ReplicasUnavailable", f"{ready}/{desired} relay pods ready", generation)
    else:
        degraded = _condition("Degraded", False, "AsExpected", "", generation)

    status["conditions"] = [ready_condition, progressing, degraded]
    return status


def merge_conditions(old: Sequence[Mapping[str, Any]] | None, new: Sequence[Mapping[str, Any]], now: str) -> list[dict[str, Any]]:
    """``new`` conditions, each with ``lastTransitionTime``: kept from ``old`` when the
    status did not change, else ``now`` (an RFC 3339 timestamp)."""
    previous = {c.get("type"): c for c in old or []}
    merged = []
    for condition in new:
        before = previous.get(condition["type"])
        since = before.get("lastTransitionTime") if before and before.get("status") == condition["status"] else None
        merged.append({**condition, "lastTransitionTime": since or now})
    return merged


def changes(current: Mapping[str, Any] | None, wanted: Mapping[str, Any]) -> dict[str, Any]:
    """The status fields that differ; a ``None`` value removes the field (merge patch)."""
    current = current or {}
    return {k: v for k, v in wanted.items() if current.get(k) != v and not (v is None and k not in current)}


def _by_type(status: Mapping[str, Any] | None) -> dict[str, Mapping[str, Any]]:
    return {c.get("type"): c for c in (status or {}).get("conditions") or []}


def events(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """Kubernetes Events for notable transitions, as (type, reason, message) with type
    ``Normal`` or ``Warning``: Ready flipping or changing reason, Degraded turning true,
    and the client address appearing or changing."""
    found: list[tuple[str, str, str]] = []
    before, after = _by_type(old), _by_type(new)
    ready_old, ready_new = before.get("Ready"), after.get("Ready")
    if ready_new and (not ready_old or (ready_old.get("status"), ready_old.get("reason")) != (ready_new["status"], ready_new["reason"])):
        # Losing readiness is a warning; not being ready yet (a new relay) is not.
        was_ready = bool(ready_old) and ready_old.get("status") == "True"
        kind = "Warning" if was_ready and ready_new["status"] != "True" or ready_new["reason"] == "InvalidSpec" else "Normal"
        found.append((kind, ready_new["reason"], ready_new["message"]))
    degraded_old, degraded_new = before.get("Degraded"), after.get("Degraded")
    if (degraded_new and degraded_new["status"] == "True" and degraded_new["reason"] != (ready_new or {}).get("reason")
            and (not degraded_old or (degraded_old.get("status"), degraded_old.get("reason")) != ("True", degraded_new["reason"]))):
        found.append(("Warning", degraded_new["reason"], degraded_new["message"]))
    if new.get("address") and new.get("address") != (old or {}).get("address"):
        found.append(("Normal", "AddressAssigned", f"clients connect to {new['address']}; local.conf: {new.get('clientConfig')}"))
    return found
