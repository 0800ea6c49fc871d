"""Pure manifest builders: a ZeroTierRelay (plain dicts) to its children's manifests.

No API calls and no clock: every function takes the relay's ``body`` (or parts of it) and
returns new dicts, ready for server-side apply. Children have stable names (the relay's
name), carry the relay as their controlling owner (so deleting the relay garbage-collects
them) and the ``app.kubernetes.io/*`` labels. The API server applies the CRD's defaults;
``with_defaults`` applies the same ones again so a body missing them (a unit test, an old
object) still builds the same children.
"""

from __future__ import annotations

import copy
import ipaddress
import json
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from zt_operator import API_VERSION, KIND, crd

TUNNEL_PORT = 8443
"""The relay's TCP port in the container (non-root, so above 1024); the Service maps to it."""
HEALTH_PORT = 9090
"""The relay's /healthz, /readyz and /metrics port."""
PRESTOP_SLEEP_SECONDS = 5
"""Seconds a stopping pod keeps accepting before SIGTERM: load balancers and kube-proxy
need a moment to stop sending new connections to it."""
SHUTDOWN_DELAY_SECONDS = 5
"""The relay's ``--shutdown-delay``: after SIGTERM its readiness fails at once while its
listeners keep accepting this long (endpoints and load balancers converge), then it drains."""
GRACE_MARGIN_SECONDS = 10
"""Extra seconds of termination grace beyond pre-stop sleep + shutdown delay + drain, so
the kubelet's SIGKILL never lands while tunnels are still draining."""
COMPONENT = "relay"
MANAGED_BY = "zt-relay-operator"

DEFAULTS: dict[str, Any] = crd.spec_defaults(crd.packaged())
"""The CRD's defaults for ``spec`` (the API server applies them; ``with_defaults`` applies
them again for bodies without them: unit tests, objects from before a default existed)."""

# spec.relay field -> (relay environment variable, kind). Kinds: "list" joins with commas,
# "bool" writes true/false, anything else is written as the number or string it is.
RELAY_ENV: dict[str, tuple[str, str]] = {
    "allowDestinations": ("ZT_RELAY_ALLOW_DESTINATION", "list"),
    "denyDestinations": ("ZT_RELAY_DENY_DESTINATION", "list"),
    "minDestinationPort": ("ZT_RELAY_MIN_DESTINATION_PORT", "value"),
    "maxRecordSize": ("ZT_RELAY_MAX_RECORD_SIZE", "value"),
    "minPacketSize": ("ZT_RELAY_MIN_PACKET_SIZE", "value"),
    "handshakeTimeoutSeconds": ("ZT_RELAY_HANDSHAKE_TIMEOUT", "value"),
    "idleTimeoutSeconds": ("ZT_RELAY_IDLE_TIMEOUT", "value"),
    "replyWindowSeconds": ("ZT_RELAY_REPLY_WINDOW", "value"),
    "maxConnections": ("ZT_RELAY_MAX_CONNECTIONS", "value"),
    "maxConnectionsPerIP": ("ZT_RELAY_MAX_CONNECTIONS_PER_IP", "value"),
    "tunnelRatePPS": ("ZT_RELAY_TUNNEL_RATE_PPS", "value"),
    "tunnelRateBPS": ("ZT_RELAY_TUNNEL_RATE_BPS", "value"),
    "globalRatePPS": ("ZT_RELAY_GLOBAL_RATE_PPS", "value"),
    "globalRateBPS": ("ZT_RELAY_GLOBAL_RATE_BPS", "value"),
    "writeBufferLimit": ("ZT_RELAY_WRITE_BUFFER_LIMIT", "value"),
    "proxyProtocol": ("ZT_RELAY_PROXY_PROTOCOL", "bool"),
    "legacyTarget": ("ZT_RELAY_LEGACY_TARGET", "value"),
    "drainSeconds": ("ZT_RELAY_DRAIN_TIMEOUT", "value"),
    "workers": ("ZT_RELAY_WORKERS", "value"),
    "logFormat": ("ZT_RELAY_LOG_FORMAT", "value"),
    "logLevel": ("ZT_RELAY_LOG_LEVEL", "value"),
}

# spec.fallback field -> relay environment variable (besides the backend address itself).
FALLBACK_ENV: dict[str, str] = {
    "proxyProtocol": "ZT_RELAY_FALLBACK_PROXY_PROTOCOL",
    "sniffTimeoutSeconds": "ZT_RELAY_SNIFF_TIMEOUT",
    "maxConnections": "ZT_RELAY_FALLBACK_MAX_CONNECTIONS",
    "idleTimeoutSeconds": "ZT_RELAY_FALLBACK_IDLE_TIMEOUT",
    "preconnect": "ZT_RELAY_FALLBACK_PRECONNECT",
}


def with_defaults(spec: Mapping[str, Any] | None) -> dict[str, Any]:
    """A deep copy of ``spec`` with ``DEFAULTS`` filled in where keys are absent.

    Like the API server's structural defaulting, a present object keeps its own keys and
    gains only the missing ones; ``resources`` is taken whole when given.
    """
    def merge(defaults: Mapping[str, Any], given: Mapping[str, Any], path: str) -> dict[str, Any]:
        merged = copy.deepcopy(dict(given))
        for key, default in defaults.items():
            if key not in merged:
                merged[key] = copy.deepcopy(default)
            elif isinstance(default, dict) and isinstance(merged[key], dict) and f"{path}{key}" != "resources":
                merged[key] = merge(default, merged[key], f"{path}{key}.")
        return merged
    return merge(DEFAULTS, spec or {}, "")


def selector_labels(name: str) -> dict[str, str]:
    """Labels selecting one relay's pods; part of the immutable Deployment selector."""
    return {
        "app.kubernetes.io/name": "zt-relay",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/component": COMPONENT,
    }


def labels(name: str) -> dict[str, str]:
    """The labels every child of relay ``name`` carries."""
    return {
        **selector_labels(name),
        "app.kubernetes.io/part-of": "zt-relay",
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }


def selector_string(name: str) -> str:
    """The pod selector as ``kubectl -l`` text; the scale subresource reports it."""
    return ",".join(f"{k}={v}" for k, v in selector_labels(name).items())


def owner_reference(body: Mapping[str, Any]) -> dict[str, Any]:
    """The controlling owner reference to the relay: garbage collection deletes children
    with the relay, and another controller cannot claim them (strict adoption)."""
    meta = body["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(body: Mapping[str, Any], extra_annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    meta = body["metadata"]
    out: dict[str, Any] = {
        "name": meta["name"],
        "namespace": meta["namespace"],
        "labels": labels(meta["name"]),
        "ownerReferences": [owner_reference(body)],
    }
    if extra_annotations:
        out["annotations"] = dict(extra_annotations)
    return out


def _env_value(value: Any, kind: str) -> str:
    if kind == "list":
        return ",".join(str(v) for v in value)
    if kind == "bool":
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def relay_env(body: Mapping[str, Any], own_addresses: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The relay container's environment: listen addresses, ``spec.relay`` fields as
    ``ZT_RELAY_*`` (absent fields keep the relay's own defaults) and OpenTelemetry.

    ``ZT_RELAY_OWN_ADDRESS``: addresses the relay refuses as UDP destinations, so a client
    cannot make it send to its own node or its own load balancer: the node's IPs (downward
    API) and ``own_addresses`` (the Service's load-balancer IPs, once known).
    """
    spec = with_defaults(body.get("spec"))
    env: list[dict[str, Any]] = [
        {"name": "ZT_RELAY_LISTEN", "value": f"0.0.0.0:{TUNNEL_PORT}"},
        {"name": "ZT_RELAY_HEALTH_LISTEN", "value": f"0.0.0.0:{HEALTH_PORT}"},
        {"name": "ZT_RELAY_SHUTDOWN_DELAY", "value": str(SHUTDOWN_DELAY_SECONDS)},
        # Downward API first: $(ZT_HOST_IPS) below expands only earlier variables.
        {"name": "ZT_HOST_IPS", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIPs"}}},
        {"name": "ZT_RELAY_OWN_ADDRESS", "value": ",".join(["$(ZT_HOST_IPS)", *own_addresses])},
    ]
    relay = spec["relay"]
    for field, (variable, kind) in RELAY_ENV.items():
        if field in relay and relay[field] is not None:
            env.append({"name": variable, "value": _env_value(relay[field], kind)})
    backend = fallback_address(body)
    if backend is not None:
        env.append({"name": "ZT_RELAY_FALLBACK", "value": backend})
        for field, variable in FALLBACK_ENV.items():
            if spec["fallback"].get(field) is not None:
                env.append({"name": variable, "value": _env_value(spec["fallback"][field], "value")})
    telemetry = spec.get("telemetry") or {}
    if telemetry.get("otlpEndpoint"):
        meta = body["metadata"]
        attributes = {
            "k8s.namespace.name": meta["namespace"],
            "k8s.deployment.name": meta["name"],
            "k8s.pod.name": "$(ZT_POD_NAME)",
            **(telemetry.get("resourceAttributes") or {}),
        }
        env += [
            # Downward API first: $(ZT_POD_NAME) below expands only to earlier variables.
            {"name": "ZT_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": telemetry["otlpEndpoint"]},
            {"name": "OTEL_SERVICE_NAME", "value": telemetry.get("serviceName") or "zt-relay"},
            {"name": "OTEL_RESOURCE_ATTRIBUTES",
             "value": ",".join(f"{k}={v}" for k, v in attributes.items())},
        ]
        if telemetry.get("metricExportIntervalSeconds"):
            env.append({"name": "OTEL_METRIC_EXPORT_INTERVAL",
                        "value": str(int(telemetry["metricExportIntervalSeconds"] * 1000))})
    return env


def fallback_address(body: Mapping[str, Any]) -> str | None:
    """``spec.fallback`` as the relay's ``--fallback`` value: ``address`` as it is, or the
    Service's cluster DNS name (``NAME.NAMESPACE.svc:PORT``, the relay's namespace by
    default); None without a fallback."""
    fallback = (body.get("spec") or {}).get("fallback")
    if not fallback:
        return None
    if fallback.get("address"):
        return fallback["address"]
    namespace = fallback.get("namespace") or body["metadata"]["namespace"]
    return f"{fallback['service']}.{namespace}.svc:{fallback['port']}"


def fallback_service_ref(body: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(namespace, name)`` of the fallback Service whose pods the egress policy must
    reach, or None (no fallback, or an ``address``)."""
    fallback = (body.get("spec") or {}).get("fallback")
    if not fallback or not fallback.get("service"):
        return None
    return fallback.get("namespace") or body["metadata"]["namespace"], fallback["service"]


def termination_grace_seconds(spec: Mapping[str, Any]) -> int:
    """Pre-stop sleep + shutdown delay + drain time + a margin: SIGKILL only after draining ends."""
    drain = with_defaults(spec)["relay"]["drainSeconds"]
    return PRESTOP_SLEEP_SECONDS + SHUTDOWN_DELAY_SECONDS + int(-(-drain // 1)) + GRACE_MARGIN_SECONDS


def deployment(body: Mapping[str, Any], *, default_image: str, default_pull_policy: str,
               own_addresses: Sequence[str] = ()) -> dict[str, Any]:
    """The relay Deployment. Without autoscaling it sets ``replicas`` from the spec; with
    autoscaling it leaves ``replicas`` out entirely, so server-side apply never takes the
    field back from the HorizontalPodAutoscaler."""
    spec = with_defaults(body.get("spec"))
    name = body["metadata"]["name"]
    restricted = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    container: dict[str, Any] = {
        "name": "relay",
        "image": spec.get("image") or default_image,
        "imagePullPolicy": spec.get("imagePullPolicy") or default_pull_policy,
        "env": relay_env(body, own_addresses),
        "ports": [
            {"name": "tunnel", "containerPort": TUNNEL_PORT, "protocol": "TCP"},
            {"name": "health", "containerPort": HEALTH_PORT, "protocol": "TCP"},
        ],
        # Every second until the health server answers (up to 2 minutes); the kubelet runs
        # the readiness probe as soon as it passes, so a new pod (a scale-up under load, a
        # rollout) takes tunnels ~1 s after it answers, not at the readiness probe's next
        # 5 s tick. Liveness and readiness start after it.
        "startupProbe": {
            "httpGet": {"path": "/healthz", "port": "health"},
            "periodSeconds": 1, "timeoutSeconds": 3, "failureThreshold": 120,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "health"},
            "periodSeconds": 10, "timeoutSeconds": 3, "failureThreshold": 3,
        },
        # /readyz turns 503 at SIGTERM: a draining pod leaves the Service at once.
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "health"},
            "periodSeconds": 5, "timeoutSeconds": 3, "failureThreshold": 1,
        },
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SLEEP_SECONDS}}},
        "resources": copy.deepcopy(spec["resources"]),
        "securityContext": restricted,
        # The root filesystem is read-only; a library needing a scratch file gets /tmp.
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    pod_labels = {**(spec.get("podLabels") or {}), **labels(name)}
    template_meta: dict[str, Any] = {"labels": pod_labels}
    if spec.get("podAnnotations"):
        template_meta["annotations"] = dict(spec["podAnnotations"])
    pod_spec: dict[str, Any] = {
        # Relays never talk to the API server.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": termination_grace_seconds(spec),
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "16Mi"}}],
        "topologySpreadConstraints": copy.deepcopy(spec.get("topologySpreadConstraints")) or [{
            # Spread across nodes, but still schedule on a single-node cluster.
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": selector_labels(name)},
        }],
    }
    for key in ("nodeSelector", "tolerations", "affinity", "priorityClassName", "imagePullSecrets"):
        if spec.get(key):
            pod_spec[key] = copy.deepcopy(spec[key])
    deployment_spec: dict[str, Any] = {
        "selector": {"matchLabels": selector_labels(name)},
        # Never take a serving pod away before its replacement is ready: each lost pod
        # cuts every tunnel on it.
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        "revisionHistoryLimit": 5,
        "template": {"metadata": template_meta, "spec": pod_spec},
    }
    if not spec["autoscaling"]["enabled"]:
        deployment_spec["replicas"] = spec["replicas"]
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _metadata(body), "spec": deployment_spec}


def service(body: Mapping[str, Any]) -> dict[str, Any]:
    """The Service in front of the relays: ``port`` (443) to the pods' tunnel port."""
    spec = with_defaults(body.get("spec"))
    svc = spec["service"]
    name = body["metadata"]["name"]
    service_spec: dict[str, Any] = {
        "type": svc["type"],
        "selector": selector_labels(name),
        "ports": [{"name": "tunnel", "port": svc["port"], "targetPort": "tunnel", "protocol": "TCP"}],
    }
    if svc["type"] != "ClusterIP":
        # Local keeps the client's source address (the relay's per-IP limits need it) and
        # sends traffic only to nodes with a ready relay pod.
        service_spec["externalTrafficPolicy"] = svc["externalTrafficPolicy"]
    if svc["type"] == "LoadBalancer":
        # loadBalancerIP: a requested static address (deprecated upstream, still honoured by
        # most implementations); cloud-specific ones go in annotations.
        for key in ("loadBalancerSourceRanges", "loadBalancerClass", "loadBalancerIP"):
            if svc.get(key):
                service_spec[key] = copy.deepcopy(svc[key])
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(body, svc.get("annotations")),
        "spec": service_spec,
    }


def horizontal_pod_autoscaler(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """The CPU autoscaler of the relay Deployment, or None when autoscaling is off.

    Scale-down is slow on purpose: every pod removed cuts its tunnels (clients reconnect),
    so it waits out a stabilization window and then removes one pod per minute at most.
    """
    spec = with_defaults(body.get("spec"))
    auto = spec["autoscaling"]
    if not auto["enabled"]:
        return None
    name = body["metadata"]["name"]
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(body),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": auto["minReplicas"],
            "maxReplicas": auto["maxReplicas"],
            "metrics": [{
                "type": "Resource",
                "resource": {
                    "name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": auto["targetCPUUtilizationPercentage"]},
                },
            }],
            "behavior": {
                "scaleDown": {
                    "stabilizationWindowSeconds": auto["scaleDownStabilizationSeconds"],
                    "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}],
                    "selectPolicy": "Min",
                },
            },
        },
    }


def pod_disruption_budget(body: Mapping[str, Any]) -> dict[str, Any]:
    """Voluntary evictions (node drains) take at most ``maxUnavailable`` relays at a time."""
    spec = with_defaults(body.get("spec"))
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(body),
        "spec": {
            "selector": {"matchLabels": selector_labels(body["metadata"]["name"])},
            "maxUnavailable": spec["podDisruptionBudget"]["maxUnavailable"],
            # A pod that is not ready carries no tunnels: evicting it never hurts.
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def network_policy(body: Mapping[str, Any], backend_service: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """Ingress to relay pods: tunnels from anywhere, health and metrics only from
    ``networkPolicy.metricsFrom`` peers (the kubelet's probes are not subject to it).
    None when ``networkPolicy.enabled`` is false.

    With ``spec.fallback`` the policy also limits egress (``fallback_egress``);
    ``backend_service`` is the fallback Service as read from the API (None: not found)."""
    spec = with_defaults(body.get("spec"))
    policy = spec["networkPolicy"]
    if not policy["enabled"]:
        return None
    ingress: list[dict[str, Any]] = [{"ports": [{"port": TUNNEL_PORT, "protocol": "TCP"}]}]
    if policy.get("metricsFrom"):
        ingress.append({
            "from": copy.deepcopy(policy["metricsFrom"]),
            "ports": [{"port": HEALTH_PORT, "protocol": "TCP"}],
        })
    policy_spec: dict[str, Any] = {
        "podSelector": {"matchLabels": selector_labels(body["metadata"]["name"])},
        "policyTypes": ["Ingress"],
        "ingress": ingress,
    }
    if spec.get("fallback"):
        policy_spec["policyTypes"] = ["Ingress", "Egress"]
        policy_spec["egress"] = fallback_egress(body, backend_service)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(body),
        "spec": policy_spec,
    }


def fallback_egress(body: Mapping[str, Any], backend_service: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Egress of a relay with a fallback: what the relay needs, and TCP only to the backend.

    - UDP anywhere: tunnels (the relay's own destination filter decides), DNS included;
    - TCP 53 (DNS over TCP) and the OTLP endpoint's port, if telemetry is on;
    - the backend: a Service's pods (its namespace, its selector, the target port of the
      port named in ``spec.fallback.port``), or an ``address``'s IP and port. A Service
      not found (yet), or one without a selector, opens nothing: the site is unreachable
      from the relay until it exists, and the operator rebuilds this on its next pass.
    """
    spec = with_defaults(body.get("spec"))
    egress: list[dict[str, Any]] = [
        {"ports": [{"protocol": "UDP"}]},
        {"ports": [{"protocol": "TCP", "port": 53}]},
    ]
    endpoint = (spec.get("telemetry") or {}).get("otlpEndpoint")
    if endpoint:
        parts = urlsplit(endpoint)
        egress.append({"ports": [{"protocol": "TCP", "port": parts.port or (443 if parts.scheme == "https" else 80)}]})
    fallback = spec["fallback"]
    if fallback.get("address"):
        host, _, port = fallback["address"].rpartition(":")
        host = host.strip("[]")
        rule: dict[str, Any] = {"ports": [{"protocol": "TCP", "port": int(port)}]}
        try:
            ip = ipaddress.ip_address(host)
            rule["to"] = [{"ipBlock": {"cidr": f"{ip}/{ip.max_prefixlen}"}}]
        except ValueError:
            pass  # a DNS name can't be put in a NetworkPolicy: that port is open to all
        egress.append(rule)
        return egress
    selector = ((backend_service or {}).get("spec") or {}).get("selector")
    if not selector:
        return egress
    target: Any = fallback["port"]
    for port in backend_service["spec"].get("ports") or []:
        if port.get("port") == fallback["port"] and port.get("protocol", "TCP") == "TCP":
            target = port.get("targetPort", port["port"])
    namespace = backend_service["metadata"]["namespace"]
    egress.append({
        "to": [{
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            "podSelector": {"matchLabels": dict(selector)},
        }],
        "ports": [{"protocol": "TCP", "port": target}],
    })
    return egress


def client_config(address: str | None, port: int) -> str | None:
    """The ``local.conf`` text a ZeroTier node needs to fall back to this relay."""
    if not address:
        return None
    return json.dumps({"settings": {"tcpFallbackRelay": f"{address}/{port}"}})
