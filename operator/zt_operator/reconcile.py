"""One reconciliation pass of one relay: validate, apply children, read back, status.

Level-based: the same pass runs on create, update, resume and every resync, and always
drives the children toward what the spec says now, whatever happened before (an edit, a
deletion, a missed event). It never raises for a bad spec or a failed API call: those
become conditions, and the next resync tries again.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from zt_operator import builders, kube, status, validation
from zt_operator.settings import OperatorSettings


@dataclasses.dataclass(frozen=True)
class Outcome:
    status_patch: dict[str, Any]
    """Status fields that changed (None removes one)."""
    events: list[tuple[str, str, str]]
    """(type, reason, message) of notable transitions."""
    result: str
    """"ok", "invalid" (spec rejected) or "error" (an API call failed)."""


def _owned_by(obj: Mapping[str, Any] | None, uid: str) -> bool:
    refs = (obj or {}).get("metadata", {}).get("ownerReferences") or []
    return any(ref.get("uid") == uid and ref.get("controller") for ref in refs)


def _apply_or_remove(manifest: dict[str, Any] | None, kind: str, body: Mapping[str, Any]) -> None:
    """Apply ``manifest``; when it is None (feature off), delete our child of that kind.
    Only our own: a user's object of the same name (say their own HPA) is left alone."""
    if manifest is not None:
        kube.apply(manifest)
        return
    meta = body["metadata"]
    existing = kube.get(kind, meta["namespace"], meta["name"])
    if existing is not None and _owned_by(existing, meta["uid"]):
        kube.delete(kind, meta["namespace"], meta["name"])


def _tunnel_ports(service: Mapping[str, Any] | None) -> list[tuple]:
    return sorted((p.get("name"), p.get("port"), str(p.get("targetPort")), p.get("protocol", "TCP"))
                  for p in (service or {}).get("spec", {}).get("ports") or [])


def _apply_service(manifest: dict[str, Any]) -> dict[str, Any]:
    """Apply the Service, first putting back its port list if someone changed it.

    Service ports are a list keyed by port number: apply would add our 443 next to an
    edited 444 (and fail on the duplicate name) instead of replacing it. The Service is
    never deleted to repair it, because a new Service may get a new load-balancer address
    and every client is configured with the old one.
    """
    meta = manifest["metadata"]
    live = kube.get("Service", meta["namespace"], meta["name"])
    if live is not None and _tunnel_ports(live) != _tunnel_ports(manifest):
        kube.replace_service_ports(meta["namespace"], meta["name"], manifest["spec"]["ports"])
    return kube.apply(manifest)


def _fallback_service(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``spec.fallback`` Service, read so the egress policy can name its pods (only
    when a NetworkPolicy is wanted; None when absent: egress to it stays closed until a
    later pass finds it)."""
    ref = builders.fallback_service_ref(body)
    if ref is None or not builders.with_defaults(body.get("spec"))["networkPolicy"]["enabled"]:
        return None
    return kube.get("Service", *ref)


def run(body: Mapping[str, Any], settings: OperatorSettings, now: Callable[[], str]) -> Outcome:
    """Reconcile the relay ``body`` (a plain dict of the live object) once."""
    body = copy.deepcopy(dict(body))
    meta = body["metadata"]
    invalid = validation.validate(body.get("spec"))
    errors: list[str] = []
    live: dict[str, dict[str, Any] | None] = {"Deployment": None, "Service": None}

    def attempt(kind: str, action: Callable[[], Any]) -> None:
        # Each child on its own: one failing must not keep the others from being repaired.
        try:
            result = action()
        except kube.KubeError as exc:
            errors.append(str(exc))
            return
        if kind in live:
            live[kind] = result

    if not invalid:
        attempt("Service", lambda: _apply_service(builders.service(body)))
        attempt("Deployment", lambda: kube.apply(builders.deployment(
            body, default_image=settings.relay_image, default_pull_policy=settings.relay_image_pull_policy)))
        attempt("PodDisruptionBudget", lambda: kube.apply(builders.pod_disruption_budget(body)))
        attempt("HorizontalPodAutoscaler", lambda: _apply_or_remove(
            builders.horizontal_pod_autoscaler(body), "HorizontalPodAutoscaler", body))
        attempt("NetworkPolicy", lambda: _apply_or_remove(
            builders.network_policy(body, _fallback_service(body)), "NetworkPolicy", body))
    for kind in live:
        if live[kind] is None:  # not applied (invalid spec or failure): show it as it is
            attempt(kind, lambda kind=kind: kube.get(kind, meta["namespace"], meta["name"]))

    current = body.get("status") or {}
    apply_error = "; ".join(errors) or None
    wanted = status.observe(body, live["Deployment"], live["Service"], invalid=invalid, apply_error=apply_error)
    wanted["conditions"] = status.merge_conditions(current.get("conditions"), wanted["conditions"], now())
    result = "invalid" if invalid else "error" if apply_error else "ok"
    return Outcome(status.changes(current, wanted), status.events(current, wanted), result)
