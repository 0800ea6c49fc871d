"""One reconciliation pass of one relay: validate, apply children, read back, status.

Level-based: the same pass runs for every event of the relay or a child and every resync,
and always drives the children toward what the spec says now. It never raises for a bad
spec or a failed API call: those become conditions (and ``Outcome.errors``, which the
runner retries with backoff). Each child is handled on its own, so one failing call never
keeps the others from being repaired. An object of a child's name that this relay does not
own is never written (``Conflict``). A child already as built costs no request.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
from collections.abc import Callable, Mapping
from typing import Any

from zt_operator import builders, kube, plan, status, validation
from zt_operator.settings import OperatorSettings

RECHECK_SECONDS = 10.0
"""How soon a relay short of ready pods is looked at again (why its pods are not ready), and
one whose load balancer's hostname resolves to no IP yet."""
RECHECK_SOON_SECONDS = 2.0
YOUNG_POD_SECONDS = 30.0
"""While one of its pods is younger than this, a short relay is looked at again after
``RECHECK_SOON_SECONDS``: a missing image or a crash at start shows within seconds of the
pod's creation, and changes no watched child."""
CHILD_KINDS = ("Service", "Deployment", "PodDisruptionBudget", "HorizontalPodAutoscaler", "NetworkPolicy")


@dataclasses.dataclass(frozen=True)
class Outcome:
    status_patch: dict[str, Any]
    """Status fields that changed (None removes one)."""
    events: list[tuple[str, str, str]]
    """(type, reason, message) of notable transitions."""
    result: str
    """"ok", "invalid" (spec rejected), "conflict" (a name in use) or "error" (an API call failed)."""
    ready: bool
    """Whether the relay is Ready now (whether or not that changed)."""
    errors: list[kube.KubeError] = dataclasses.field(default_factory=list)
    """Failed API calls (counted by reason; the pass is retried with backoff)."""
    recheck_seconds: float | None = None
    """Look again after this long: pods are not all ready, and pod changes (an image pull
    failing, a crash loop) come with no event of a watched child."""
    gone: bool = False
    """The relay no longer exists (or is another object of its name): nothing was written."""


def _tunnel_ports(service: Mapping[str, Any] | None) -> list[tuple]:
    return sorted((p.get("name"), p.get("port"), str(p.get("targetPort")), p.get("protocol", "TCP"))
                  for p in (service or {}).get("spec", {}).get("ports") or [])


def _fallback_service(body: Mapping[str, Any], access: Any) -> dict[str, Any] | None:
    """The ``spec.fallback`` Service, read so the egress policy can name its pods (only
    when a NetworkPolicy is wanted; None when absent: egress to it stays closed until a
    later pass finds it). Raises ``KubeError``."""
    ref = builders.fallback_service_ref(body)
    if ref is None or not builders.with_defaults(body.get("spec"))["networkPolicy"]["enabled"]:
        return None
    return access.live("Service", *ref)


def _manifests(body: dict[str, Any], settings: OperatorSettings, own_addresses: list[str],
               fallback_service: dict[str, Any] | None) -> dict[str, dict[str, Any] | None]:
    built = {
        "Service": builders.service(body),
        "Deployment": builders.deployment(body, default_image=settings.relay_image,
                                          default_pull_policy=settings.relay_image_pull_policy,
                                          own_addresses=own_addresses),
        "PodDisruptionBudget": builders.pod_disruption_budget(body),
        "HorizontalPodAutoscaler": builders.horizontal_pod_autoscaler(body),
        "NetworkPolicy": builders.network_policy(body, fallback_service),
    }
    return {kind: plan.stamp(manifest) if manifest is not None else None for kind, manifest in built.items()}


def run(body: Mapping[str, Any], settings: OperatorSettings, now: Callable[[], str], access: Any) -> Outcome:
    """Reconcile the relay ``body`` (a plain dict of the live object) once, through
    ``access`` (``children.Access`` or a test's fake)."""
    body = copy.deepcopy(dict(body))
    meta = body["metadata"]
    namespace, name, uid = meta["namespace"], meta["name"], meta["uid"]
    invalid = validation.validate(body.get("spec"), name, namespace)
    errors: list[kube.KubeError] = []
    conflicts: list[str] = []
    live: dict[str, dict[str, Any] | None] = {}

    def attempt(action: Callable[[], Any]) -> tuple[bool, Any]:
        try:
            return True, action()
        except kube.KubeError as exc:
            errors.append(exc)
            return False, None

    alive: list[bool | None] = []  # whether the relay exists (None: the GET failed), once asked

    def relay_alive() -> bool | None:
        """Asked once, before the first child is created: a relay deleted while the relays'
        watch was away (a relist sends no DELETED event) is still known here, and a child
        created for it would name a gone owner: garbage collection deletes it, its DELETED
        event brings the next pass, which created it again (a new load balancer each time)."""
        if not alive:
            ok, exists = attempt(lambda: access.relay_exists(namespace, name, uid))
            alive.append(exists if ok else None)  # not known: create nothing this pass (retried)
        return alive[0]

    manifests: dict[str, dict[str, Any] | None] = {}
    if not invalid:
        ok, fallback_service = attempt(lambda: _fallback_service(body, access))
        forbidden = not ok and errors[-1].status == 403
        if forbidden:
            # Not a passing failure: the operator has no Role there (operator.watchNamespaces).
            # The policy is still built, with the backend closed, rather than none at all.
            ref = builders.fallback_service_ref(body)
            errors[-1] = kube.KubeError(
                f"the fallback Service {ref[0]}/{ref[1]} can't be read (403: the operator has no Role in "
                f"namespace {ref[0]}; add it to operator.watchNamespaces): the relay's egress to its backend "
                f"stays closed", "FallbackServiceForbidden", 403)
        # The load balancer's own IPs are not passed to the pods: they arrive after the
        # Deployment exists, and putting them in the pod template would roll every relay
        # (cutting its tunnels) when its address is assigned or changes.
        manifests = _manifests(body, settings, [], fallback_service)
        if not ok and not forbidden:  # a passing failure: keep the policy as it is rather than close the backend
            manifests.pop("NetworkPolicy")
    handback = None
    if not invalid:
        try:
            running = plan.replicas_handback(body, access.live("Deployment", namespace, name))
            if running is not None and plan.child_state(access.live("HorizontalPodAutoscaler", namespace, name), uid) == "ours":
                handback = running
        except kube.KubeError:
            pass  # the loop's own reads of these children report it
    for kind in CHILD_KINDS:
        # A child that is not to be written needs no read from the API server: only our own
        # (labelled, so watched and cached) object matters then.
        cached_only = manifests.get(kind) is None
        ok, current = attempt(lambda kind=kind: access.live(kind, namespace, name, cached_only=cached_only))
        if not ok:
            live[kind] = None
            continue
        state = plan.child_state(current, uid)
        if state == "foreign":
            if kind in manifests and manifests[kind] is not None:
                conflicts.append(f"{kind} {name} already exists and is not owned by this relay; it is left untouched")
            live[kind] = None
            continue
        live[kind] = current
        if invalid:
            continue
        if handback is not None and kind in ("Deployment", "HorizontalPodAutoscaler"):
            continue  # left as they are until spec.replicas says what runs (below; its event brings the next pass)
        if kind not in manifests:
            continue  # not built this pass (invalid spec, or see above): left as it is
        manifest = manifests[kind]
        if manifest is None:
            if state == "ours":  # the feature was switched off
                if attempt(lambda kind=kind: access.delete(kind, namespace, name))[0]:
                    live[kind] = None
            continue
        if plan.up_to_date(manifest, current):
            continue
        if current is None and not relay_alive():
            if relay_alive() is False:
                return Outcome({}, [], "ok", False, [], None, gone=True)
            continue
        if kind == "Deployment":
            handover = plan.replicas_handover(body, current)
            if handover is not None and not attempt(lambda: access.apply(handover, plan.HANDOVER_MANAGER))[0]:
                continue  # applying without replicas now would reset them to 1
        if kind == "Service" and current is not None and _tunnel_ports(current) != _tunnel_ports(manifest):
            # Service ports are a list keyed by port number: apply would add our 443 next to
            # an edited 444 instead of replacing it. Never delete the Service to repair it:
            # a new one may get a new load-balancer address.
            if not attempt(lambda: access.replace_service_ports(namespace, name, manifest["spec"]["ports"]))[0]:
                continue
        ok, applied = attempt(lambda manifest=manifest: access.apply(manifest))
        if ok:
            live[kind] = applied

    deployment = live.get("Deployment")
    if not invalid:
        mirrored = handback if handback is not None else plan.mirrored_replicas(body, deployment)
        if mirrored is not None:
            # Only onto the relay this pass read: an edit since (autoscaling off with its own
            # replicas) must not be overwritten by the count of an autoscaler it switched off.
            try:
                access.scale_relay(namespace, name, mirrored, meta.get("resourceVersion"))
            except kube.KubeError as exc:
                if exc.status != 409:  # 409: the relay moved on; its watch event brings the next pass
                    errors.append(exc)

    pods: list[dict[str, Any]] = []
    dep_status = (deployment or {}).get("status") or {}
    desired = ((deployment or {}).get("spec") or {}).get("replicas") or 0
    short = deployment is not None and (
        (dep_status.get("readyReplicas") or 0) < desired
        # A rollout under way: its new pods may be stuck (an image typo) while the old
        # ones keep every replica ready; a pod's state changes no watched child.
        or (dep_status.get("updatedReplicas") or 0) < desired
        or (dep_status.get("unavailableReplicas") or 0) > 0)
    if short:
        # Only a relay short of ready or updated pods costs a pod listing (why they are not).
        pods = attempt(lambda: access.list_pods(namespace, builders.selector_string(name)))[1] or []
    resolved = {h: access.resolve(h) for h in status.load_balancer_hostnames(live.get("Service"))}
    # A load balancer's hostname often resolves a minute or more after the Service gets it,
    # and that changes no watched object: look again soon, not at the resync (300 s).
    unresolved = bool(resolved) and not any(resolved.values())

    current_status = body.get("status") or {}
    apply_error = "; ".join(str(e) for e in errors) or None
    wanted = status.observe(body, deployment, live.get("Service"), invalid=invalid, apply_error=apply_error,
                            error_reason=errors[0].reason if errors else "ApplyFailed", conflicts=conflicts,
                            pods=pods, resolved=resolved, previous=current_status)
    wanted["conditions"] = status.merge_conditions(current_status.get("conditions"), wanted["conditions"], now())
    result = "invalid" if invalid else "error" if errors else "conflict" if conflicts else "ok"
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in wanted["conditions"])
    return Outcome(status.changes(current_status, wanted), status.events(current_status, wanted), result, ready, errors,
                   recheck_seconds(pods, now()) if short else RECHECK_SECONDS if unresolved else None)


def _seconds(timestamp: str) -> float:
    return datetime.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc).timestamp()


def recheck_seconds(pods: list[dict[str, Any]], now: str) -> float:
    """When to look again at a relay short of ready pods: soon while a pod is young, then
    every ``RECHECK_SECONDS``."""
    for pod in pods:
        created = (pod.get("metadata") or {}).get("creationTimestamp")
        try:
            if created and _seconds(now) - _seconds(created) < YOUNG_POD_SECONDS:
                return RECHECK_SOON_SECONDS
        except ValueError:
            continue  # not a timestamp the API server writes: judge by the other pods
    return RECHECK_SECONDS
