"""The operator on a real cluster, running in a pod from the project image.

One operator (with the chart's RBAC rules and the CRD file, in its own namespace that enforces
Pod Security "restricted") is shared by the module. Every test creates the relays it needs
(``make_relay``), so each runs alone with ``-k``; relays that carry traffic share the
module's ``relay`` fixture and wait for it to settle first.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from e2e import images, recovery
from e2e.cluster.api_reader import ApiError
from zt_operator import FIELD_MANAGER, OLD_FINALIZER, builders, plan, reconcile
from e2e.peers import ROOT_PORT, Background, Tunnel, relay_hosts, udp_root  # noqa: F401 (fixtures)

REPO = Path(__file__).resolve().parent.parent
CRD_FILE = REPO / "charts" / "zt-relay" / "crds" / "zerotierrelays.yaml"
RBAC_RULES_FILE = REPO / "charts" / "zt-relay" / "files" / "operator-rbac.yaml"
RELAY = "edge"
HOST_PREFIX = "op"  # test-host names of this module (e2e.peers.relay_hosts)
# Its tests are independent (each makes what it needs): `.ci/run` may spread them over its
# concurrent cluster sessions, each with its own operator (scoped to its own namespace).
SHARDABLE = True
DRAIN_SECONDS = 8
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
def operator_namespace(kubectl, image, wait_for):
    """A namespace enforcing Pod Security "restricted", with the operator running in it:
    the CRD file, the chart's RBAC rules (in a ClusterRole named for it) and a one-replica Deployment."""
    name = f"e2e-operator-{uuid.uuid4().hex[:6]}"
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))

    def established():
        # Not `kubectl wait`: it fails at once on a CRD created a moment ago with no status yet.
        conditions = kubectl.api.get("crd", "zerotierrelays.relay.zt-relay.dev").get("status", {}).get("conditions")
        return any(c["type"] == "Established" and c["status"] == "True" for c in conditions or [])

    wait_for("the ZeroTierRelay CRD established", established, 60)
    kubectl.apply({"apiVersion": "v1", "kind": "Namespace",
                   "metadata": {"name": name, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})
    rules = yaml.safe_load(RBAC_RULES_FILE.read_text())
    rbac_api = "rbac.authorization.k8s.io"
    kubectl.apply(
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": name}},
        {"apiVersion": f"{rbac_api}/v1", "kind": "ClusterRole", "metadata": {"name": name},
         "rules": rules["clusterRules"] + rules["namespacedRules"]},
        {"apiVersion": f"{rbac_api}/v1", "kind": "ClusterRoleBinding", "metadata": {"name": name},
         "roleRef": {"apiGroup": rbac_api, "kind": "ClusterRole", "name": name},
         "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": name}]},
    )
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
    """The ZeroTierRelay that carries traffic: 2 pods on a small CPU request, the test-host
    range allowed (the relay refuses private destinations)."""
    kubectl.apply({
        "apiVersion": "relay.zt-relay.dev/v1alpha1", "kind": "ZeroTierRelay",
        "metadata": {"name": RELAY, "namespace": operator_namespace},
        "spec": {
            "replicas": 2,
            "resources": {"requests": {"cpu": "50m", "memory": "48Mi"}, "limits": {"memory": "256Mi"}},
            "relay": {"allowDestinations": [cluster.layout.test_host_cidr]},
        },
    })
    return operator_namespace


@pytest.fixture
def make_relay(operator_namespace, kubectl):
    """``make_relay(name, spec)``: a ZeroTierRelay of this test, deleted after it."""
    made: list[str] = []

    def make(name: str, spec: dict, **metadata) -> str:
        kubectl.apply({"apiVersion": "relay.zt-relay.dev/v1alpha1", "kind": "ZeroTierRelay",
                       "metadata": {"name": name, "namespace": operator_namespace, **metadata}, "spec": spec})
        made.append(name)
        return name

    yield make
    for name in made:
        kubectl("delete", "ztr", name, "-n", operator_namespace, "--ignore-not-found", "--wait=false", check=False)


SMALL = {"resources": {"requests": {"cpu": "20m", "memory": "32Mi"}, "limits": {"memory": "256Mi"}}}


def relay_json(kubectl, namespace, name) -> dict:
    return kubectl.api.get("ztr", name, namespace)


def get_relay(kubectl, namespace) -> dict:
    return kubectl.api.get("ztr", RELAY, namespace)


def condition(relay: dict, kind: str) -> dict:
    return next((c for c in relay.get("status", {}).get("conditions", []) if c["type"] == kind), {})


def merge_spec(kubectl, namespace, spec: dict) -> None:
    kubectl("patch", "ztr", RELAY, "-n", namespace, "--type=merge", "-p", json.dumps({"spec": spec}))


def running_pods(kubectl, namespace) -> list[dict]:
    pods = kubectl.api.list("pods", namespace, selector=RELAY_SELECTOR)["items"]
    return [p for p in pods if p["status"].get("phase") == "Running"]


def pod_metric(kubectl, namespace, pod: str, name: str) -> float | None:
    """A relay pod's metric, read through the API server's pod proxy."""
    try:
        text = kubectl.api.raw(f"/api/v1/namespaces/{namespace}/pods/{pod}:9090/proxy/metrics")
    except ApiError:  # the pod's proxy answering an error status: no value yet
        return None
    match = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
    return float(match.group(1)) if match else None


def rollout_done(kubectl, namespace) -> bool:
    deployment = kubectl.api.get("deployment", RELAY, namespace)
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


def test_a_relay_gets_children_it_owns_and_kubectl_wait_sees_it_ready(relay, kubectl, wait_for):
    uid = get_relay(kubectl, relay)["metadata"]["uid"]
    wait = kubectl("wait", "--for=condition=Ready", f"ztr/{RELAY}", "-n", relay, "--timeout=180s", timeout=200, check=False)
    assert wait.returncode == 0, f"{wait.stderr}\n{operator_logs(kubectl, relay)}"
    for resource, kind in CHILDREN:
        if kind == "HorizontalPodAutoscaler":
            continue
        child = kubectl.api.get(resource, RELAY, relay)
        (owner,) = child["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == ("ZeroTierRelay", RELAY, uid, True), kind
        assert child["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "zt-relay-operator"
    current = get_relay(kubectl, relay)
    status = current["status"]
    address = status["address"]
    assert json.loads(status["clientConfig"]) == {"settings": {"tcpFallbackRelay": f"{address}/443"}}
    assert status["observedGeneration"] == current["metadata"]["generation"]
    assert not current["metadata"].get("finalizers"), "a relay needs no finalizer: ownerReferences delete its children"
    table = kubectl("get", "ztr", RELAY, "-n", relay).stdout.split("\n")
    assert table[0].split() == ["NAME", "READY", "REPLICAS", "ADDRESS", "AGE"]
    assert table[1].split()[:2] == [RELAY, "True"]
    # The operator writes a pass's status before it posts the pass's Events: Ready can be
    # seen a moment before its Event exists, so the Events are waited for, not read once.
    wait_for("the Available and AddressAssigned Events", lambda: {"Available", "AddressAssigned"} <= {
        e["reason"] for e in kubectl.api.list("events", relay, field_selector=f"involvedObject.name={RELAY}")["items"]}, 30)


def test_a_framed_client_round_trips_through_the_load_balancer_to_a_udp_root(relay, relay_hosts, udp_root, kubectl):
    kubectl("wait", "--for=condition=Ready", f"ztr/{RELAY}", "-n", relay, "--timeout=180s", timeout=200)
    address = get_relay(kubectl, relay)["status"]["address"]
    tunnel = Tunnel(relay_hosts[0], address, udp_root)
    try:
        answer = tunnel.round_trip("hello-through-the-operator")
    finally:
        tunnel.close()
    logs = kubectl("logs", "-n", relay, "-l", RELAY_SELECTOR, "--tail=20", check=False).stdout
    assert answer == f"{udp_root} {ROOT_PORT} echo:hello-through-the-operator", f"relay logs:\n{logs}"


class ReplicasWatch:
    """Every value a Deployment's spec.replicas has taken, from a watch: every write is an
    event, so a drop that lasts a moment is seen (a poll every 0.5 s could miss it)."""

    def __init__(self, kubectl, namespace: str, name: str) -> None:
        self.kubectl, self.namespace, self.name = kubectl, namespace, name
        self.proc = subprocess.Popen(
            kubectl.argv("get", "deployment", name, "-n", namespace, "--watch",
                         "-o", 'jsonpath={.metadata.resourceVersion} {.spec.replicas}{"\\n"}'),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.values: list[int] = []
        self._read()  # kubectl's first line: the Deployment as it read it; its watch starts there

    def _read(self) -> str:
        line = self.proc.stdout.readline()
        assert line, f"the replicas watch ended: {self.proc.stderr.read()}"
        self.version, replicas = line.split()
        if not self.values or self.values[-1] != int(replicas):
            self.values.append(int(replicas))
        return self.version

    def values_until_now(self) -> list[int]:
        """The values so far, repeats folded: read until the watch has delivered the version a
        read made now returns (at once if it was the last line read: no next line may come)."""
        now = self.kubectl.api.get("deployment", self.name, self.namespace)["metadata"]["resourceVersion"]
        while self.version != now:
            self._read()
        return self.values

    def close(self) -> None:
        self.proc.kill()
        self.proc.communicate(timeout=10)  # also closes the pipes


def test_switching_autoscaling_on_and_off_never_drops_the_running_replicas(operator_namespace, make_relay, kubectl, wait_for):
    """On: the HorizontalPodAutoscaler takes `replicas` over from the operator without the
    Deployment ever dropping (the handover), though the autoscaler wants fewer (idle pods).
    Off: the operator takes `replicas` back at the number the autoscaler ran, which differs
    from the relay's first `replicas`."""
    ns = operator_namespace
    name = make_relay("handover", {**SMALL, "replicas": 3, "service": {"type": "ClusterIP"}})

    def deployment() -> dict:
        return kubectl.api.get("deployment", name, ns)

    def hpa_conditions() -> dict:
        hpa = kubectl.api.get("hpa", name, ns)
        return {c["type"]: c for c in (hpa.get("status") or {}).get("conditions") or []}

    wait_for("3 ready pods", lambda: deployment()["status"].get("readyReplicas") == 3, 180)
    watch = ReplicasWatch(kubectl, ns, name)
    try:
        kubectl("patch", "ztr", name, "-n", ns, "--type=merge", "-p", json.dumps(
            {"spec": {"autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 5}}}))
        # The autoscaler's own evidence that it has taken over and decided: it computed a
        # replica count from the pods' CPU (ScalingActive) lower than the 3 running, and held
        # the 3 (its scale-down stabilization window, 600 s by default).
        wait_for("the autoscaler holding the 3 pods against a lower recommendation", lambda: (
            (c := hpa_conditions()).get("ScalingActive", {}).get("status") == "True"
            and c.get("AbleToScale", {}).get("reason") == "ScaleDownStabilized"), 120, interval=1)
        assert not plan.owns_field(deployment(), FIELD_MANAGER, "spec", "replicas"), "the operator still owns replicas"
        assert watch.values_until_now() == [3], f"replicas changed while the autoscaler took over: {watch.values}"
        # The autoscaler now changes the number: a higher minimum scales up at once, and the
        # relay's replicas follow it.
        kubectl("patch", "ztr", name, "-n", ns, "--type=merge", "-p", json.dumps({"spec": {"autoscaling": {"minReplicas": 4}}}))
        wait_for("the relay's replicas following the autoscaler to 4",
                 lambda: (deployment()["spec"]["replicas"], relay_json(kubectl, ns, name)["spec"]["replicas"]) == (4, 4), 60)
        assert watch.values_until_now() == [3, 4], f"replicas did not go straight from 3 to 4: {watch.values}"
        kubectl("patch", "ztr", name, "-n", ns, "--type=merge", "-p", json.dumps({"spec": {"autoscaling": {"enabled": False}}}))
        generation = relay_json(kubectl, ns, name)["metadata"]["generation"]
        # Switched off once the operator has reconciled that generation (its status says so)
        # and the autoscaler is gone: the Deployment it applied then (before the HPA's
        # deletion, in the same pass) keeps the 4, not the relay's first 3.
        wait_for("the operator done switching autoscaling off", lambda: (
            (relay_json(kubectl, ns, name).get("status") or {}).get("observedGeneration") == generation
            and not kubectl.api.exists("hpa", name, ns)), 30)
        assert watch.values_until_now() == [3, 4], f"switching autoscaling off did not start from the 4 it ran: {watch.values}"
    finally:
        watch.close()


def test_deleting_a_relay_completes_even_with_the_operator_gone(operator_namespace, make_relay, kubectl, wait_for):
    ns = operator_namespace
    name = make_relay("orphan", {**SMALL, "replicas": 0, "service": {"type": "ClusterIP"}})
    wait_for("the relay's Deployment", lambda: kubectl.api.exists("deployment", name, ns), 60)
    selector = ",".join(f"{k}={v}" for k, v in OPERATOR_LABELS.items())
    kubectl("scale", "deployment", "zt-relay-operator", "-n", ns, "--replicas=0")
    try:
        wait_for("the operator pod gone", lambda: not kubectl.api.list("pods", ns, selector=selector)["items"], 90)
        deleted = kubectl("delete", "ztr", name, "-n", ns, "--timeout=30s", check=False, timeout=40)
        assert deleted.returncode == 0, deleted.stderr
        wait_for("the relay's children garbage-collected", lambda: not any(
            kubectl.api.list(kind, ns, selector=f"app.kubernetes.io/instance={name}")["items"]
            for kind in ("deployment", "service", "pdb")), 60)
    finally:
        kubectl("scale", "deployment", "zt-relay-operator", "-n", ns, "--replicas=1")


def test_a_relay_carrying_the_old_finalizer_loses_it_and_deletes(operator_namespace, make_relay, kubectl, wait_for):
    ns = operator_namespace
    name = make_relay("legacy", {**SMALL, "replicas": 0, "service": {"type": "ClusterIP"}},
                      finalizers=[OLD_FINALIZER])
    wait_for("the old finalizer removed", lambda: not relay_json(kubectl, ns, name)["metadata"].get("finalizers"), 60)
    deleted = kubectl("delete", "ztr", name, "-n", ns, "--timeout=30s", check=False, timeout=40)
    assert deleted.returncode == 0, deleted.stderr


def test_an_object_of_a_childs_name_that_the_relay_does_not_own_is_left_untouched(operator_namespace, make_relay, kubectl, wait_for):
    ns = operator_namespace
    kubectl.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "clash", "namespace": ns},
                   "spec": {"type": "ClusterIP", "selector": {"app": "users-own"}, "ports": [{"port": 80, "targetPort": 8080}]}})
    try:
        before = kubectl.api.get("service", "clash", ns)
        name = make_relay("clash", {**SMALL, "replicas": 0, "service": {"type": "ClusterIP"}})

        def conflict():
            found = condition(relay_json(kubectl, ns, name), "Conflict")
            return found if found.get("status") == "True" else None

        reported = wait_for("a Conflict condition", conflict, 60)
        assert "Service clash" in reported["message"]
        after = kubectl.api.get("service", "clash", ns)
        assert "ownerReferences" not in after["metadata"]
        assert after["spec"]["ports"] == before["spec"]["ports"] and after["spec"]["selector"] == {"app": "users-own"}
        assert condition(relay_json(kubectl, ns, name), "Degraded")["reason"] == "Conflict"
        # The rest of the relay is still reconciled: in the pass that found the clash or, if a
        # call of that pass failed (a loaded API server; Degraded shows the Conflict first),
        # in its retry.
        try:
            wait_for("the relay's Deployment beside the clash", lambda: kubectl.api.exists("deployment", name, ns), 30)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{relay_json(kubectl, ns, name).get('status')}\n{operator_logs(kubectl, ns)}") from None
    finally:
        kubectl("delete", "service", "clash", "-n", ns, "--ignore-not-found")


def test_an_image_that_cannot_be_pulled_is_degraded_with_the_reason(operator_namespace, make_relay, kubectl, wait_for):
    ns = operator_namespace
    # imagePullPolicy Never: the kubelet reports the missing image without reaching any registry.
    name = make_relay("typo", {**SMALL, "replicas": 1, "service": {"type": "ClusterIP"},
                               "image": "zt-relay:typo-does-not-exist", "imagePullPolicy": "Never"})

    def degraded():
        found = condition(relay_json(kubectl, ns, name), "Degraded")
        return found if found.get("reason") in ("ErrImageNeverPull", "ErrImagePull", "ImagePullBackOff") else None

    reported = wait_for("Degraded with the pull failure", degraded, 90)
    assert reported["status"] == "True" and "typo" in reported["message"]


def test_a_node_port_relay_is_ready_when_its_pods_are(operator_namespace, make_relay, kubectl):
    ns = operator_namespace
    name = make_relay("nodeport", {**SMALL, "replicas": 1, "service": {"type": "NodePort"}})
    wait = kubectl("wait", "--for=condition=Ready", f"ztr/{name}", "-n", ns, "--timeout=120s", timeout=140, check=False)
    assert wait.returncode == 0, wait.stderr


def test_sustained_load_makes_the_autoscaler_add_a_pod(operator_namespace, make_relay, cluster, relay_hosts, udp_root,
                                                      kubectl, wait_for):
    ns = operator_namespace
    target = 20  # percent of a 50m request: 10m, which an idle relay never uses
    name = make_relay("hot", {
        "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 2,
                        "targetCPUUtilizationPercentage": target, "scaleDownStabilizationSeconds": 600},
        "resources": {"requests": {"cpu": "50m", "memory": "48Mi"}, "limits": {"memory": "256Mi"}},
        "relay": {"allowDestinations": [cluster.layout.test_host_cidr]},
    })
    kubectl("wait", "--for=condition=Ready", f"ztr/{name}", "-n", ns, "--timeout=180s", timeout=200)

    def utilization(hpa: dict) -> int | None:
        for metric in hpa["status"].get("currentMetrics") or []:
            current = (metric.get("resource") or {}).get("current") or {}
            if "averageUtilization" in current:
                return current["averageUtilization"]
        return None

    def measured():
        hpa = kubectl.api.get("hpa", name, ns)
        return hpa if utilization(hpa) is not None else None

    # Baseline: idle, the autoscaler measures usage under the target and wants the minimum.
    baseline = wait_for("the autoscaler's first measurement", measured, 120, interval=1)
    assert utilization(baseline) < target, baseline["status"]
    assert baseline["status"]["desiredReplicas"] == 1
    address = relay_json(kubectl, ns, name)["status"]["address"]
    load_started = datetime.now(timezone.utc).replace(microsecond=0)  # lastScaleTime has whole seconds
    load = Background(relay_hosts[0], "load", address, udp_root)
    try:
        def scaled_up():
            hpa = kubectl.api.get("hpa", name, ns)
            return hpa if hpa["status"].get("desiredReplicas", 0) >= 2 else None

        hpa = wait_for("the autoscaler to want 2 relay pods", scaled_up, 240, interval=1)
    finally:
        received, given_up = map(int, load.finish().split())
    print(f"load: {received} replies, {given_up} bursts given up")
    assert received > 0
    assert utilization(hpa) > target, hpa["status"]
    # It scaled for this load: once it had started, never before.
    scaled_at = datetime.fromisoformat(hpa["status"]["lastScaleTime"])
    assert scaled_at >= load_started, (scaled_at, load_started)


def wait_ready(kubectl, namespace, name=RELAY) -> None:
    kubectl("wait", "--for=condition=Ready", f"ztr/{name}", "-n", namespace, "--timeout=180s", timeout=200)


def test_a_spec_update_rolls_out_with_no_failed_round_trip(relay, relay_hosts, udp_root, kubectl, wait_for):
    wait_ready(kubectl, relay)
    wait_for("a settled rollout", lambda: rollout_done(kubectl, relay), 180, interval=2)
    address = get_relay(kubectl, relay)["status"]["address"]
    before = {p["metadata"]["name"] for p in running_pods(kubectl, relay)}
    probe = Background(relay_hosts[0], "probe", address, udp_root)
    try:
        merge_spec(kubectl, relay, {"relay": {"drainSeconds": DRAIN_SECONDS}})
        wait_for("new relay pods", lambda: not before & {p["metadata"]["name"] for p in running_pods(kubectl, relay)}
                 and rollout_done(kubectl, relay), 300, interval=2)
    finally:
        summary = json.loads(probe.finish())
    assert summary["failed"] == [], summary
    assert summary["ok"] > 20
    current = get_relay(kubectl, relay)
    wait_for("status to catch up", lambda: get_relay(kubectl, relay)["status"]["observedGeneration"]
             == current["metadata"]["generation"], 30)
    env = kubectl.api.get("deployment", RELAY, relay)["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "ZT_RELAY_DRAIN_TIMEOUT", "value": str(DRAIN_SECONDS)} in env


def test_a_deleted_or_edited_child_is_repaired_within_5_seconds(operator_namespace, make_relay, kubectl, wait_for):
    ns = operator_namespace
    name = make_relay("drift", {**SMALL, "replicas": 0, "service": {"type": "ClusterIP"},
                                "autoscaling": {"enabled": False}})
    wait_for("the relay's PDB", lambda: kubectl.api.exists("pdb", name, ns), 60)
    pdb_uid = kubectl.api.get("pdb", name, ns)["metadata"]["uid"]
    kubectl("delete", "pdb", name, "-n", ns)
    kubectl("patch", "service", name, "-n", ns, "--type=json",
            "-p", '[{"op": "replace", "path": "/spec/ports/0/port", "value": 444}]')
    started = time.monotonic()

    def repaired():
        pdb = kubectl.api.find("pdb", name, ns)
        ports = [p["port"] for p in kubectl.api.get("service", name, ns)["spec"]["ports"]]
        return pdb is not None and pdb["metadata"]["uid"] != pdb_uid and ports == [443]

    wait_for("the PDB and the Service port repaired", repaired, 30, interval=0.5)
    # Repairs follow the children's watch events, not the (minutes-long) resync.
    assert time.monotonic() - started <= 5


def test_kubectl_scale_sets_the_relays_replicas(operator_namespace, make_relay, kubectl, wait_for):
    ns = operator_namespace
    name = make_relay("scaled", {**SMALL, "replicas": 1, "service": {"type": "ClusterIP"}})
    wait_for("1 ready pod", lambda: relay_json(kubectl, ns, name).get("status", {}).get("readyReplicas") == 1, 120)
    kubectl("scale", "ztr", name, "-n", ns, "--replicas=2")
    wait_for("status.readyReplicas 2", lambda: relay_json(kubectl, ns, name)["status"].get("readyReplicas") == 2, 120)
    scale = json.loads(kubectl.api.raw(f"/apis/relay.zt-relay.dev/v1alpha1/namespaces/{ns}/zerotierrelays/{name}/scale"))
    assert (scale["spec"]["replicas"], scale["status"]["replicas"]) == (2, 2)
    assert f"app.kubernetes.io/instance={name}" in scale["status"]["selector"]


def test_scaling_down_lets_a_live_tunnel_on_the_terminating_pod_relay_until_its_drain_time(
    relay, relay_hosts, udp_root, kubectl, wait_for
):
    merge_spec(kubectl, relay, {"replicas": 2, "relay": {"drainSeconds": DRAIN_SECONDS}})
    wait_ready(kubectl, relay)
    address = get_relay(kubectl, relay)["status"]["address"]

    def settled():
        # Exactly two pods, both running and none on its way out: the pod the scale-down
        # removes must be one that holds tunnels.
        pods = kubectl.api.list("pods", relay, selector=RELAY_SELECTOR)["items"]
        ok = rollout_done(kubectl, relay) and len(pods) == 2 and all(
            p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp") for p in pods)
        return [p["metadata"]["name"] for p in pods] if ok else None

    pods = wait_for("two settled relay pods", settled, 240)
    tunnels = [Tunnel(relay_hosts[0], address, udp_root) for _ in range(8)]
    try:
        for i, tunnel in enumerate(tunnels):
            assert tunnel.round_trip(f"warm-{i}") == f"{udp_root} {ROOT_PORT} echo:warm-{i}"
        per_pod = {pod: pod_metric(kubectl, relay, pod, "zt_relay_tunnels_active") for pod in pods}
        assert sum(v or 0 for v in per_pod.values()) >= 8, per_pod
        kubectl("scale", "ztr", RELAY, "-n", relay, "--replicas=1")

        def terminating():
            for pod in kubectl.api.list("pods", relay, selector=RELAY_SELECTOR)["items"]:
                if pod["metadata"].get("deletionTimestamp"):
                    return pod
            return None

        pod = wait_for("a terminating relay pod", terminating, 30)
        stopping = pod["metadata"]["name"]
        # The pod's own clock, not when this test noticed it: the API server set its
        # deletionTimestamp (when the kubelet kills it) to the moment of deletion plus its
        # grace period, in whole seconds rounded down: `deleted` is at most 1 s early.
        sigkill = datetime.fromisoformat(pod["metadata"]["deletionTimestamp"].replace("Z", "+00:00")).timestamp()
        deleted = sigkill - pod["metadata"]["deletionGracePeriodSeconds"]
        drain_ends = deleted + builders.PRESTOP_SLEEP_SECONDS + builders.SHUTDOWN_DELAY_SECONDS + DRAIN_SECONDS
        on_stopping = per_pod[stopping] or 0
        assert on_stopping >= 1, f"no tunnel landed on {stopping}: {per_pod}"
        # Until the drain's end every tunnel keeps relaying, those on the stopping pod too
        # (the kubelet starts the pre-stop sleep only after the deletion: the drain ends no
        # earlier than `drain_ends`; the last round starts 3 s before it).
        rounds = 0
        while time.time() < drain_ends - 3:
            for i, tunnel in enumerate(tunnels):
                assert tunnel.round_trip(f"drain-{rounds}-{i}") == f"{udp_root} {ROOT_PORT} echo:drain-{rounds}-{i}", (
                    f"tunnel {i} failed {time.time() - deleted:.1f} s after the deletion, its drain ends at "
                    f"{drain_ends - deleted:.0f} s")
            rounds += 1
            time.sleep(1)
        assert rounds >= 5
        # After the drain the stopping pod closes its tunnels itself, before the kubelet's
        # SIGKILL would (termination grace: GRACE_MARGIN_SECONDS after the drain's end).
        wait_for("the stopping pod's tunnels closed before the kubelet's SIGKILL",
                 lambda: sum(t.round_trip("after") == "closed" for t in tunnels) == on_stopping,
                 max(1.0, sigkill - 2 - time.time()), interval=0.5)
    finally:
        for tunnel in tunnels:
            tunnel.close()
        kubectl("scale", "ztr", RELAY, "-n", relay, "--replicas=2")


def test_an_invalid_relay_is_refused_by_the_schema_or_reported_in_its_status(operator_namespace, kubectl, wait_for):
    ns = operator_namespace

    def apply(name: str, spec: dict):
        obj = {"apiVersion": "relay.zt-relay.dev/v1alpha1", "kind": "ZeroTierRelay",
               "metadata": {"name": name, "namespace": ns}, "spec": spec}
        return kubectl("apply", "-f", "-", input=json.dumps(obj), check=False)

    cel = apply("bad-bounds", {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}})
    assert cel.returncode != 0 and "minReplicas must not exceed maxReplicas" in cel.stderr
    schema = apply("bad-replicas", {"replicas": -1})
    assert schema.returncode != 0 and "spec.replicas" in schema.stderr and "greater than or equal to 0" in schema.stderr

    # What CEL can't see (the relay's namespace) is the operator's: its own Service as the
    # fallback, named with the namespace spelled out.
    own = {"fallback": {"service": "bad-loop", "namespace": ns, "port": 443}}
    assert apply("bad-loop", own).returncode == 0
    try:
        def degraded():
            found = kubectl.api.get("ztr", "bad-loop", ns)
            return condition(found, "Degraded") if condition(found, "Degraded").get("reason") == "InvalidSpec" else None

        reported = wait_for("an InvalidSpec condition", degraded, 60)
        assert "spec.fallback.service" in reported["message"]
        assert not kubectl.api.exists("deployment", "bad-loop", ns)
        # Posted after the status that showed the condition (a CI run read the Events in between).
        wait_for("an InvalidSpec Warning Event", lambda: any(
            e["reason"] == "InvalidSpec" and e["type"] == "Warning"
            for e in kubectl.api.list("events", ns, field_selector="involvedObject.name=bad-loop")["items"]), 30)
    finally:
        kubectl("delete", "ztr", "bad-loop", "-n", ns, "--timeout=60s", check=False)


def dry_run(kubectl, namespace: str, name: str, spec: dict):
    """``kubectl apply --dry-run=server`` of a relay: the API server validates, stores nothing."""
    obj = {"apiVersion": "relay.zt-relay.dev/v1alpha1", "kind": "ZeroTierRelay",
           "metadata": {"name": name, "namespace": namespace}, "spec": spec}
    return kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(obj), check=False)


@pytest.mark.parametrize("spec, field, words", [
    ({"relay": {"allowDestinations": ["10.0.0.1/8"]}}, "spec.relay.allowDestinations[0]", "no host bits"),
    ({"relay": {"denyDestinations": ["10.0.0.0/8", "nonsense"]}}, "spec.relay.denyDestinations[1]", "CIDR"),
    ({"service": {"loadBalancerSourceRanges": ["300.0.0.0/8"]}}, "spec.service.loadBalancerSourceRanges[0]", "CIDR"),
    ({"relay": {"legacyTarget": "192.0.2.7"}}, "spec.relay.legacyTarget", "HOST:PORT"),
    ({"relay": {"legacyTarget": "192.0.2.7:70000"}}, "spec.relay.legacyTarget", "HOST:PORT"),
    ({"fallback": {"address": "10.0.0.5"}}, "spec.fallback.address", "HOST:PORT"),
    ({"telemetry": {"otlpEndpoint": "collector:4318"}}, "spec.telemetry.otlpEndpoint", "http:// or https://"),
    ({"telemetry": {"otlpEndpoint": "ftp://collector.example/"}}, "spec.telemetry.otlpEndpoint", "http:// or https://"),
    ({"fallback": {"service": "cel-own", "port": 443}}, "spec.fallback.service", "own Service"),
    # The relay refuses IPv4-mapped ranges too (it matches IPv4 as IPv4): the message says so.
    ({"relay": {"denyDestinations": ["::ffff:10.0.0.0/104"]}}, "spec.relay.denyDestinations[0]", "IPv4-mapped"),
    ({"relay": {"allowDestinations": ["::FFFF:0:0/96"]}}, "spec.relay.allowDestinations[0]", "write the IPv4 range"),
    ({"fallback": {"address": "10.0.0.5:443", "preconnect": 65}}, "spec.fallback.preconnect", "less than or equal to 64"),
], ids=["host-bits", "not-cidr", "lb-range", "no-port", "bad-port", "fallback-address", "otlp-no-scheme",
        "otlp-ftp", "own-service", "mapped-deny", "mapped-allow", "pool-too-big"])
def test_the_api_server_refuses_an_invalid_relay_with_a_message_naming_the_field(operator_namespace, kubectl,
                                                                                 spec, field, words):
    refused = dry_run(kubectl, operator_namespace, "cel-own", spec)
    assert refused.returncode != 0, f"accepted: {spec}"
    assert field in refused.stderr and words in refused.stderr, refused.stderr


def test_the_api_server_accepts_valid_cidrs_endpoints_and_urls(operator_namespace, kubectl):
    accepted = dry_run(kubectl, operator_namespace, "cel-valid", {
        # A bare address is one host, as the relay reads it (and the operator accepted it before CEL).
        "relay": {"allowDestinations": ["10.0.0.0/8", "2001:DB8::/32", "198.18.0.0/15", "198.18.0.5", "2001:db8::5"],
                  "denyDestinations": ["fd00::/8"], "legacyTarget": "[2001:db8::1]:9993"},
        "service": {"loadBalancerSourceRanges": ["198.18.0.0/16"]},
        "fallback": {"address": "site.example:443", "preconnect": 4},
        "telemetry": {"otlpEndpoint": "https://otel.example:4318/v1"},
    })
    assert accepted.returncode == 0, accepted.stderr
    other_namespace = dry_run(kubectl, operator_namespace, "cel-valid",
                              {"fallback": {"service": "cel-valid", "namespace": "elsewhere", "port": 443}})
    assert other_namespace.returncode == 0, other_namespace.stderr


@pytest.mark.alone_on_cluster(reason="puts an older schema on the cluster-wide CRD for a while: a concurrent test would see it, or undo it")
def test_a_relay_stored_before_a_cel_rule_existed_can_still_be_labelled_and_given_a_status(operator_namespace, kubectl,
                                                                                          wait_for):
    """An upgrade: a relay whose fallback names its own Service (no namespace) was stored
    under a schema without the root rule. The API server ratchets an unchanged field, but a
    rule at the root sees the whole object, which changes with every label and every status
    write: unless the rule ratchets itself, the operator can't report InvalidSpec on it and
    nobody can label it (or remove a finalizer)."""
    ns, name = operator_namespace, "old-loop"
    current = yaml.safe_load(CRD_FILE.read_text())
    older = yaml.safe_load(CRD_FILE.read_text())
    older["spec"]["versions"][0]["schema"]["openAPIV3Schema"].pop("x-kubernetes-validations")
    own = {"fallback": {"service": name, "port": 443}, "replicas": 0}

    def schema_refuses_own_service(refuses: bool):
        # A new object (not the stored relay, whose unchanged fallback may ratchet).
        probe = {"fallback": {"service": "old-loop-probe", "port": 443}}
        return lambda: (dry_run(kubectl, ns, "old-loop-probe", probe).returncode != 0) == refuses

    try:
        kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=json.dumps(older))
        wait_for("the schema without the root rule in force", schema_refuses_own_service(False), 60)
        kubectl.apply({"apiVersion": "relay.zt-relay.dev/v1alpha1", "kind": "ZeroTierRelay",
                       "metadata": {"name": name, "namespace": ns}, "spec": own})
    finally:
        kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=json.dumps(current))
    try:
        wait_for("the current schema in force", schema_refuses_own_service(True), 60)
        labelled = kubectl("label", "ztr", name, "-n", ns, "team=edge", check=False)
        assert labelled.returncode == 0, labelled.stderr
        status = kubectl("patch", "ztr", name, "-n", ns, "--subresource=status", "--type=merge",
                         "-p", json.dumps({"status": {"observedGeneration": 0}}), check=False)
        assert status.returncode == 0, status.stderr
        edited = kubectl("patch", "ztr", name, "-n", ns, "--type=merge", "-p", json.dumps({"spec": {"replicas": 1}}),
                         check=False)
        assert edited.returncode == 0, edited.stderr
        changed = kubectl("patch", "ztr", name, "-n", ns, "--type=merge",
                          "-p", json.dumps({"spec": {"fallback": {"port": 444}}}), check=False)
        assert changed.returncode != 0 and "own Service" in changed.stderr, "an edit of the fallback is checked again"

        def reported():
            found = relay_json(kubectl, ns, name)
            degraded = condition(found, "Degraded")
            return degraded if degraded.get("reason") == "InvalidSpec" and (
                found["status"].get("observedGeneration") == found["metadata"]["generation"]) else None

        assert "spec.fallback.service" in wait_for("InvalidSpec for the edited generation", reported, 60)["message"]
    finally:
        kubectl("delete", "ztr", name, "-n", ns, "--ignore-not-found", "--timeout=60s", check=False)


def test_the_operator_serves_its_metrics_and_was_never_denied_by_rbac(relay, kubectl, wait_for):
    kubectl("wait", "--for=condition=Ready", f"ztr/{RELAY}", "-n", relay, "--timeout=180s", timeout=200)
    selector = ",".join(f"{k}={v}" for k, v in OPERATOR_LABELS.items())
    (pod,) = kubectl.api.list("pods", relay, selector=selector)["items"]
    name = pod["metadata"]["name"]

    def counted() -> str | None:
        text = kubectl.api.raw(f"/api/v1/namespaces/{relay}/pods/{name}:8081/proxy/metrics")
        ok = re.search(r'^zt_operator_reconciliations_total\{result="ok"\} (\d+)$', text, re.M)
        ready = re.search(r'^zt_operator_relays\{ready="true"\} (\d+)$', text, re.M)
        return text if ok and int(ok.group(1)) >= 1 and ready and int(ready.group(1)) >= 1 else None

    # The readiness gauge counts the ready relay (also right after an operator restart) once
    # the operator has recorded the pass that found it Ready: a moment after its status says so.
    wait_for("the operator's metrics to count an ok reconciliation and the ready relay", counted, 60)
    logs = kubectl("logs", "-n", relay, name).stdout
    assert [line for line in logs.splitlines() if "forbidden" in line.lower()] == []


def test_a_change_made_while_the_operator_is_down_is_applied_when_it_resumes(operator_namespace, make_relay, kubectl, wait_for):
    ns = operator_namespace
    name = make_relay("resume", {**SMALL, "replicas": 0, "service": {"type": "ClusterIP"}})

    def deployment_replicas():
        deployment = kubectl.api.find("deployment", name, ns)
        return deployment["spec"]["replicas"] if deployment is not None else None

    wait_for("the Deployment", lambda: deployment_replicas() == 0, 60)
    selector = ",".join(f"{k}={v}" for k, v in OPERATOR_LABELS.items())
    kubectl("scale", "deployment", "zt-relay-operator", "-n", ns, "--replicas=0")
    wait_for("the operator pod gone", lambda: not kubectl.api.list("pods", ns, selector=selector)["items"], 90)
    try:
        kubectl("scale", "ztr", name, "-n", ns, "--replicas=1")
        assert deployment_replicas() == 0
    finally:
        kubectl("scale", "deployment", "zt-relay-operator", "-n", ns, "--replicas=1")
    wait_for("the resumed operator to apply the change", lambda: deployment_replicas() == 1, 90, interval=1)


def test_deleting_a_relay_garbage_collects_its_children(operator_namespace, make_relay, kubectl, wait_for):
    ns = operator_namespace
    name = make_relay("doomed", {**SMALL, "replicas": 0, "service": {"type": "ClusterIP"}})
    wait_for("the relay's Deployment", lambda: kubectl.api.exists("deployment", name, ns), 60)
    kubectl("delete", "ztr", name, "-n", ns, "--timeout=60s")

    def gone():
        return not any(kubectl.api.list(kind, ns, selector=f"app.kubernetes.io/instance={name}")["items"]
                       for kind in ("deployment", "service", "hpa", "pdb", "replicaset"))

    wait_for("the relay's children deleted", gone, 90, interval=2)


def operator_metric(kubectl, namespace: str, pattern: str) -> float:
    """The sum of the operator's samples whose line matches ``pattern`` (0 when none)."""
    selector = ",".join(f"{k}={v}" for k, v in OPERATOR_LABELS.items())
    (pod,) = kubectl.api.list("pods", namespace, selector=selector)["items"]
    text = kubectl.api.raw(f"/api/v1/namespaces/{namespace}/pods/{pod['metadata']['name']}:8081/proxy/metrics")
    return sum(float(m.group(1)) for m in re.finditer(rf"^{pattern} ([0-9.e+]+)$", text, re.M))


def operator_incarnations(kubectl, namespace: str) -> list[tuple]:
    """Each operator pod and its containers' restarts and IDs: unchanged only while the same
    operator processes ran throughout (no new pod, no container restart)."""
    selector = ",".join(f"{k}={v}" for k, v in OPERATOR_LABELS.items())
    return sorted(
        (pod["metadata"]["uid"], tuple((c["name"], c.get("restartCount"), c.get("containerID"))
                                       for c in pod["status"].get("containerStatuses") or ()))
        for pod in kubectl.api.list("pods", namespace, selector=selector)["items"])


@pytest.fixture
def cluster_whole_afterwards(kubectl, busybox_image):
    """Teardown: the cluster serves a new workload again before the next test starts (its own
    components relist up to about a minute after an outage: e2e/recovery.py)."""
    yield
    account, workload = recovery.wait_serves_new_workloads(kubectl, busybox_image)
    print(f"after the test: a new namespace's ServiceAccount in {account:.1f} s, a new pod available in {workload:.1f} s")


OUTAGE_SECONDS = reconcile.RECHECK_SECONDS + 5
"""Long enough that the periods this test's assertions rest on have run out inside it: the
pending relay's recheck (RECHECK_SECONDS: its failed passes are the ones counted, with 5 s to
spare after its latest), the kubelet's lease renewal (10 s) and Kopf's request retries (1, 2,
3 s, then every 5 s: a watch reconnects after its last one instead of failing). Longer timers
exist and are not what the test is about: the operator's backoff reaches 16 s only at a pass's
fifth failure in a row and its API timeout is 20 s; client-go's reflector backoff (0.8 s
doubling to 30 s) would decide when the node's API watchers come back, but the test restarts
them after the outage (recovery.restart_api_watchers) so none waits it out; the node
controller's grace period (40-50 s) is past both 15 and 30 s. It was 30 s: 15 s more of every
run for no assertion that needs it."""


@pytest.mark.alone_on_cluster(reason="stops the API server (refused while another run holds the cluster; every concurrent test would fail)")
def test_with_the_api_server_down_for_15_seconds_relays_keep_serving_and_the_operator_recovers(
    cluster_whole_afterwards, relay, make_relay, relay_hosts, udp_root, kubectl, wait_for, cluster
):
    from e2e.cluster import control

    ns = relay
    kubectl("wait", "--for=condition=Ready", f"ztr/{RELAY}", "-n", ns, "--timeout=180s", timeout=200)
    # A relay whose pod never starts is looked at every 10 s (why is it not ready?), so the
    # operator calls the API server during the outage: those failures must be counted.
    pending = make_relay("outage-pending", {**SMALL, "replicas": 1, "service": {"type": "ClusterIP"},
                                            "image": "zt-relay:never-there", "imagePullPolicy": "Never"})
    wait_for("the pending relay reconciled", lambda: condition(relay_json(kubectl, ns, pending), "Degraded")
             .get("status") == "True", 90)
    unreachable = r'zt_operator_api_errors_total\{reason="(?:Unreachable|Timeout)"\}'
    errors_before = operator_metric(kubectl, ns, unreachable)
    # The recovery below is the same operator's: restart_api_watchers restarts the kubelet,
    # which forgets a crash-looping container's backoff and would start it again at once.
    operators = operator_incarnations(kubectl, ns)
    address = get_relay(kubectl, ns)["status"]["address"]
    tunnel = Tunnel(relay_hosts[0], address, udp_root)  # an old client, open across the outage
    probe = Background(relay_hosts[0], "probe", address, udp_root)  # new clients, every 0.2 s
    try:
        assert tunnel.round_trip("before") == f"{udp_root} {ROOT_PORT} echo:before"
        with control.stopped("kube-apiserver"):
            down = time.monotonic()
            assert kubectl("get", "--raw", "/readyz", check=False, timeout=10).returncode != 0
            time.sleep(OUTAGE_SECONDS)  # the outage itself (nothing to wait for: the relays must just keep serving)
            assert tunnel.round_trip("during") == f"{udp_root} {ROOT_PORT} echo:during"
        back = time.monotonic()
        assert tunnel.round_trip("after") == f"{udp_root} {ROOT_PORT} echo:after"
    finally:
        summary = json.loads(probe.finish())
        tunnel.close()
    assert summary["failed"] == [], summary
    assert summary["ok"] >= (back - down) / 0.5, summary  # it really probed throughout
    # The API answers the host again (control.start waited for /readyz). Pods reach it
    # through the `kubernetes` Service, whose only endpoint the API server removed when it
    # stopped: kube-proxy must see it re-added, and it (like the controller manager, whose
    # Deployment status the relay's Ready follows) was refused by the restarting API server
    # and would wait out client-go's backoff, 30-60 s (e2e/recovery.py). The cluster's
    # watchers are restarted instead; the operator is not touched. The API has returned for
    # the operator when the Service address answers (printed so that the gap stays visible).
    print(f"\ncluster's API watchers restarted in {recovery.restart_api_watchers():.1f} s")
    service_ip = cluster.layout.kubernetes_service_ip
    wait_for("the API answering at its Service address", lambda: kubectl(
        f"--server=https://{service_ip}:443", "get", "--raw", "/readyz", check=False, timeout=10).returncode == 0,
        120, interval=0.5)
    returned = time.monotonic()
    print(f"API back for the host after the outage; for pods (its Service address) {returned - back:.1f} s later")
    # The operator recovers by itself: a child deleted now is re-created within 30 s of the
    # API's return, once its watches are back; nothing here nudges it.
    pdb_uid = kubectl.api.get("pdb", RELAY, ns)["metadata"]["uid"]
    kubectl("delete", "pdb", RELAY, "-n", ns, "--wait=false")

    def repaired():
        pdb = kubectl.api.find("pdb", RELAY, ns)
        return pdb is not None and pdb["metadata"]["uid"] != pdb_uid

    try:
        wait_for("the PDB deleted after the outage repaired", repaired, max(1.0, returned + 30 - time.monotonic()),
                 interval=0.5)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n{operator_logs(kubectl, ns)}") from None
    print(f"PDB deleted after the return repaired {time.monotonic() - returned:.1f} s after the API's return")
    # During the outage nothing can be written to the API (no condition, no Event): the
    # failed calls are counted by reason and logged.
    assert operator_metric(kubectl, ns, unreachable) > errors_before, operator_logs(kubectl, ns)
    wait_for("the relay Ready again", lambda: condition(get_relay(kubectl, ns), "Ready").get("status") == "True", 30)
    assert operator_incarnations(kubectl, ns) == operators, (
        f"the operator was replaced or restarted (a new process recovered, not the same one):\n{operator_logs(kubectl, ns)}")
