"""Pure decisions about a relay's children before anything is written (no I/O, no clock).

- ``child_state``: a live object of a child's name is ours, someone else's, or absent. The
  operator never writes a foreign object: it would add an ownerReference, and garbage
  collection would later delete the user's object with the relay.
- ``replicas_handover``: switching autoscaling on must not drop ``spec.replicas`` from the
  Deployment while the operator's field manager is its only owner (server-side apply would
  reset it to 1 and cut tunnels). A second manager first takes the field at no less than
  what runs; then the operator's apply leaves it out, and the autoscaler takes it over.
- ``mirrored_replicas``: under an autoscaler the relay's own ``spec.replicas`` follows what
  runs, so switching autoscaling off starts from there, not from a default.
- ``replicas_handback``: switching off over a mirror that stopped (the operator was down
  while the autoscaler scaled) first brings ``spec.replicas`` up to what runs.
- ``is_stale``: a reconcile holding an older generation than one already applied must not
  apply (it would undo a fresh edit and roll the pods twice).
- ``up_to_date``: every field the operator builds is already live: no apply request.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from kubernetes.utils.quantity import parse_quantity

from zt_operator import FIELD_MANAGER, GROUP, builders

HANDOVER_MANAGER = f"{FIELD_MANAGER}-handover"
"""Field manager that holds a Deployment's ``replicas`` while autoscaling takes over."""
APPLIED_ANNOTATION = f"{GROUP}/applied"
"""Annotation on each child: the hash of what the operator last applied (see ``stamp``)."""
MAX_BACKOFF_SECONDS = 60
"""Longest wait between retries of a failed reconcile (the API server may be down)."""


def child_state(live: Mapping[str, Any] | None, uid: str) -> str:
    """"absent", "ours" (controlled by the relay with ``uid``) or "foreign"."""
    if live is None:
        return "absent"
    refs = (live.get("metadata") or {}).get("ownerReferences") or []
    return "ours" if any(ref.get("uid") == uid and ref.get("controller") for ref in refs) else "foreign"


def owns_field(live: Mapping[str, Any], manager: str, *path: str) -> bool:
    """Whether ``manager`` owns the field at ``path`` (e.g. "spec", "replicas")."""
    for entry in (live.get("metadata") or {}).get("managedFields") or []:
        if entry.get("manager") != manager:
            continue
        node: Any = entry.get("fieldsV1") or {}
        for key in path:
            node = node.get(f"f:{key}") if isinstance(node, Mapping) else None
            if node is None:
                break
        else:
            return True
    return False


def owners(live: Mapping[str, Any], *path: str) -> set[str]:
    """The field managers owning the field at ``path``."""
    return {entry.get("manager") for entry in (live.get("metadata") or {}).get("managedFields") or []
            if owns_field({"metadata": {"managedFields": [entry]}}, entry.get("manager"), *path)}


def replicas_handback(body: Mapping[str, Any], live_deployment: Mapping[str, Any] | None) -> int | None:
    """With autoscaling switched off, what runs, when the relay's ``spec.replicas`` is only
    the operator's mirror of an earlier count (no edit set it) and the Deployment's replicas
    are not the operator's (an autoscaler held them): the mirror stopped while the operator
    was down, and applying it would cut the pods the autoscaler added. None otherwise."""
    spec = builders.with_defaults(body.get("spec"))
    if spec["autoscaling"]["enabled"] or live_deployment is None:
        return None
    if owners(body, "spec", "replicas") != {FIELD_MANAGER} or owns_field(live_deployment, FIELD_MANAGER, "spec", "replicas"):
        return None
    running = (live_deployment.get("spec") or {}).get("replicas")
    if not running or running == spec["replicas"]:
        return None
    return running


def replicas_handover(body: Mapping[str, Any], live_deployment: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The apply (by ``HANDOVER_MANAGER``) that keeps ``replicas`` at max(minReplicas, live)
    while the operator stops owning it; None when no handover is needed."""
    spec = builders.with_defaults(body.get("spec"))
    if not spec["autoscaling"]["enabled"] or live_deployment is None:
        return None
    if not owns_field(live_deployment, FIELD_MANAGER, "spec", "replicas"):
        return None
    running = (live_deployment.get("spec") or {}).get("replicas") or 0
    meta = body["metadata"]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
        "spec": {"replicas": max(spec["autoscaling"]["minReplicas"], running)},
    }


def mirrored_replicas(body: Mapping[str, Any], live_deployment: Mapping[str, Any] | None) -> int | None:
    """The relay's ``spec.replicas`` to write so it follows the autoscaler, or None."""
    spec = builders.with_defaults(body.get("spec"))
    if not spec["autoscaling"]["enabled"] or live_deployment is None:
        return None
    running = (live_deployment.get("spec") or {}).get("replicas")
    if not running or running == spec["replicas"]:
        return None
    return running


def is_stale(body: Mapping[str, Any], applied_generation: int | None) -> bool:
    """Whether ``body`` is older than a generation already applied."""
    generation = body["metadata"].get("generation")
    return applied_generation is not None and generation is not None and generation < applied_generation


_QUANTITY_MAPS = ("requests", "limits")
"""Keys whose values are resource quantities: the API server stores them canonically
(``0.5`` -> ``500m``, ``1.5Gi`` -> ``1536Mi``), so they are compared by value."""


def _same_quantity(built: Any, live: Any) -> bool:
    try:
        return parse_quantity(built) == parse_quantity(live)
    except (ValueError, TypeError, ArithmeticError):
        return False


def _contains(built: Any, live: Any, quantities: bool = False) -> bool:
    if isinstance(built, Mapping):
        return isinstance(live, Mapping) and all(
            k in live and _contains(v, live[k], quantities or k in _QUANTITY_MAPS) for k, v in built.items())
    if isinstance(built, list):
        # Lists are atomic or keyed; either way the same items in the same order.
        return isinstance(live, list) and len(built) == len(live) and all(map(_contains, built, live))
    if built == live or str(built) == str(live):
        return True
    return quantities and _same_quantity(built, live)


def up_to_date(built: Mapping[str, Any], live: Mapping[str, Any] | None) -> bool:
    """Whether every field of ``built`` has the same value in ``live`` (server-added fields,
    defaults and status are ignored): then applying would change nothing."""
    return live is not None and _contains(built, live)


def stamp(manifest: dict[str, Any]) -> dict[str, Any]:
    """``manifest`` with an annotation holding the hash of its content (a new dict).

    A field dropped from the spec (an annotation, a nodeSelector) is removed only by an
    apply; comparing the stamp tells that apart from a child that merely has extra fields.
    """
    digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]
    stamped = copy.deepcopy(manifest)
    stamped["metadata"].setdefault("annotations", {})[APPLIED_ANNOTATION] = digest
    return stamped


def backoff(attempt: int) -> float:
    """Seconds before retry number ``attempt`` (1, 2, 4, ... up to ``MAX_BACKOFF_SECONDS``)."""
    return min(MAX_BACKOFF_SECONDS, 2 ** max(0, attempt - 1))
