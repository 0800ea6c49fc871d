"""The pure manifest builders: every spec field lands where it should."""

from __future__ import annotations

import json
import re

import pytest

from tests.zt_operator.conftest import IMAGE, RELAY_UID, relay_body
from zt_operator import builders


ALWAYS = {
    "ZT_RELAY_SHUTDOWN_DELAY": str(builders.SHUTDOWN_DELAY_SECONDS),
    "ZT_HOST_IPS": {"fieldRef": {"fieldPath": "status.hostIPs"}},
    "ZT_RELAY_OWN_ADDRESS": "$(ZT_HOST_IPS)",
}
"""Variables every relay pod gets, whatever the spec."""


def build_deployment(spec=None, **kwargs):
    return builders.deployment(relay_body(spec, **kwargs), default_image=IMAGE, default_pull_policy="IfNotPresent")


def container(deployment):
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def env(deployment) -> dict[str, str]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(deployment)["env"]}


ALL_CHILDREN = [
    lambda b: builders.deployment(b, default_image=IMAGE, default_pull_policy="Never"),
    builders.service,
    builders.pod_disruption_budget,
    builders.horizontal_pod_autoscaler,
    builders.network_policy,
]
ENABLED = {"autoscaling": {"enabled": True}, "networkPolicy": {"enabled": True}}


@pytest.mark.parametrize("build", ALL_CHILDREN, ids=["deployment", "service", "pdb", "hpa", "networkpolicy"])
def test_every_child_is_named_after_the_relay_and_controlled_by_it(build):
    child = build(relay_body(ENABLED, name="edge", namespace="relays"))
    meta = child["metadata"]
    assert (meta["name"], meta["namespace"]) == ("edge", "relays")
    assert meta["ownerReferences"] == [{
        "apiVersion": "relay.zt-relay.dev/v1alpha1", "kind": "ZeroTierRelay", "name": "edge",
        "uid": RELAY_UID, "controller": True, "blockOwnerDeletion": True,
    }]
    assert meta["labels"] == {
        "app.kubernetes.io/name": "zt-relay",
        "app.kubernetes.io/instance": "edge",
        "app.kubernetes.io/component": "relay",
        "app.kubernetes.io/part-of": "zt-relay",
        "app.kubernetes.io/managed-by": "zt-relay-operator",
    }


def test_the_deployment_runs_the_relay_on_8443_with_health_on_9090_by_default():
    deployment = build_deployment()
    relay = container(deployment)
    assert deployment["spec"]["replicas"] == 2
    assert relay["image"] == IMAGE and relay["imagePullPolicy"] == "IfNotPresent"
    assert {p["name"]: p["containerPort"] for p in relay["ports"]} == {"tunnel": 8443, "health": 9090}
    assert env(deployment) == {
        "ZT_RELAY_LISTEN": "0.0.0.0:8443",
        "ZT_RELAY_HEALTH_LISTEN": "0.0.0.0:9090",
        **ALWAYS,
        "ZT_RELAY_DRAIN_TIMEOUT": "30",
        "ZT_RELAY_LOG_FORMAT": "json",
    }
    assert relay["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert relay["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert relay["resources"] == {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}}


def test_a_new_relay_pod_is_ready_a_second_after_it_answers_not_at_the_next_5_s_tick():
    """A startup probe every second on /healthz; the kubelet runs the readiness probe as soon
    as it passes (kubelet prober_manager.UpdatePodStatus), so a scaled-up or rolled pod takes
    tunnels ~1 s after its health server answers instead of up to 5 s later."""
    relay = container(build_deployment())
    assert relay["startupProbe"] == {
        "httpGet": {"path": "/healthz", "port": "health"},
        "periodSeconds": 1, "timeoutSeconds": 3, "failureThreshold": 120,
    }
    assert relay["readinessProbe"]["periodSeconds"] == 5  # a draining pod still leaves within 5 s


def test_relay_pods_meet_pod_security_restricted():
    pod = build_deployment()["spec"]["template"]["spec"]
    security = container({"spec": {"template": {"spec": pod}}})["securityContext"]
    assert security == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    assert {"name": "tmp", "mountPath": "/tmp"} in container({"spec": {"template": {"spec": pod}}})["volumeMounts"]


def test_rollouts_never_take_a_serving_pod_away_before_its_replacement_is_ready():
    strategy = build_deployment()["spec"]["strategy"]
    assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}


@pytest.mark.parametrize("drain, grace", [(30, 50), (0, 20), (600, 620)], ids=["default", "no-drain", "long"])
def test_termination_grace_is_the_pre_stop_sleep_plus_the_shutdown_delay_plus_the_drain_plus_a_margin(drain, grace):
    deployment = build_deployment({"relay": {"drainSeconds": drain}})
    pod = deployment["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == grace == (
        builders.PRESTOP_SLEEP_SECONDS + builders.SHUTDOWN_DELAY_SECONDS + drain + builders.GRACE_MARGIN_SECONDS)
    assert container(deployment)["lifecycle"]["preStop"] == {"sleep": {"seconds": builders.PRESTOP_SLEEP_SECONDS}}
    assert env(deployment)["ZT_RELAY_DRAIN_TIMEOUT"] == str(drain)
    assert env(deployment)["ZT_RELAY_SHUTDOWN_DELAY"] == str(builders.SHUTDOWN_DELAY_SECONDS)


def test_the_relay_refuses_its_own_node_and_load_balancer_addresses_as_destinations():
    deployment = builders.deployment(relay_body(), default_image=IMAGE, default_pull_policy="IfNotPresent",
                                     own_addresses=["198.51.100.7", "2001:db8::7"])
    variables = container(deployment)["env"]
    names = [v["name"] for v in variables]
    # The downward API variable comes first: $(ZT_HOST_IPS) expands only earlier variables.
    assert names.index("ZT_HOST_IPS") < names.index("ZT_RELAY_OWN_ADDRESS")
    host_ips = next(v for v in variables if v["name"] == "ZT_HOST_IPS")
    assert host_ips["valueFrom"] == {"fieldRef": {"fieldPath": "status.hostIPs"}}
    assert env(deployment)["ZT_RELAY_OWN_ADDRESS"] == "$(ZT_HOST_IPS),198.51.100.7,2001:db8::7"
    without = builders.deployment(relay_body(), default_image=IMAGE, default_pull_policy="IfNotPresent")
    assert env(without)["ZT_RELAY_OWN_ADDRESS"] == "$(ZT_HOST_IPS)"


def test_every_relay_field_becomes_its_zt_relay_variable():
    relay = {
        "allowDestinations": ["10.1.0.0/16", "fd00::/8"], "denyDestinations": ["10.1.2.0/24"],
        "minDestinationPort": 9993, "maxRecordSize": 4096, "minPacketSize": 20,
        "handshakeTimeoutSeconds": 2.5, "idleTimeoutSeconds": 60, "replyWindowSeconds": 30,
        "maxConnections": 500, "maxConnectionsPerIP": 8, "tunnelRatePPS": 100, "tunnelRateBPS": 1e6,
        "globalRatePPS": 5000, "globalRateBPS": 2.5e7, "writeBufferLimit": 65536, "proxyProtocol": True,
        "legacyTarget": "192.0.2.7:9993", "drainSeconds": 12, "workers": 2, "logFormat": "text", "logLevel": "DEBUG",
    }
    assert set(relay) == set(builders.RELAY_ENV), "the test must cover every mapped field"
    variables = env(build_deployment({"relay": relay}))
    assert variables == {
        "ZT_RELAY_LISTEN": "0.0.0.0:8443", "ZT_RELAY_HEALTH_LISTEN": "0.0.0.0:9090", **ALWAYS,
        "ZT_RELAY_ALLOW_DESTINATION": "10.1.0.0/16,fd00::/8", "ZT_RELAY_DENY_DESTINATION": "10.1.2.0/24",
        "ZT_RELAY_MIN_DESTINATION_PORT": "9993", "ZT_RELAY_MAX_RECORD_SIZE": "4096", "ZT_RELAY_MIN_PACKET_SIZE": "20",
        "ZT_RELAY_HANDSHAKE_TIMEOUT": "2.5", "ZT_RELAY_IDLE_TIMEOUT": "60", "ZT_RELAY_REPLY_WINDOW": "30",
        "ZT_RELAY_MAX_CONNECTIONS": "500", "ZT_RELAY_MAX_CONNECTIONS_PER_IP": "8",
        "ZT_RELAY_TUNNEL_RATE_PPS": "100", "ZT_RELAY_TUNNEL_RATE_BPS": "1000000",
        "ZT_RELAY_GLOBAL_RATE_PPS": "5000", "ZT_RELAY_GLOBAL_RATE_BPS": "25000000",
        "ZT_RELAY_WRITE_BUFFER_LIMIT": "65536", "ZT_RELAY_PROXY_PROTOCOL": "true",
        "ZT_RELAY_LEGACY_TARGET": "192.0.2.7:9993", "ZT_RELAY_DRAIN_TIMEOUT": "12", "ZT_RELAY_WORKERS": "2",
        "ZT_RELAY_LOG_FORMAT": "text", "ZT_RELAY_LOG_LEVEL": "DEBUG",
    }


DOWNWARD_API = {"status.hostIPs": "10.0.0.5,fd00::5", "metadata.name": "edge-6b7f9-x2k4p"}
"""What the kubelet puts in the downward-API variables, for the test below."""


def kubelet_expanded(variables: list[dict]) -> dict[str, str]:
    """The environment as the kubelet gives it: downward-API values filled in, and
    $(NAME) references to earlier variables expanded."""
    out: dict[str, str] = {}
    for variable in variables:
        if "valueFrom" in variable:
            value = DOWNWARD_API[variable["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            value = re.sub(r"\$\((\w+)\)", lambda m: out.get(m.group(1), m.group(0)), variable["value"])
        out[variable["name"]] = value
    return out


def test_the_relay_parses_the_environment_the_operator_writes():
    from relay import cli

    relay = {"allowDestinations": ["10.1.0.0/16"], "handshakeTimeoutSeconds": 2.5, "proxyProtocol": False,
             "maxConnectionsPerIP": 8, "tunnelRateBPS": 1e6, "legacyTarget": "192.0.2.7:9993", "drainSeconds": 12}
    variables = kubelet_expanded(container(build_deployment({"relay": relay}))["env"])
    config = cli.parse_config([], variables)
    assert config.allow_destination == ("10.1.0.0/16",)
    assert (config.handshake_timeout, config.proxy_protocol, config.max_connections_per_ip) == (2.5, False, 8)
    assert (config.tunnel_rate_bps, config.drain_timeout) == (1e6, 12)
    assert config.listen[0].port == 8443 and config.health_listen.port == 9090
    # The node's IPs (downward API) are refused as destinations.
    assert config.own_address == ("10.0.0.5", "fd00::5")


def test_telemetry_sets_the_opentelemetry_variables_with_pod_identity():
    deployment = build_deployment({"telemetry": {
        "otlpEndpoint": "http://collector.monitoring:4318", "serviceName": "edge-relay",
        "resourceAttributes": {"deployment.environment": "prod"}, "metricExportIntervalSeconds": 15,
    }})
    names = [e["name"] for e in container(deployment)["env"]]
    variables = env(deployment)
    assert variables["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://collector.monitoring:4318"
    assert variables["OTEL_SERVICE_NAME"] == "edge-relay"
    assert variables["OTEL_METRIC_EXPORT_INTERVAL"] == "15000"
    assert variables["OTEL_RESOURCE_ATTRIBUTES"] == (
        "k8s.namespace.name=relays,k8s.deployment.name=edge,k8s.pod.name=$(ZT_POD_NAME),deployment.environment=prod")
    # Kubernetes expands $(VAR) only from variables defined earlier in the list.
    assert names.index("ZT_POD_NAME") < names.index("OTEL_RESOURCE_ATTRIBUTES")
    assert variables["ZT_POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_no_telemetry_variables_without_an_endpoint():
    assert not [n for n in env(build_deployment({"telemetry": {"serviceName": "x"}})) if n.startswith("OTEL_")]


def test_image_resources_and_pod_extras_are_passed_through():
    extras = {
        "nodeSelector": {"edge": "true"},
        "tolerations": [{"key": "edge", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}}},
        "topologySpreadConstraints": [{"maxSkew": 2, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule"}],
        "priorityClassName": "relay-critical",
        "imagePullSecrets": [{"name": "registry"}],
    }
    spec = {"image": "registry.example/zt-relay:1.2.3", "imagePullPolicy": "Always",
            "resources": {"requests": {"cpu": "1"}}, "podAnnotations": {"a": "b"},
            "podLabels": {"team": "net", "app.kubernetes.io/instance": "hijack"}, **extras}
    deployment = build_deployment(spec)
    template = deployment["spec"]["template"]
    for key, value in extras.items():
        assert template["spec"][key] == value, key
    assert container(deployment)["image"] == "registry.example/zt-relay:1.2.3"
    assert container(deployment)["imagePullPolicy"] == "Always"
    assert container(deployment)["resources"] == {"requests": {"cpu": "1"}}
    assert template["metadata"]["annotations"] == {"a": "b"}
    # Extra pod labels are added, but never override the selector's.
    assert template["metadata"]["labels"]["team"] == "net"
    assert template["metadata"]["labels"]["app.kubernetes.io/instance"] == "edge"


def test_pods_spread_across_nodes_by_default_but_still_schedule_on_one_node():
    (spread,) = build_deployment()["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["whenUnsatisfiable"] == "ScheduleAnyway"
    assert spread["labelSelector"]["matchLabels"] == builders.selector_labels("edge")


def test_the_selector_is_the_stable_subset_of_the_pod_labels():
    deployment = build_deployment({"podLabels": {"team": "net"}})
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector == builders.selector_labels("edge")
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert builders.selector_string("edge") == (
        "app.kubernetes.io/name=zt-relay,app.kubernetes.io/instance=edge,app.kubernetes.io/component=relay")


def test_with_autoscaling_the_deployment_leaves_replicas_to_the_autoscaler():
    assert "replicas" not in build_deployment({"replicas": 5, "autoscaling": {"enabled": True}})["spec"]
    assert build_deployment({"replicas": 5})["spec"]["replicas"] == 5


def test_the_service_maps_443_to_the_tunnel_port_and_keeps_client_addresses():
    service = builders.service(relay_body())
    assert service["spec"] == {
        "type": "LoadBalancer",
        "selector": builders.selector_labels("edge"),
        "ports": [{"name": "tunnel", "port": 443, "targetPort": "tunnel", "protocol": "TCP"}],
        "externalTrafficPolicy": "Local",
    }
    assert "annotations" not in service["metadata"]


def test_service_fields_are_passed_through():
    service = builders.service(relay_body({"service": {
        "port": 8443, "externalTrafficPolicy": "Cluster", "annotations": {"lb.example/internal": "false"},
        "loadBalancerSourceRanges": ["198.51.100.0/24"], "loadBalancerClass": "example.com/lb",
    }}))
    assert service["metadata"]["annotations"] == {"lb.example/internal": "false"}
    assert service["spec"]["ports"][0]["port"] == 8443
    assert service["spec"]["externalTrafficPolicy"] == "Cluster"
    assert service["spec"]["loadBalancerSourceRanges"] == ["198.51.100.0/24"]
    assert service["spec"]["loadBalancerClass"] == "example.com/lb"


def test_a_cluster_ip_service_has_no_external_traffic_policy():
    service = builders.service(relay_body({"service": {"type": "ClusterIP"}}))
    assert service["spec"]["type"] == "ClusterIP"
    assert "externalTrafficPolicy" not in service["spec"]


def test_the_autoscaler_targets_the_deployment_on_cpu_and_scales_down_slowly():
    hpa = builders.horizontal_pod_autoscaler(relay_body({"autoscaling": {
        "enabled": True, "minReplicas": 3, "maxReplicas": 9, "targetCPUUtilizationPercentage": 55,
        "scaleDownStabilizationSeconds": 900,
    }}))
    spec = hpa["spec"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "edge"}
    assert (spec["minReplicas"], spec["maxReplicas"]) == (3, 9)
    assert spec["metrics"][0]["resource"] == {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 55}}
    assert spec["behavior"]["scaleDown"] == {
        "stabilizationWindowSeconds": 900,
        "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}],
        "selectPolicy": "Min",
    }


def test_no_autoscaler_or_network_policy_unless_enabled():
    assert builders.horizontal_pod_autoscaler(relay_body()) is None
    assert builders.network_policy(relay_body()) is None


def test_the_disruption_budget_covers_the_relay_pods():
    pdb = builders.pod_disruption_budget(relay_body({"podDisruptionBudget": {"maxUnavailable": "25%"}}))
    assert pdb["spec"]["selector"] == {"matchLabels": builders.selector_labels("edge")}
    assert pdb["spec"]["maxUnavailable"] == "25%"
    assert builders.pod_disruption_budget(relay_body())["spec"]["maxUnavailable"] == 1


def test_the_network_policy_opens_tunnels_to_all_and_metrics_to_the_named_peers():
    peers = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    policy = builders.network_policy(relay_body({"networkPolicy": {"enabled": True, "metricsFrom": peers}}))
    assert policy["spec"]["podSelector"] == {"matchLabels": builders.selector_labels("edge")}
    assert policy["spec"]["ingress"] == [
        {"ports": [{"port": 8443, "protocol": "TCP"}]},
        {"from": peers, "ports": [{"port": 9090, "protocol": "TCP"}]},
    ]


def test_with_defaults_fills_missing_keys_and_keeps_given_ones():
    spec = builders.with_defaults({"autoscaling": {"maxReplicas": 4}, "resources": {"limits": {"cpu": "2"}}})
    assert spec["autoscaling"] == {**builders.DEFAULTS["autoscaling"], "maxReplicas": 4}
    assert spec["resources"] == {"limits": {"cpu": "2"}}  # resources are taken whole
    assert spec["service"]["port"] == 443
    assert builders.DEFAULTS["autoscaling"]["maxReplicas"] == 10  # not mutated


def test_the_client_config_is_the_local_conf_snippet_for_the_address():
    assert json.loads(builders.client_config("198.51.100.7", 443)) == {"settings": {"tcpFallbackRelay": "198.51.100.7/443"}}
    assert builders.client_config(None, 443) is None


def test_a_requested_static_load_balancer_address_is_passed_through():
    service = builders.service(relay_body({"service": {"loadBalancerIP": "198.51.100.20",
                                                       "annotations": {"metallb.universe.tf/loadBalancerIPs": "198.51.100.20"}}}))
    assert service["spec"]["loadBalancerIP"] == "198.51.100.20"
    assert service["metadata"]["annotations"] == {"metallb.universe.tf/loadBalancerIPs": "198.51.100.20"}


SITE_SERVICE = {
    "metadata": {"name": "ingress-nginx-controller", "namespace": "ingress-nginx"},
    "spec": {
        "selector": {"app.kubernetes.io/name": "ingress-nginx", "app.kubernetes.io/component": "controller"},
        "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"},
                  {"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP"}],
    },
}
FALLBACK_SERVICE = {"service": "ingress-nginx-controller", "namespace": "ingress-nginx", "port": 443, "proxyProtocol": "v2"}


def test_a_fallback_service_becomes_the_relays_fallback_address_and_its_settings():
    variables = env(build_deployment({"fallback": {**FALLBACK_SERVICE, "maxConnections": 5000, "idleTimeoutSeconds": 60.0}}))
    assert variables["ZT_RELAY_FALLBACK"] == "ingress-nginx-controller.ingress-nginx.svc:443"
    assert variables["ZT_RELAY_FALLBACK_PROXY_PROTOCOL"] == "v2"
    assert variables["ZT_RELAY_FALLBACK_MAX_CONNECTIONS"] == "5000"
    assert variables["ZT_RELAY_FALLBACK_IDLE_TIMEOUT"] == "60"
    # the relay's own namespace by default; an address is passed as it is
    assert env(build_deployment({"fallback": {"service": "site", "port": 8443}}))["ZT_RELAY_FALLBACK"] == "site.relays.svc:8443"
    assert env(build_deployment({"fallback": {"address": "10.0.0.5:443"}}))["ZT_RELAY_FALLBACK"] == "10.0.0.5:443"
    assert "ZT_RELAY_FALLBACK" not in env(build_deployment())


def test_the_fallback_pool_size_is_passed_to_the_relay_only_when_set():
    """``spec.fallback.preconnect`` is ``--fallback-preconnect``; absent, no variable (the
    relay's default, off), so relays made before the field existed keep their pod template
    and are not rolled by an operator upgrade."""
    assert env(build_deployment({"fallback": {**FALLBACK_SERVICE, "preconnect": 4}}))["ZT_RELAY_FALLBACK_PRECONNECT"] == "4"
    assert env(build_deployment({"fallback": {**FALLBACK_SERVICE, "preconnect": 0}}))["ZT_RELAY_FALLBACK_PRECONNECT"] == "0"
    assert "ZT_RELAY_FALLBACK_PRECONNECT" not in env(build_deployment({"fallback": FALLBACK_SERVICE}))


def test_every_fallback_setting_is_a_relay_variable():
    from relay import cli

    assert set(builders.FALLBACK_ENV.values()) | {"ZT_RELAY_FALLBACK"} <= {o.env for o in cli.OPTIONS}


def test_with_a_fallback_service_egress_opens_tcp_only_to_its_pods_on_the_target_port():
    body = relay_body({"networkPolicy": {"enabled": True}, "fallback": FALLBACK_SERVICE})
    assert builders.fallback_service_ref(body) == ("ingress-nginx", "ingress-nginx-controller")
    policy = builders.network_policy(body, SITE_SERVICE)
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert policy["spec"]["egress"] == [
        {"ports": [{"protocol": "UDP"}]},
        {"ports": [{"protocol": "TCP", "port": 53}]},
        {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}},
                 "podSelector": {"matchLabels": SITE_SERVICE["spec"]["selector"]}}],
         "ports": [{"protocol": "TCP", "port": "https"}]},
    ]
    # not found (yet): nothing is opened to TCP beyond DNS
    assert builders.network_policy(body, None)["spec"]["egress"] == policy["spec"]["egress"][:2]


def test_with_a_fallback_address_egress_opens_exactly_that_ip_and_port_and_the_otlp_port():
    body = relay_body({"networkPolicy": {"enabled": True}, "fallback": {"address": "[2001:db8::5]:8443"},
                       "telemetry": {"otlpEndpoint": "http://collector.monitoring:4318"}})
    assert builders.fallback_service_ref(body) is None
    egress = builders.network_policy(body)["spec"]["egress"]
    assert egress[2:] == [
        {"ports": [{"protocol": "TCP", "port": 4318}]},
        {"to": [{"ipBlock": {"cidr": "2001:db8::5/128"}}], "ports": [{"protocol": "TCP", "port": 8443}]},
    ]


def test_without_a_fallback_the_policy_leaves_egress_alone():
    policy = builders.network_policy(relay_body({"networkPolicy": {"enabled": True}}))
    assert policy["spec"]["policyTypes"] == ["Ingress"] and "egress" not in policy["spec"]
