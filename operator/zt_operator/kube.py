"""The operator's calls to the API server for a relay's children (synchronous; Kopf
runs synchronous handlers in its thread pool).

Children are written with server-side apply under one field manager, forced: the
operator owns exactly the fields it builds, repairs them when someone edits them, and
leaves fields it never sets (for example ``replicas`` under an autoscaler) to others.
"""

from __future__ import annotations

import json
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from zt_operator import FIELD_MANAGER

# kind -> (API class, method suffix of its typed client)
_KINDS: dict[str, tuple[type, str]] = {
    "Deployment": (client.AppsV1Api, "deployment"),
    "Service": (client.CoreV1Api, "service"),
    "HorizontalPodAutoscaler": (client.AutoscalingV2Api, "horizontal_pod_autoscaler"),
    "PodDisruptionBudget": (client.PolicyV1Api, "pod_disruption_budget"),
    "NetworkPolicy": (client.NetworkingV1Api, "network_policy"),
}
APPLY = "application/apply-patch+yaml"
TIMEOUT = 20
"""Seconds for one API request; a hung request must not stall a reconciliation forever."""


class KubeError(Exception):
    """An API call failed; the message says which call and why (for status conditions)."""


def login() -> None:
    """Use the pod's ServiceAccount in a cluster, else the local kubeconfig."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()


def _method(kind: str, verb: str):
    api_class, suffix = _KINDS[kind]
    return getattr(api_class(), f"{verb}_namespaced_{suffix}")


def _decode(response: Any) -> dict[str, Any]:
    data = getattr(response, "data", None)
    if data is None:
        data = response.read()
    return json.loads(data)


def _reason(exc: ApiException) -> str:
    try:
        return json.loads(exc.body).get("message") or exc.reason
    except (TypeError, ValueError):
        return f"{exc.status} {exc.reason}"


def apply(manifest: dict[str, Any]) -> dict[str, Any]:
    """Server-side apply ``manifest`` (creates it if missing); returns the live object."""
    meta = manifest["metadata"]
    try:
        response = _method(manifest["kind"], "patch")(
            meta["name"], meta["namespace"], manifest,
            field_manager=FIELD_MANAGER, force=True,
            _content_type=APPLY, _preload_content=False, _request_timeout=TIMEOUT,
        )
    except ApiException as exc:
        raise KubeError(f"applying {manifest['kind']} {meta['name']}: {_reason(exc)}") from None
    return _decode(response)


def replace_service_ports(namespace: str, name: str, ports: list[dict[str, Any]]) -> None:
    """Replace a Service's whole port list (a JSON patch; apply can only merge it)."""
    try:
        client.CoreV1Api().patch_namespaced_service(
            name, namespace, [{"op": "replace", "path": "/spec/ports", "value": ports}],
            field_manager=FIELD_MANAGER, _content_type="application/json-patch+json",
            _preload_content=False, _request_timeout=TIMEOUT,
        )
    except ApiException as exc:
        raise KubeError(f"repairing the ports of Service {name}: {_reason(exc)}") from None


def get(kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    """The live object, or None if it does not exist."""
    try:
        response = _method(kind, "read")(name, namespace, _preload_content=False, _request_timeout=TIMEOUT)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise KubeError(f"reading {kind} {name}: {_reason(exc)}") from None
    return _decode(response)


def delete(kind: str, namespace: str, name: str) -> bool:
    """Delete the object if it exists; returns whether there was one to delete."""
    try:
        _method(kind, "delete")(name, namespace, _preload_content=False, _request_timeout=TIMEOUT)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise KubeError(f"deleting {kind} {name}: {_reason(exc)}") from None
    return True
