"""The operator on a real cluster, running in a pod from the project image.

One operator (from operator/rbac.yaml and the CRD file, in its own namespace that enforces
Pod Security "restricted") and one ZeroTierRelay "edge" are shared by the module; the tests
run in file order and each builds on the state the previous one left: children appear,
pods go ready behind the load balancer, a framed client round-trips to a UDP "root", load
makes the autoscaler add a pod, a spec update rolls out without a failed round trip, drift
is repaired, `kubectl scale ztr` works, a scale-down drains a live tunnel, bad specs are
refused or reported, and deleting the relay garbage-collects everything.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path

import pytest
import yaml

from e2e import images
from e2e.peers import ROOT_PORT, Background, Tunnel, relay_hosts, udp_root  # noqa: F401 (fixtures)

REPO = Path(__file__).resolve().parent.parent
CRD_FILE = REPO / "charts" / "zt-relay" / "crds" / "zerotierrelays.yaml"
RBAC_FILE = REPO / "operator" / "rbac.yaml"
RELAY = "edge"
HOST_PREFIX = "op"  # test-host names of this module (e2e.peers.relay_hosts)
DRAIN_SECONDS = 20
OPERATOR_LABELS = {"app.kubernetes.io/name": "zt-relay", "app.kubernetes.io/component": "operator"}
RELAY_SELECTOR = f"app.kubernetes.io/instance={RELAY},app.kubernetes.io/component=relay"
CHILDREN = (("deployment", "Deployment"), ("service", "Service"),
            ("horizontalpodautoscaler", "HorizontalPodAutoscaler"), ("poddisruptionbudget", "PodDisruptionBudget"))



@pytest.fixture(scope="module")
def image(load_image) -> str:
    """The project image built from this tree (the operator code under test) and loaded."""
    images.build_image()
    return load_image(images.IMAGE)


@pytest.fixture(scope="module")
def operator_namespace(kubectl, image):
    """A namespace enforcing Pod Security "restricted", with the operator running in it:
    the CRD file, operator/rbac.yaml (names made unique) and a one-replica Deployment."""
    name = f"e2e-operator-{uuid.uuid4().hex[:6]}"
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
    kubectl("wait", "--for=condition=Established", "crd/zerotierrelays.relay.zt-relay.dev", "--timeout=60s")
    kubectl.apply({"apiVersion": "v1", "kind": "Namespace",
                   "metadata": {"name": name, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})
    rbac = list(yaml.safe_load_all(RBAC_FILE.read_text()))
    for doc in rbac:
        doc["metadata"]["name"] = name
        if doc["kind"] == "ServiceAccount":
            doc["metadata"]["namespace"] = name
        if doc["kind"] == "ClusterRoleBinding":
            doc["roleRef"]["name"] = name
            doc["subjects"][0].update(name=name, namespace=name)
    kubectl.apply(*rbac)
    restricted = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                  "readOnlyRootFilesystem": True, "runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    kubectl.apply({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "zt-relay-operator", "namespace": name, "labels": OPERATOR_LABELS},
        "spec": {
            "replicas": 1, "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": OPERATOR_LABELS},
            "template": {"metadata": {"labels": OPERATOR_LABELS}, "spec": {
                "serviceAccountName": name,
                "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [{
                    "name": "operator", "image": image, "imagePullPolicy": "IfNotPresent",
                    "command": ["zt-relay-operator"], "args": [f"--namespace={name}"],
                    "env": [{"name": "ZT_OPERATOR_RELAY_IMAGE", "value": image},
                            {"name": "ZT_OPERATOR_RELAY_IMAGE_PULL_POLICY", "value": "IfNotPresent"}],
                    "ports": [{"name": "health", "containerPort": 8080}, {"name": "metrics", "containerPort": 8081}],
                    "readinessProbe": {"httpGet": {"path": "/healthz", "port": "health"}, "periodSeconds": 5},
                    "livenessProbe": {"httpGet": {"path": "/healthz", "port": "health"}, "periodSeconds": 15,
                                      "initialDelaySeconds": 10},
                    "securityContext": restricted,
                    "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                }],
                "volumes": [{"name": "tmp", "emptyDir": {}}],
            }},
        },
    })
    yield name
    kubectl("delete", "zerotierrelays", "--all", "-n", name, "--wait=true", "--timeout=90s", check=False, timeout=120)
    for kind in ("clusterrolebinding", "clusterrole"):
        kubectl("delete", kind, name, "--ignore-not-found", check=False)
    kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


@pytest.fixture(scope="module")
def relay(operator_namespace, kubectl, cluster):
    """The ZeroTierRelay under test: autoscaled 1..2 on a small CPU request, so modest load
    scales it; the test-host range allowed (the relay refuses private destinations)."""
    kubectl.apply({
        "apiVersion": "relay.zt-relay.dev/v1alpha1", "kind": "ZeroTierRelay",
        "metadata": {"name": RELAY, "namespace": operator_namespace},
        "spec": {
            "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 2,
                            "targetCPUUtilizationPercentage": 20, "scaleDownStabilizationSeconds": 600},
            "resources": {"requests": {"cpu": "50m", "memory": "48Mi"}, "limits": {"memory": "256Mi"}},
            "relay": {"allowDestinations": [cluster.layout.test_host_cidr]},
        },
    })
    return operator_namespace


def get_relay(kubectl, namespace) -> dict:
    return kubectl.json("get", "ztr", RELAY, "-n", namespace)


def condition(relay: dict, kind: str) -> dict:
    return next((c for c in relay.get("status", {}).get("conditions", []) if c["type"] == kind), {})


def merge_spec(kubectl, namespace, spec: dict) -> None:
    kubectl("patch", "ztr", RELAY, "-n", namespace, "--type=merge", "-p", json.dumps({"spec": spec}))


def running_pods(kubectl, namespace) -> list[dict]:
    pods = kubectl.json("get", "pods", "-n", namespace, "-l", RELAY_SELECTOR)["items"]
    return [p for p in pods if p["status"].get("phase") == "Running"]


def pod_metric(kubectl, namespace, pod: str, name: str) -> float | None:
    """A relay pod's metric, read through the API server's pod proxy."""
    result = kubectl("get", "--raw", f"/api/v1/namespaces/{namespace}/pods/{pod}:9090/proxy/metrics", check=False)
    match = re.search(rf"^{name} ([0-9.e+]+)$", result.stdout, re.M) if result.returncode == 0 else None
    return float(match.group(1)) if match else None


def rollout_done(kubectl, namespace) -> bool:
    deployment = kubectl.json("get", "deployment", RELAY, "-n", namespace)
    status, want = deployment["status"], deployment["spec"]["replicas"]
    return (status.get("observedGeneration") == deployment["metadata"]["generation"]
            and status.get("updatedReplicas") == want == status.get("readyReplicas")
            and status.get("replicas") == want and len(running_pods(kubectl, namespace)) == want)


def operator_logs(kubectl, namespace: str) -> str:
    """The operator's log, and its previous container's if it restarted (for failures)."""
    selector = ",".join(f"{k}={v}" for k, v in OPERATOR_LABELS.items())
    out = []
    for previous in ("--previous=true", "--previous=false"):
        result = kubectl("logs", "-n", namespace, "-l", selector, "--tail=40", previous, check=False)
        out.append(f"[{previous}]\n{result.stdout}{result.stderr}")
    return "\n".join(out)


def test_the_operator_runs_in_a_pod_from_the_project_image(operator_namespace, image, wait_for_pods_ready, kubectl):
    selector = ",".join(f"{k}={v}" for k, v in OPERATOR_LABELS.items())
    try:
        (pod,) = wait_for_pods_ready(operator_namespace, selector, 1, timeout=120)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n{operator_logs(kubectl, operator_namespace)}") from None
    (container,) = pod["spec"]["containers"]
    assert (container["image"], container["command"]) == (image, ["zt-relay-operator"])


def test_a_relay_gets_a_deployment_service_autoscaler_and_disruption_budget_it_owns(relay, kubectl, wait_for):
    uid = get_relay(kubectl, relay)["metadata"]["uid"]

    def children():
        found = {}
        for resource, kind in CHILDREN:
            result = kubectl("get", resource, RELAY, "-n", relay, "-o", "json", "--show-managed-fields", check=False)
            if result.returncode != 0:
                return None
            found[kind] = json.loads(result.stdout)
        return found

    found = wait_for("the relay's children", children, 60)
    for kind, child in found.items():
        (owner,) = child["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == ("ZeroTierRelay", RELAY, uid, True), kind
        assert child["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "zt-relay-operator"
    assert found["Service"]["spec"]["ports"][0]["port"] == 443
    assert found["Service"]["spec"]["externalTrafficPolicy"] == "Local"
    assert found["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == RELAY
    # Under an autoscaler the operator leaves replicas alone (no field ownership).
    managed = found["Deployment"]["metadata"]["managedFields"]
    ours = [m for m in managed if m["manager"] == "zt-relay-operator"]
    assert ours and not any("f:replicas" in json.dumps(m.get("fieldsV1", {}).get("f:spec", {})) for m in ours)


def test_relay_pods_go_ready_and_the_address_shows_in_status_and_kubectl_get(relay, kubectl, wait_for):
    def ready():
        current = get_relay(kubectl, relay)
        return current if condition(current, "Ready").get("status") == "True" else None

    current = wait_for("ZeroTierRelay Ready", ready, 180)
    status = current["status"]
    address = status["address"]
    assert status["readyReplicas"] >= 1
    assert json.loads(status["clientConfig"]) == {"settings": {"tcpFallbackRelay": f"{address}/443"}}
    assert status["observedGeneration"] == current["metadata"]["generation"]
    table = kubectl("get", "ztr", RELAY, "-n", relay).stdout.split("\n")
    assert table[0].split() == ["NAME", "READY", "REPLICAS", "ADDRESS", "AGE"]
    assert table[1].split()[:4] == [RELAY, "True", str(status["readyReplicas"]), address]
    events = kubectl.json("get", "events", "-n", relay, "--field-selector", f"involvedObject.name={RELAY}")["items"]
    assert {"Available", "AddressAssigned"} <= {e["reason"] for e in events}


def test_a_framed_client_round_trips_through_the_load_balancer_to_a_udp_root(relay, relay_hosts, udp_root, kubectl):
    address = get_relay(kubectl, relay)["status"]["address"]
    answers = []
    # A fresh path (new test hosts, just-programmed load-balancer rules) may lose the very
    # first datagram, as real networks do and ZeroTier tolerates; a second tunnel must work.
    for attempt in range(3):
        tunnel = Tunnel(relay_hosts[0], address, udp_root)
        try:
            answers.append(tunnel.round_trip(f"hello-through-the-operator-{attempt}"))
        finally:
            tunnel.close()
        if answers[-1] == f"{udp_root} {ROOT_PORT} echo:hello-through-the-operator-{attempt}":
            break
    logs = kubectl("logs", "-n", relay, "-l", RELAY_SELECTOR, "--tail=20", check=False).stdout
    assert answers[-1].startswith(f"{udp_root} {ROOT_PORT} echo:hello-through-the-operator"), f"answers {answers}; relay logs:\n{logs}"


def test_sustained_load_makes_the_autoscaler_add_a_pod(relay, relay_hosts, udp_root, kubectl, wait_for):
    address = get_relay(kubectl, relay)["status"]["address"]
    load = Background(relay_hosts[0], "load", address, udp_root)
    try:
        def scaled_up():
            hpa = kubectl.json("get", "hpa", RELAY, "-n", relay)
            return hpa if hpa["status"].get("desiredReplicas", 0) >= 2 else None

        hpa = wait_for("the autoscaler to want 2 relay pods", scaled_up, 240, interval=5)
    finally:
        packets = int(load.finish())
    assert packets > 0
    (metric,) = hpa["status"]["currentMetrics"]
    assert metric["resource"]["current"]["averageUtilization"] > 20
    wait_for("2 ready relays in status", lambda: get_relay(kubectl, relay)["status"].get("readyReplicas") == 2, 120)


def test_a_spec_update_rolls_out_with_no_failed_round_trip(relay, relay_hosts, udp_root, kubectl, wait_for):
    address = get_relay(kubectl, relay)["status"]["address"]
    before = {p["metadata"]["name"] for p in running_pods(kubectl, relay)}
    probe = Background(relay_hosts[0], "probe", address, udp_root)
    try:
        time.sleep(2)
        merge_spec(kubectl, relay, {"relay": {"drainSeconds": DRAIN_SECONDS}})
        wait_for("new relay pods", lambda: not before & {p["metadata"]["name"] for p in running_pods(kubectl, relay)}
                 and rollout_done(kubectl, relay), 300, interval=2)
        time.sleep(3)
    finally:
        summary = json.loads(probe.finish())
    assert summary["failed"] == [], summary
    assert summary["ok"] > 20
    current = get_relay(kubectl, relay)
    wait_for("status to catch up", lambda: get_relay(kubectl, relay)["status"]["observedGeneration"]
             == current["metadata"]["generation"], 30)
    env = kubectl.json("get", "deployment", RELAY, "-n", relay)["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "ZT_RELAY_DRAIN_TIMEOUT", "value": str(DRAIN_SECONDS)} in env


def test_a_deleted_or_edited_child_is_repaired_within_30_seconds(relay, kubectl, wait_for):
    pdb_uid = kubectl.json("get", "pdb", RELAY, "-n", relay)["metadata"]["uid"]
    kubectl("delete", "pdb", RELAY, "-n", relay)
    kubectl("patch", "service", RELAY, "-n", relay, "--type=json",
            "-p", '[{"op": "replace", "path": "/spec/ports/0/port", "value": 444}]')
    kubectl("patch", "hpa", RELAY, "-n", relay, "--type=merge", "-p", '{"spec": {"maxReplicas": 7}}')
    started = time.monotonic()

    def repaired():
        pdb = kubectl("get", "pdb", RELAY, "-n", relay, "-o", "json", check=False)
        ports = [p["port"] for p in kubectl.json("get", "service", RELAY, "-n", relay)["spec"]["ports"]]
        hpa = kubectl.json("get", "hpa", RELAY, "-n", relay)["spec"]["maxReplicas"]
        return pdb.returncode == 0 and json.loads(pdb.stdout)["metadata"]["uid"] != pdb_uid and ports == [443] and hpa == 2

    wait_for("the PDB, the Service port and the HPA repaired", repaired, 30, interval=1)
    assert time.monotonic() - started <= 30


def test_kubectl_scale_sets_the_relays_replicas_when_autoscaling_is_off(relay, kubectl, wait_for, wait_for_pods_ready):
    merge_spec(kubectl, relay, {"autoscaling": {"enabled": False}, "replicas": 1})
    wait_for("the HPA removed", lambda: kubectl("get", "hpa", RELAY, "-n", relay, check=False).returncode != 0, 30)
    wait_for("1 relay pod", lambda: rollout_done(kubectl, relay)
             and kubectl.json("get", "deployment", RELAY, "-n", relay)["spec"]["replicas"] == 1, 120, interval=2)
    kubectl("scale", "ztr", RELAY, "-n", relay, "--replicas=2")
    assert get_relay(kubectl, relay)["spec"]["replicas"] == 2
    wait_for_pods_ready(relay, RELAY_SELECTOR, 2, timeout=120)
    wait_for("status.replicas 2", lambda: get_relay(kubectl, relay)["status"].get("readyReplicas") == 2, 60)
    scale = json.loads(kubectl("get", "--raw", f"/apis/relay.zt-relay.dev/v1alpha1/namespaces/{relay}/zerotierrelays/{RELAY}/scale").stdout)
    assert (scale["spec"]["replicas"], scale["status"]["replicas"]) == (2, 2)
    assert "app.kubernetes.io/instance=edge" in scale["status"]["selector"]


def test_an_hpa_can_target_the_relay_itself_through_its_scale_subresource(relay, kubectl, wait_for):
    kubectl("scale", "ztr", RELAY, "-n", relay, "--replicas=1")
    kubectl.apply({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "users-own", "namespace": relay},
        "spec": {
            "scaleTargetRef": {"apiVersion": "relay.zt-relay.dev/v1alpha1", "kind": "ZeroTierRelay", "name": RELAY},
            "minReplicas": 2, "maxReplicas": 2,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}],
        },
    })
    try:
        # The HPA writes spec.replicas through /scale; the operator carries it to the pods.
        wait_for("the HPA to scale the relay to 2", lambda: get_relay(kubectl, relay)["spec"]["replicas"] == 2, 90, interval=2)
        wait_for("2 relay pods", lambda: rollout_done(kubectl, relay)
                 and kubectl.json("get", "deployment", RELAY, "-n", relay)["spec"]["replicas"] == 2, 120, interval=2)
        hpa = kubectl.json("get", "hpa", "users-own", "-n", relay)
        able = next(c for c in hpa["status"]["conditions"] if c["type"] == "AbleToScale")
        assert able["status"] == "True", able
    finally:
        kubectl("delete", "hpa", "users-own", "-n", relay, "--ignore-not-found")


def test_scaling_down_lets_a_live_tunnel_on_the_terminating_pod_relay_until_its_drain_time(
    relay, relay_hosts, udp_root, kubectl, wait_for
):
    address = get_relay(kubectl, relay)["status"]["address"]

    def settled():
        # Exactly two pods, both running and none on its way out (earlier tests scale and
        # roll out): the pod the scale-down removes must be one that holds tunnels.
        pods = kubectl.json("get", "pods", "-n", relay, "-l", RELAY_SELECTOR)["items"]
        ok = len(pods) == 2 and all(
            p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp") for p in pods)
        return [p["metadata"]["name"] for p in pods] if ok else None

    pods = wait_for("two settled relay pods", settled, 180)
    tunnels = [Tunnel(relay_hosts[0], address, udp_root) for _ in range(8)]
    try:
        for i, tunnel in enumerate(tunnels):
            assert tunnel.round_trip(f"warm-{i}") == f"{udp_root} {ROOT_PORT} echo:warm-{i}"
        per_pod = {pod: pod_metric(kubectl, relay, pod, "zt_relay_tunnels_active") for pod in pods}
        assert sum(v or 0 for v in per_pod.values()) >= 8, per_pod
        kubectl("scale", "ztr", RELAY, "-n", relay, "--replicas=1")

        def terminating():
            for pod in kubectl.json("get", "pods", "-n", relay, "-l", RELAY_SELECTOR)["items"]:
                if pod["metadata"].get("deletionTimestamp"):
                    return pod["metadata"]["name"]
            return None

        stopping = wait_for("a terminating relay pod", terminating, 30)
        started = time.monotonic()
        on_stopping = per_pod[stopping] or 0
        assert on_stopping >= 1, f"no tunnel landed on {stopping}: {per_pod}"
        # Throughout the drain window every tunnel keeps relaying, those on the stopping pod too.
        rounds = 0
        while time.monotonic() - started < DRAIN_SECONDS - 4:
            for i, tunnel in enumerate(tunnels):
                assert tunnel.round_trip(f"drain-{rounds}-{i}") == f"{udp_root} {ROOT_PORT} echo:drain-{rounds}-{i}", (
                    f"tunnel {i} failed {time.monotonic() - started:.1f} s into a {DRAIN_SECONDS} s drain")
            rounds += 1
            time.sleep(1)
        assert rounds >= 5
        # After the pre-stop sleep and the drain, the stopping pod's tunnels are closed.
        time.sleep(max(0, 5 + DRAIN_SECONDS + 8 - (time.monotonic() - started)))
        closed = sum(tunnel.round_trip("after") == "closed" for tunnel in tunnels)
        assert closed == on_stopping
    finally:
        for tunnel in tunnels:
            tunnel.close()


def test_an_invalid_relay_is_refused_by_the_schema_or_reported_in_its_status(relay, kubectl, wait_for):
    def apply(name: str, spec: dict):
        obj = {"apiVersion": "relay.zt-relay.dev/v1alpha1", "kind": "ZeroTierRelay",
               "metadata": {"name": name, "namespace": relay}, "spec": spec}
        return kubectl("apply", "-f", "-", input=json.dumps(obj), check=False)

    cel = apply("bad-bounds", {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}})
    assert cel.returncode != 0 and "minReplicas must not exceed maxReplicas" in cel.stderr
    schema = apply("bad-replicas", {"replicas": -1})
    assert schema.returncode != 0 and "spec.replicas" in schema.stderr and "greater than or equal to 0" in schema.stderr

    assert apply("bad-cidr", {"relay": {"allowDestinations": ["10.0.0.1/8"]}}).returncode == 0

    def degraded():
        found = kubectl.json("get", "ztr", "bad-cidr", "-n", relay)
        return condition(found, "Degraded") if condition(found, "Degraded").get("reason") == "InvalidSpec" else None

    reported = wait_for("an InvalidSpec condition", degraded, 60)
    assert "spec.relay.allowDestinations[0]" in reported["message"]
    assert kubectl("get", "deployment", "bad-cidr", "-n", relay, check=False).returncode != 0
    events = kubectl.json("get", "events", "-n", relay, "--field-selector", "involvedObject.name=bad-cidr")["items"]
    assert any(e["reason"] == "InvalidSpec" and e["type"] == "Warning" for e in events)
    kubectl("delete", "ztr", "bad-cidr", "-n", relay, "--timeout=60s")


def test_the_operator_serves_its_metrics_and_was_never_denied_by_rbac(relay, kubectl):
    selector = ",".join(f"{k}={v}" for k, v in OPERATOR_LABELS.items())
    (pod,) = kubectl.json("get", "pods", "-n", relay, "-l", selector)["items"]
    name = pod["metadata"]["name"]
    text = kubectl("get", "--raw", f"/api/v1/namespaces/{relay}/pods/{name}:8081/proxy/metrics").stdout
    ok = re.search(r'^zt_operator_reconciliations_total\{result="ok"\} (\d+)$', text, re.M)
    assert ok and int(ok.group(1)) > 10
    logs = kubectl("logs", "-n", relay, name).stdout
    assert [line for line in logs.splitlines() if "forbidden" in line.lower()] == []


def test_a_change_made_while_the_operator_is_down_is_applied_when_it_resumes(relay, kubectl, wait_for):
    def deployment_replicas() -> int:
        return kubectl.json("get", "deployment", RELAY, "-n", relay)["spec"]["replicas"]

    before = deployment_replicas()
    selector = ",".join(f"{k}={v}" for k, v in OPERATOR_LABELS.items())
    kubectl("scale", "deployment", "zt-relay-operator", "-n", relay, "--replicas=0")
    wait_for("the operator pod gone", lambda: not kubectl.json("get", "pods", "-n", relay, "-l", selector)["items"], 90)
    try:
        kubectl("scale", "ztr", RELAY, "-n", relay, f"--replicas={before + 1}")
        time.sleep(15)  # longer than a resync: nobody acts while the operator is down
        assert deployment_replicas() == before
    finally:
        kubectl("scale", "deployment", "zt-relay-operator", "-n", relay, "--replicas=1")
    wait_for("the resumed operator to apply the change", lambda: deployment_replicas() == before + 1, 90, interval=2)


def test_deleting_the_relay_garbage_collects_its_children(relay, kubectl, wait_for):
    kubectl("delete", "ztr", RELAY, "-n", relay, "--timeout=60s")

    def gone():
        names = kubectl("get", "deployment,service,hpa,pdb,replicaset", "-n", relay, "-l",
                        f"app.kubernetes.io/instance={RELAY}", "-o", "name").stdout.split()
        return names == []

    wait_for("the relay's children deleted", gone, 90, interval=2)
