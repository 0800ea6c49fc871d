"""The chart on a real cluster, step by step as the README tells users.

`helm install` of charts/zt-relay (plus the locally built image's reference), the README's
example ZeroTierRelay, a framed client in a test-host namespace round-tripping through the
relay's load-balancer address to a UDP "root" in another namespace, `helm test`, `helm
upgrade` (the operator rolls, the relay fleet and a live tunnel survive), `helm uninstall`
(the chart's objects go; the CRD and the user's relays stay, as the README says), and no
RBAC denial in the operator's log throughout.

The tests share one release and run in file order; each step needs the previous ones.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml

from e2e import images
from e2e.cluster import paths
from e2e.peers import ROOT_PORT, Tunnel, relay_hosts, udp_root  # noqa: F401 (fixtures)

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "zt-relay"
EXAMPLE = CHART / "examples" / "zerotierrelay.yaml"
# The cluster part's alone phase (e2e/pytest_parts.py), the whole module (its steps share one
# release): the release's operator watches every namespace, as the README installs it, so it
# would reconcile concurrent tests' relays too; and `helm upgrade`'s test puts an older
# schema version on the cluster-wide CRD, which a concurrent operator's start would undo.
pytestmark = pytest.mark.alone_on_cluster(
    reason="its operator watches every namespace; the upgrade step makes the cluster-wide CRD one schema version older")
RELEASE = "zt-relay"
OPERATOR_SELECTOR = "app.kubernetes.io/instance=zt-relay,app.kubernetes.io/component=operator"
HOST_PREFIX = "chart"  # test-host names of this module (e2e.peers.relay_hosts)
HELM_TIMEOUT = "180s"
CRD_NAME = "zerotierrelays.relay.zt-relay.dev"
SCHEMA_VERSION = "relay.zt-relay.dev/schema-version"
PRECONNECT_DESCRIPTION = ("/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/fallback/properties/"
                          "preconnect/description")


@pytest.fixture(scope="module")
def helm(kubeconfig):
    """Runs helm against the test cluster; fails the test with helm's output on error."""
    env = {**paths.helm_env(), "KUBECONFIG": str(kubeconfig)}

    def run(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        result = subprocess.run([paths.binary("helm"), *args], capture_output=True, text=True,
                                timeout=timeout, env=env, cwd=REPO)
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    return run


@pytest.fixture(scope="module")
def image(load_image) -> str:
    """The project image from the current source (built once per session), in the cluster."""
    return load_image(images.build_image())


def _has_crd(kubectl) -> bool:
    return kubectl.api.exists("crd", CRD_NAME)


@pytest.fixture(scope="module")
def release_namespace(kubectl, helm):
    name = f"e2e-chart-{uuid.uuid4().hex[:6]}"
    # Pod Security "restricted" enforced: the operator, relay and test pods must all pass it.
    kubectl.apply({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}},
    })
    yield name
    # Relays carry no finalizer: the namespace deletes with them, operator or not.
    helm("uninstall", RELEASE, "--namespace", name, "--wait", "--timeout", HELM_TIMEOUT, check=False)
    kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


@pytest.fixture(scope="module")
def installed(image, release_namespace, helm):
    """`helm install` exactly as the README says, plus the local image's tag."""
    repository, _, tag = image.rpartition(":")
    helm(
        "install", RELEASE, "charts/zt-relay", "--namespace", release_namespace, "--create-namespace",
        "--set", f"image.repository={repository}", "--set", f"image.tag={tag}",
        "--wait", "--timeout", HELM_TIMEOUT,
    )
    return release_namespace


@pytest.fixture(scope="module")
def operator_logs(kubectl, installed):
    """Collected operator logs (every operator pod seen); checked for RBAC denials at the end."""
    collected: dict[str, str] = {}

    def collect() -> dict[str, str]:
        for pod in kubectl.api.list("pods", installed, selector=OPERATOR_SELECTOR)["items"]:
            name = pod["metadata"]["name"]
            result = kubectl("logs", "-n", installed, name, check=False)
            if result.returncode == 0:
                collected[name] = result.stdout
        return collected

    return collect


def example_relay(cluster_layout) -> dict:
    """The README's example ZeroTierRelay; the test adds the test-host range to its allow list
    (the relay refuses private destinations by default, and test hosts have private addresses)."""
    relay = yaml.safe_load(EXAMPLE.read_text())
    relay["spec"].setdefault("relay", {}).setdefault("allowDestinations", []).append(cluster_layout.test_host_cidr)
    return relay


@pytest.fixture(scope="module")
def relay(installed, kubectl, cluster, wait_for):
    """The README's example relay, applied; returns (name, load-balancer address)."""
    obj = example_relay(cluster.layout)
    name = obj["metadata"]["name"]
    kubectl("apply", "-n", installed, "-f", "-", input=json.dumps(obj))

    def address():
        # What the README tells users to read: the relay's status.address.
        return kubectl.api.get("ztr", name, installed).get("status", {}).get("address")

    return name, wait_for(f"status.address of ZeroTierRelay {name}", address, 180)


def relay_pods(kubectl, namespace: str, name: str) -> dict[str, str]:
    """Running relay pods of the named relay: pod name -> uid."""
    deployment = kubectl.api.get("deployment", name, namespace)
    selector = ",".join(f"{k}={v}" for k, v in deployment["spec"]["selector"]["matchLabels"].items())
    pods = kubectl.api.list("pods", namespace, selector=selector)["items"]
    return {p["metadata"]["name"]: p["metadata"]["uid"] for p in pods if p["status"].get("phase") == "Running"}


def relay_logs(kubectl, namespace: str, name: str) -> str:
    result = kubectl("logs", "-n", namespace, f"deployment/{name}", "--all-containers", "--tail=40", check=False)
    return result.stdout + result.stderr


def operator_relays_handled(kubectl, pod: dict) -> int:
    """How many relays the operator pod has reconciled (its zt_operator_relays gauge, ready
    or not), read from its metrics port through the API server's pod proxy."""
    meta = pod["metadata"]
    (port,) = [p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports", []) if p.get("name") == "metrics"]
    text = kubectl.api.raw(f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}:{port}/proxy/metrics")
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines() if line.startswith("zt_operator_relays{"))


@pytest.fixture(scope="module")
def tunnel(relay, relay_hosts, udp_root):
    client = Tunnel(relay_hosts[0], relay[1], udp_root)
    yield client
    client.close()


def test_the_operator_pod_runs_from_the_project_image(installed, kubectl, image, wait_for_pods_ready):
    (pod,) = wait_for_pods_ready(installed, OPERATOR_SELECTOR, 1)
    (container,) = pod["spec"]["containers"]
    assert container["image"] == image
    assert container["command"] == ["zt-relay-operator"]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


def test_the_readme_example_relay_becomes_running_pods_behind_a_load_balancer(installed, relay, kubectl, wait_for):
    name, address = relay
    pods = wait_for(f"running pods of relay {name}", lambda: relay_pods(kubectl, installed, name), 180)
    assert pods
    status = kubectl.api.get("ztr", name, installed)["status"]
    # The local.conf snippet the README tells users to paste (a string or an object).
    assert f"{address}/443" in json.dumps(status["clientConfig"])


def test_a_framed_client_round_trips_through_the_relay_to_a_udp_root(tunnel, udp_root):
    assert tunnel.round_trip("hello-through-the-chart") == f"{udp_root} {ROOT_PORT} echo:hello-through-the-chart"


def test_helm_test_runs_its_pod_and_passes(installed, relay, kubectl, helm):
    result = helm("test", RELEASE, "--namespace", installed, "--logs", "--timeout", HELM_TIMEOUT)
    assert "Phase:          Succeeded" in result.stdout
    assert "ok: operator healthy" in result.stdout
    assert f"ok: relay {relay[0]}.{installed}.svc:443" in result.stdout
    pod = kubectl.api.get("pod", f"{RELEASE}-test", installed)
    assert pod["status"]["phase"] == "Succeeded"


def test_helm_upgrade_rolls_the_operator_but_keeps_relays_and_live_tunnels(
    installed, relay, tunnel, udp_root, kubectl, helm, operator_logs, wait_for_pods_ready, wait_for
):
    name = relay[0]

    def settled():
        # The relay's own rollouts done (the first address it gets is passed to its pods)
        # and no pod on its way out: the pods compared below are the steady ones.
        deployment = kubectl.api.get("deployment", name, installed)
        status, want = deployment["status"], deployment["spec"]["replicas"]
        pods = kubectl.api.list("pods", installed, selector=f"app.kubernetes.io/instance={name}")["items"]
        return (status.get("observedGeneration") == deployment["metadata"]["generation"]
                and status.get("updatedReplicas") == want == status.get("readyReplicas") == len(pods)
                and not any(p["metadata"].get("deletionTimestamp") for p in pods))

    wait_for(f"relay {name} settled", settled, 180, interval=2)
    pods_before = relay_pods(kubectl, installed, name)
    generation_before = kubectl.api.get("deployment", name, installed)["metadata"]["generation"]
    (operator_before,) = wait_for_pods_ready(installed, OPERATOR_SELECTOR, 1)
    operator_logs()
    assert tunnel.round_trip("before-the-helm-upgrade") == f"{udp_root} {ROOT_PORT} echo:before-the-helm-upgrade"
    # The cluster's CRD one schema version older, with another text (what an operator upgrade
    # meets after a CRD change, e.g. schema-version 9's new description): the new operator
    # brings it up to date at start, and that must roll no relay either.
    crd_before = kubectl.json("get", "crd", CRD_NAME)
    version = int(crd_before["metadata"]["annotations"][SCHEMA_VERSION])
    kubectl("annotate", "crd", CRD_NAME, f"{SCHEMA_VERSION}={version - 1}", "--overwrite")
    kubectl("patch", "crd", CRD_NAME, "--type=json",
            "-p", json.dumps([{"op": "replace", "path": PRECONNECT_DESCRIPTION, "value": "an older text"}]))

    helm(
        "upgrade", RELEASE, "charts/zt-relay", "--namespace", installed, "--reuse-values",
        "--set-string", f"operator.podAnnotations.e2e/rolled={uuid.uuid4().hex[:8]}",
        "--wait", "--timeout", HELM_TIMEOUT,
    )

    def new_operator():
        pods = wait_for_pods_ready(installed, OPERATOR_SELECTOR, 1)
        fresh = [p for p in pods if p["metadata"]["uid"] != operator_before["metadata"]["uid"]]
        return fresh or None

    (operator_after,) = wait_for("a new operator pod", new_operator, 180)

    def resumed():
        # Judge "left alone" only after the new operator has had its pass over every relay
        # in the cluster (it watches all namespaces): its metrics count each relay it handled.
        handled = operator_relays_handled(kubectl, operator_after)
        relays = len(kubectl.api.list("ztr")["items"])
        return handled >= relays or None

    wait_for("the new operator's pass over every relay", resumed, 120)

    def crd_upgraded():
        live = kubectl.json("get", "crd", CRD_NAME)
        preconnect = live["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
            "fallback"]["properties"]["preconnect"]
        return live["metadata"]["annotations"][SCHEMA_VERSION] == str(version) and preconnect["description"] != "an older text"

    wait_for("the new operator's CRD upgrade", crd_upgraded, 60)
    # A pass that changed the relay's Deployment bumped its generation at once, before any pod moves.
    generation = kubectl.api.get("deployment", name, installed)["metadata"]["generation"]
    assert generation == generation_before, f"the new operator changed relay {name}'s Deployment (generation {generation_before} -> {generation})"
    assert relay_pods(kubectl, installed, name) == pods_before
    try:
        reply = tunnel.round_trip("after-the-helm-upgrade")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nrelay logs:\n{relay_logs(kubectl, installed, name)}") from None
    assert reply == f"{udp_root} {ROOT_PORT} echo:after-the-helm-upgrade"
    operator_logs()


# How the API server words an RBAC denial: '... is forbidden: User "system:serviceaccount:
# NS:NAME" cannot VERB resource ...'. Other 403s (e.g. creating an Event in a namespace
# being deleted) are not about the chart's RBAC.
RBAC_DENIAL = re.compile(r'forbidden: User \\?"system:serviceaccount:[^"\\]+\\?" cannot')


def test_the_rbac_denial_pattern_matches_the_api_servers_wording():
    denial = ('deployments.apps "relay" is forbidden: User "system:serviceaccount:zt:zt-relay-operator" '
              'cannot patch resource "deployments" in API group "apps" in the namespace "zt"')
    terminating = 'events "kopf-event-" is forbidden: unable to create new content in namespace x because it is being terminated'
    assert RBAC_DENIAL.search(denial)
    assert RBAC_DENIAL.search(denial.replace('"', '\\"'))  # as quoted inside a logged repr
    assert not RBAC_DENIAL.search(terminating)


def test_the_operator_log_shows_no_rbac_denial(operator_logs):
    logs = operator_logs()
    assert logs
    for pod, text in logs.items():
        denied = [line for line in text.splitlines() if RBAC_DENIAL.search(line)]
        assert denied == [], f"RBAC denial in {pod}: {denied[:3]}"


def test_helm_uninstall_removes_the_charts_objects_but_keeps_the_crd_and_relays(installed, relay, kubectl, helm, wait_for):
    name = relay[0]
    helm("uninstall", RELEASE, "--namespace", installed, "--wait", "--timeout", HELM_TIMEOUT)

    for kind, namespace in (("deployment", installed), ("serviceaccount", installed), ("service", installed),
                            ("clusterrole", None), ("clusterrolebinding", None)):
        wait_for(f"{kind} {RELEASE}-operator deleted",
                 lambda: not kubectl.api.exists(kind, f"{RELEASE}-operator", namespace), 120)
    assert _has_crd(kubectl)
    assert kubectl.api.exists("zerotierrelay", name, installed)
    assert relay_pods(kubectl, installed, name), "the relay's pods should outlive the chart"



def test_helm_uninstall_of_a_release_with_its_default_relay_completes(image, kubectl, helm, wait_for):
    """Helm deletes the operator before the relay; the relay must not hang in Terminating."""
    namespace = f"e2e-chart-del-{uuid.uuid4().hex[:6]}"
    release = "zt-relay-del"
    repository, _, tag = image.rpartition(":")
    kubectl.apply({"apiVersion": "v1", "kind": "Namespace",
                   "metadata": {"name": namespace, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})
    try:
        common = ("--namespace", namespace, "--set", f"image.repository={repository}", "--set", f"image.tag={tag}",
                  "--wait", "--timeout", HELM_TIMEOUT)
        helm("install", release, "charts/zt-relay", *common)
        helm("upgrade", release, "charts/zt-relay", *common, "--set", "defaultRelay.enabled=true",
             "--set", "defaultRelay.spec.replicas=0", "--set", "defaultRelay.spec.service.type=ClusterIP")
        relay = "zt-relay"
        wait_for("the default relay's Deployment", lambda: kubectl.api.exists("deployment", relay, namespace), 90)
        started = time.monotonic()
        uninstall = helm("uninstall", release, "--namespace", namespace, "--wait", "--timeout", HELM_TIMEOUT, check=False)
        left = kubectl("get", "ztr,deployment,pods", "-n", namespace, "-o", "wide", check=False).stdout
        assert uninstall.returncode == 0, f"{uninstall.stderr}\nleft after {time.monotonic() - started:.0f} s:\n{left}"
        # The relay was deleted with the release (no finalizer held it), and its children went with it.
        assert not kubectl.api.exists("ztr", relay, namespace)
        wait_for("its Deployment garbage-collected", lambda: not kubectl.api.exists("deployment", relay, namespace), 60)
        print(f"helm uninstall with the default relay took {time.monotonic() - started:.0f} s")
    finally:
        helm("uninstall", release, "--namespace", namespace, check=False)
        kubectl("delete", "namespace", namespace, "--wait=false", "--ignore-not-found", check=False)
