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


def run(body: Mapping[str, Any], settings: OperatorSettings, now: Callable[[], str]) -> Outcome:
    """Reconcile the relay ``body`` (a plain dict of the live object) once."""
    body = copy.deepcopy(dict(body))
    meta = body["metadata"]
    invalid = validation.validate(body.get("spec"))
    apply_error = None
    deployment = service = None
    try:
        if invalid:
            deployment = kube.get("Deployment", meta["namespace"], meta["name"])
            service = kube.get("Service", meta["namespace"], meta["name"])
        else:
            service = kube.apply(builders.service(body))
            deployment = kube.apply(builders.deployment(
                body, default_image=settings.relay_image, default_pull_policy=settings.relay_image_pull_policy))
            kube.apply(builders.pod_disruption_budget(body))
            _apply_or_remove(builders.horizontal_pod_autoscaler(body), "HorizontalPodAutoscaler", body)
            _apply_or_remove(builders.network_policy(body), "NetworkPolicy", body)
    except kube.KubeError as exc:
        apply_error = str(exc)

    current = body.get("status") or {}
    wanted = status.observe(body, deployment, service, invalid=invalid, apply_error=apply_error)
    wanted["conditions"] = status.merge_conditions(current.get("conditions"), wanted["conditions"], now())
    result = "invalid" if invalid else "error" if apply_error else "ok"
    return Outcome(status.changes(current, wanted), status.events(current, wanted), result)
