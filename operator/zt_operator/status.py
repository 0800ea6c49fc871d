"""A relay's status from its children as they are (pure; the time is a parameter).

``observe`` turns the live Deployment and Service into the status the relay should show;
``merge_conditions`` keeps each condition's ``lastTransitionTime`` unless its status
flipped; ``changes`` is the minimal status patch; ``events`` names the transitions worth a
Kubernetes Event. Condition types, following Kubernetes conventions:

- ``Ready``: at least one relay pod is ready and clients have an address to use;
- ``Progressing``: a rollout or scale is under way;
- ``Degraded``: the spec is invalid, an API call failed, a child's name is taken, pods
  can't start (image pull, crash loop), the rollout passed its deadline, or pods are missing;
- ``Conflict``: a child's name is used by an object this relay does not own (left untouched);
- ``AddressStable``: False when the address is a load balancer's hostname (resolved IPs may
  change) or changed since clients were configured (``previousAddress``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any

from zt_operator import builders

CONDITION_TYPES = ("Ready", "Progressing", "Degraded", "Conflict", "AddressStable")

STUCK_POD_REASONS = ("ImagePullBackOff", "ErrImagePull", "ErrImageNeverPull", "InvalidImageName", "CrashLoopBackOff",
                     "CreateContainerConfigError", "CreateContainerError", "RunContainerError")
"""Container waiting reasons that do not fix themselves: the relay is Degraded with the reason."""
PULL_REASONS = ("ErrImagePull", "ImagePullBackOff")
"""One trouble the kubelet shows in turn (a failed pull until its next sync, then the
back-off, again at every retry): the relay keeps the reason it showed first, so each flip
is not a new Degraded reason (and Warning Event)."""


def _condition(kind: str, ok: bool, reason: str, message: str, generation: int | None) -> dict[str, Any]:
    return {
        "type": kind,
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
    }


def _is_ipv4(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).version == 4
    except ValueError:
        return False


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def prefer_ipv4(addresses: Sequence[str]) -> list[str]:
    """``addresses`` without duplicates, IPv4 first, each family in its given order."""
    unique = list(dict.fromkeys(addresses))
    return [a for a in unique if _is_ipv4(a)] + [a for a in unique if not _is_ipv4(a)]


def load_balancer_hostnames(service: Mapping[str, Any] | None) -> list[str]:
    """Hostnames a load balancer gives instead of IPs (the caller resolves them)."""
    ingress = ((service or {}).get("status") or {}).get("loadBalancer", {}).get("ingress") or []
    return [i["hostname"] for i in ingress if i.get("hostname") and not i.get("ip")]


def service_addresses(service: Mapping[str, Any] | None, resolved: Mapping[str, Sequence[str]] | None = None) -> tuple[list[str], str | None]:
    """(IP addresses clients can use, IPv4 first; the hostname they came from, if any).

    ZeroTier's ``tcpFallbackRelay`` needs an IP literal: a load balancer's hostname counts
    only through its ``resolved`` IPs. ClusterIP Services give their cluster IP(s) (in-cluster
    clients); NodePort Services give none (any node's address, which the Service does not say).
    """
    if not service:
        return [], None
    spec = service.get("spec") or {}
    kind = spec.get("type")
    if kind == "LoadBalancer":
        ingress = (service.get("status") or {}).get("loadBalancer", {}).get("ingress") or []
        ips = [i["ip"] for i in ingress if i.get("ip")]
        if ips:
            return prefer_ipv4(ips), None
        hostnames = load_balancer_hostnames(service)
        if hostnames:
            # DNS answers rotate: sorted, so the same set of IPs is always the same list.
            found = sorted({ip for h in hostnames for ip in (resolved or {}).get(h, ()) if _is_ip(ip)},
                           key=lambda a: (ipaddress.ip_address(a).version, ipaddress.ip_address(a)))
            return found, hostnames[0]
        return [], None
    if kind == "ClusterIP":
        ips = [ip for ip in spec.get("clusterIPs") or [spec.get("clusterIP")] if ip and ip != "None"]
        return prefer_ipv4(ips), None
    return [], None


def service_address(service: Mapping[str, Any] | None) -> str | None:
    """The one address clients should use (IPv4 preferred), or None."""
    addresses, _ = service_addresses(service)
    return addresses[0] if addresses else None


def _node_ports(service: Mapping[str, Any] | None) -> list[int]:
    return [p["nodePort"] for p in ((service or {}).get("spec") or {}).get("ports") or [] if p.get("nodePort")]


def stuck_pods(pods: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """(reason, "pod: message") for each relay container waiting on something that does not
    fix itself (an image that can't be pulled, a crash loop)."""
    found = []
    for pod in pods:
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        statuses += (pod.get("status") or {}).get("initContainerStatuses") or []
        for container in statuses:
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in STUCK_POD_REASONS:
                message = waiting.get("message") or waiting["reason"]
                found.append((waiting["reason"], f"pod {pod['metadata']['name']}: {message}"))
    return found


def _deployment_condition(deployment: Mapping[str, Any] | None, kind: str) -> Mapping[str, Any]:
    conditions = ((deployment or {}).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == kind), {})


def observe(
    body: Mapping[str, Any],
    deployment: Mapping[str, Any] | None,
    service: Mapping[str, Any] | None,
    *,
    invalid: Sequence[str] = (),
    apply_error: str | None = None,
    error_reason: str = "ApplyFailed",
    conflicts: Sequence[str] = (),
    pods: Sequence[Mapping[str, Any]] = (),
    resolved: Mapping[str, Sequence[str]] | None = None,
    previous: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The status the relay should have, without transition times (see ``merge_conditions``).

    ``previous`` is the status shown so far (for address changes); ``pods`` the relay's pods
    (for reasons they can't start); ``resolved`` maps load-balancer hostnames to their IPs.
    """
    name = body["metadata"]["name"]
    generation = body["metadata"].get("generation")
    spec = builders.with_defaults(body.get("spec"))
    port = spec["service"]["port"]
    dep_status = (deployment or {}).get("status") or {}
    replicas = dep_status.get("replicas") or 0
    ready = dep_status.get("readyReplicas") or 0
    addresses, hostname = service_addresses(service, resolved)
    previous = previous or {}
    # The address clients were last given, even through a gap with none (Service recreated).
    last = previous.get("address") or previous.get("lastAddress")
    address = addresses[0] if addresses else None
    if hostname and last in addresses:
        address = last  # the load balancer did not change, only the order of its DNS answers
    previous_address = previous.get("previousAddress")
    if address and last and last != address:
        previous_address = last
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "replicas": replicas,
        "readyReplicas": ready,
        "selector": builders.selector_string(name),
        "service": name,
        "address": address,
        "addresses": addresses or None,
        "hostname": hostname,
        "previousAddress": previous_address,
        "lastAddress": address or last,
        "clientConfig": builders.client_config(address, port),
    }

    if hostname:
        address_stable = _condition("AddressStable", False, "HostnameOnly",
                                    f"the load balancer gives only the hostname {hostname}; clientConfig uses its "
                                    f"resolved IPs {addresses or 'none yet'}, which may change", generation)
    elif previous_address and previous_address != address:
        address_stable = _condition("AddressStable", False, "AddressChanged",
                                    f"the address changed from {previous_address} to {address}: clients configured "
                                    f"with {previous_address}/{port} must be updated", generation)
    else:
        address_stable = _condition("AddressStable", True, "Static", "", generation)
    conflict = (_condition("Conflict", True, "NameInUse", "; ".join(conflicts), generation) if conflicts
                else _condition("Conflict", False, "NoConflict", "", generation))

    if invalid:
        message = "; ".join(invalid)
        status["conditions"] = [
            _condition("Ready", False, "InvalidSpec", message, generation),
            _condition("Progressing", False, "InvalidSpec", "nothing is applied until the spec is fixed", generation),
            _condition("Degraded", True, "InvalidSpec", message, generation),
            conflict, address_stable,
        ]
        return status

    desired = (deployment or {}).get("spec", {}).get("replicas", 0) if deployment else 0
    updated = dep_status.get("updatedReplicas") or 0
    stale = dep_status.get("observedGeneration", 0) < (deployment or {}).get("metadata", {}).get("generation", 0)
    rolling = deployment is not None and (stale or updated < desired or replicas > updated)
    progress = _deployment_condition(deployment, "Progressing")
    deadline = progress.get("status") == "False" and progress.get("reason") == "ProgressDeadlineExceeded"
    service_type = spec["service"]["type"]

    if deployment is None:
        ready_condition = _condition("Ready", False, "Creating", "the relay Deployment does not exist yet", generation)
    elif desired == 0:
        ready_condition = _condition("Ready", False, "ScaledToZero", "replicas is 0", generation)
    elif ready == 0:
        ready_condition = _condition("Ready", False, "NoReadyReplicas", f"0/{desired} relay pods ready", generation)
    elif service_type == "NodePort" and service:
        ports = _node_ports(service)
        ready_condition = _condition("Ready", True, "Available",
                                     f"{ready}/{desired} relay pods ready on node port {ports[0] if ports else '?'} "
                                     f"of any node's address", generation)
    elif not address:
        waiting = (f"waiting for the load balancer's hostname {hostname} to resolve" if hostname
                   else "waiting for the load balancer to assign an address" if service_type == "LoadBalancer"
                   else "waiting for the Service")
        ready_condition = _condition("Ready", False, "AwaitingAddress", waiting, generation)
    else:
        ready_condition = _condition("Ready", True, "Available",
                                     f"{ready}/{desired} relay pods ready at {address} port {port}", generation)

    if deadline:
        progressing = _condition("Progressing", False, "ProgressDeadlineExceeded", progress.get("message", ""), generation)
    elif rolling:
        progressing = _condition("Progressing", True, "RollingOut", f"{updated}/{desired} pods updated, {ready} ready", generation)
    else:
        progressing = _condition("Progressing", False, "Complete", f"{replicas} pods up to date", generation)

    stuck = stuck_pods(pods)
    before = {c.get("type"): c for c in previous.get("conditions") or []}.get("Degraded") or {}
    was_stuck = before.get("status") == "True" and before.get("reason") in STUCK_POD_REASONS
    short = deployment is not None and (ready < desired or updated < desired)
    if conflicts:
        degraded = _condition("Degraded", True, "Conflict", "; ".join(conflicts), generation)
    elif apply_error:
        degraded = _condition("Degraded", True, error_reason, apply_error, generation)
    elif stuck:
        reason = stuck[0][0]
        if was_stuck and reason in PULL_REASONS and before["reason"] in PULL_REASONS:
            reason = before["reason"]
        degraded = _condition("Degraded", True, reason, "; ".join(m for _, m in stuck), generation)
    elif was_stuck and short and any(f"pod {(p.get('metadata') or {}).get('name')}:" in before.get("message", "")
                                     for p in pods):
        # A crash-looping container runs (not ready) between its back-offs: the same trouble,
        # not a recovery, while the relay is short and a pod it named is still there.
        degraded = _condition("Degraded", True, before["reason"], before.get("message", ""), generation)
    elif deadline:
        degraded = _condition("Degraded", True, "ProgressDeadlineExceeded", progress.get("message", ""), generation)
    elif deployment is not None and not rolling and ready < desired:
        degraded = _condition("Degraded", True, "ReplicasUnavailable", f"{ready}/{desired} relay pods ready", generation)
    else:
        degraded = _condition("Degraded", False, "AsExpected", "", generation)

    status["conditions"] = [ready_condition, progressing, degraded, conflict, address_stable]
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
    old_address = (old or {}).get("address") or (old or {}).get("lastAddress")
    if new.get("address") and old_address and new["address"] != old_address:
        found.append(("Warning", "AddressChanged",
                      f"the relay's address changed from {old_address} to {new['address']}; clients configured with "
                      f"the old one must be updated; local.conf: {new.get('clientConfig')}"))
    elif new.get("address") and new.get("address") != old_address:
        found.append(("Normal", "AddressAssigned", f"clients connect to {new['address']}; local.conf: {new.get('clientConfig')}"))
    return found
