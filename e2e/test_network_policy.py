"""A relay's NetworkPolicy, enforced for real (kube-router's policy controller, started by
the harness): what the policy denies is dropped, what it allows works.

The operator runs in a pod as in ``test_operator.py``. Its namespace holds two busybox web
servers: "backend", the relay's ``spec.fallback``, and "other", which no policy mentions.
The ZeroTierRelay "np" has ``networkPolicy.enabled`` and a fallback, so its policy limits
ingress (tunnel port from anywhere, health port from nobody) and egress (UDP, TCP 53, TCP
to the backend's pods only). Each denial is shown next to its control: the same flow from
a pod without a policy, or the allowed flow from the same pod, goes through.
"""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest

from e2e import workloads
from e2e.peers import ROOT_PORT, Tunnel, relay_hosts, udp_root  # noqa: F401 (fixtures)
from e2e.test_chart import helm  # noqa: F401 (fixtures)
from e2e.test_operator import image, operator_namespace  # noqa: F401 (fixtures)
from zt_operator.builders import HEALTH_PORT, TUNNEL_PORT

RELAY = "np"
HOST_PREFIX = "np"
RELAY_SELECTOR = f"app.kubernetes.io/instance={RELAY},app.kubernetes.io/component=relay"
CONNECT = (
    "import socket, sys\n"
    "try:\n"
    "    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()\n"
    "except OSError as exc:\n"
    "    print(f'refused: {exc!r}'); sys.exit(3)\n"
    "print('connected')\n"
)
RESOLVE = "import socket, sys; print(socket.getaddrinfo(sys.argv[1], 80, proto=socket.IPPROTO_UDP)[0][4][0])"
RESTRICTED_POD = {"runAsNonRoot": True, "runAsUser": 10001, "seccompProfile": {"type": "RuntimeDefault"}}
RESTRICTED_CONTAINER = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def _web(name: str, image: str, namespace: str) -> list[dict]:  # noqa: F811
    """busybox httpd (serving its pod name) and a ClusterIP Service, Pod Security "restricted"."""
    deployment = workloads.web_deployment(name, image)
    deployment["metadata"]["namespace"] = namespace
    pod = deployment["spec"]["template"]["spec"]
    pod["securityContext"] = RESTRICTED_POD
    pod["containers"][0]["securityContext"] = RESTRICTED_CONTAINER
    service = workloads.service(name)
    service["metadata"]["namespace"] = namespace
    return [deployment, service]


@pytest.fixture(scope="module")
def enforcer(cluster):
    """kube-router's policy controller runs for this cluster and has programmed its chains."""
    if cluster.backend != "local":
        pytest.skip("the NetworkPolicy enforcer is the local cluster's (--cluster=local)")
    from e2e.cluster import configs, paths, processes

    state = configs.StatePaths(paths.state_dir())
    return processes.running_pid("kube-router", state.run), cluster.layout


@pytest.fixture(scope="module")
def pods(operator_namespace, busybox_image, kubectl, wait_for, cluster):  # noqa: F811
    """The two web servers and the relay "np" falling back to "backend"; pod IPs by role."""
    namespace = operator_namespace
    kubectl.apply(*_web("backend", busybox_image, namespace), *_web("other", busybox_image, namespace))
    kubectl.apply({
        "apiVersion": "relay.zt-relay.dev/v1alpha1", "kind": "ZeroTierRelay",
        "metadata": {"name": RELAY, "namespace": namespace},
        "spec": {
            "replicas": 1,
            "resources": {"requests": {"cpu": "20m", "memory": "32Mi"}, "limits": {"memory": "256Mi"}},
            "relay": {"allowDestinations": [cluster.layout.test_host_cidr]},
            "fallback": {"service": "backend", "port": 80},
            "networkPolicy": {"enabled": True},
        },
    })
    found = {}
    for role, selector in (("backend", "app=backend"), ("other", "app=other"), ("relay", RELAY_SELECTOR)):
        def one_ready_pod():
            items = kubectl.api.list("pods", namespace, selector=selector)["items"]
            ready = [p for p in items if p["status"].get("podIP") and not p["metadata"].get("deletionTimestamp")
                     and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))]
            return ready[0] if len(ready) == 1 == len(items) else None

        pod = wait_for(f"one ready {role} pod", one_ready_pod, 180)
        found[role] = {"name": pod["metadata"]["name"], "ip": pod["status"]["podIP"]}

    def policy_opens_the_backend():
        policy = kubectl.api.find("networkpolicy", RELAY, namespace) or {}
        return any(rule.get("to") for rule in (policy.get("spec") or {}).get("egress", []))

    wait_for("the relay's policy to open egress to the backend's pods", policy_opens_the_backend, 60)
    found["namespace"] = namespace
    found["services"] = {
        name: kubectl.api.get("service", name, namespace)["spec"]["clusterIP"] for name in ("backend", "other")
    }
    return found


@pytest.fixture(scope="module")
def address(pods, kubectl, wait_for) -> str:
    def ready():
        relay = kubectl.api.get("ztr", RELAY, pods["namespace"])
        conditions = {c["type"]: c["status"] for c in relay.get("status", {}).get("conditions", [])}
        return relay["status"].get("address") if conditions.get("Ready") == "True" else None

    return wait_for("ZeroTierRelay np Ready with an address", ready, 180)


def relay_connects(kubectl, pods, ip: str, port: int, timeout: float = 4) -> subprocess.CompletedProcess:
    """A TCP connect from inside the relay pod (its image has python3)."""
    return kubectl("exec", "-n", pods["namespace"], pods["relay"]["name"], "--",
                   "python3", "-c", CONNECT, ip, str(port), str(timeout), check=False, timeout=60)


def fetch_from(kubectl, pods, role: str, ip: str, port: int, path: str = "/") -> subprocess.CompletedProcess:
    """An HTTP/1.0 GET with busybox nc from the pod of `role` (its image has no wget)."""
    script = f"printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} {port}"
    return kubectl("exec", "-n", pods["namespace"], pods[role]["name"], "--", "sh", "-c", script, check=False, timeout=60)


def served(result: subprocess.CompletedProcess, name: str) -> bool:
    """The GET got busybox httpd's page: the serving pod's name as the body."""
    return result.returncode == 0 and result.stdout.startswith("HTTP/1.") and name in result.stdout.splitlines()


def test_the_enforcer_runs_and_has_programmed_its_chains(enforcer):
    pid, _ = enforcer
    assert pid is not None, "kube-router (the NetworkPolicy enforcer) is not running"
    chains = subprocess.run(["iptables", "-w", "5", "-S"], capture_output=True, text=True, check=True).stdout
    assert "-A FORWARD -m comment --comment \"kube-router netpol" in chains


def test_the_relay_cannot_reach_a_pod_its_policy_does_not_name(enforcer, pods, kubectl):
    port = workloads.HTTP_PORT
    # Control: "other" serves, and the backend pod (no policy selects it) reaches it.
    control = fetch_from(kubectl, pods, "backend", pods["other"]["ip"], port)
    assert served(control, pods["other"]["name"]), f"{control.stdout}{control.stderr}"
    denied = relay_connects(kubectl, pods, pods["other"]["ip"], port)
    assert denied.returncode == 3, f"the relay reached a pod its policy denies: {denied.stdout}{denied.stderr}"
    allowed = relay_connects(kubectl, pods, pods["backend"]["ip"], port)
    assert allowed.returncode == 0, f"the relay could not reach its fallback backend: {allowed.stdout}{allowed.stderr}"


def test_the_relay_cannot_reach_a_service_its_policy_does_not_name(enforcer, pods, kubectl):
    control = fetch_from(kubectl, pods, "backend", pods["services"]["other"], 80)
    assert served(control, pods["other"]["name"]), f"{control.stdout}{control.stderr}"
    denied = relay_connects(kubectl, pods, pods["services"]["other"], 80)
    assert denied.returncode == 3, f"the relay reached a Service its policy denies: {denied.stdout}{denied.stderr}"
    allowed = relay_connects(kubectl, pods, pods["services"]["backend"], 80)
    assert allowed.returncode == 0, f"the relay could not reach the backend's Service: {allowed.stdout}{allowed.stderr}"


def test_the_relay_resolves_cluster_names(enforcer, pods, kubectl):
    name = f"backend.{pods['namespace']}.svc.cluster.local"
    result = kubectl("exec", "-n", pods["namespace"], pods["relay"]["name"], "--", "python3", "-c", RESOLVE, name,
                     check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == pods["services"]["backend"]


def test_the_tunnel_port_is_open_to_other_pods_and_the_health_port_is_not(enforcer, pods, kubectl):
    relay_ip = pods["relay"]["ip"]
    # HTTP to the tunnel port is not ZeroTier: the relay passes it to the backend.
    tunnel_port = fetch_from(kubectl, pods, "other", relay_ip, TUNNEL_PORT)
    assert served(tunnel_port, pods["backend"]["name"]), f"{tunnel_port.stdout}{tunnel_port.stderr}"
    health = fetch_from(kubectl, pods, "other", relay_ip, HEALTH_PORT, "/healthz")
    assert not health.stdout.startswith("HTTP/1."), f"the health port answered a pod the policy does not allow: {health.stdout}"
    # Control: the kubelet's probes (from the node) still reach it: the pod is Ready.
    pod = kubectl.api.get("pod", pods["relay"]["name"], pods["namespace"])
    assert any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"]["conditions"])


def test_through_the_load_balancer_the_site_and_a_tunnel_both_work(enforcer, pods, address, relay_hosts, udp_root):
    page = relay_hosts[0].run("curl", "-sS", "--fail", "--max-time", "20", f"http://{address}:443/", timeout=30, check=False)
    assert page.returncode == 0, page.stderr
    assert page.stdout.strip() == pods["backend"]["name"]
    tunnel = Tunnel(relay_hosts[0], address, udp_root)
    try:
        answer = tunnel.round_trip("through-the-policy")
    finally:
        tunnel.close()
    assert answer == f"{udp_root} {ROOT_PORT} echo:through-the-policy"


def test_udp_the_policy_allows_still_never_leaves_the_machine(enforcer, pods, kubectl, probes):
    """The relay's policy allows UDP anywhere, so kube-router ACCEPTs it in filter FORWARD,
    where its jump may sit above the harness's: the security-table guard drops it whichever is
    first (counted per test: from the relay pod's own address)."""
    from e2e.probes import FORWARD

    gate = probes.gate(FORWARD, "-s", pods["relay"]["ip"], "-d", "198.18.0.9", "-p", "udp", "--dport", "9999")
    send = ("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "for _ in range(5): s.sendto(b'out', ('198.18.0.9', 9999))\n")
    result = kubectl("exec", "-n", pods["namespace"], pods["relay"]["name"], "--", "python3", "-c", send, check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    gate.dropped(at_least=5)


@pytest.mark.alone_on_cluster(reason="stops kube-router (refused while another run holds the cluster) and lifts every policy meanwhile")
def test_with_the_enforcer_stopped_and_its_rules_gone_the_denied_flow_goes_through(enforcer, pods, kubectl, cluster_cli, wait_for):
    """The denials above are the enforcer's doing (not a missing route or a closed port):
    without kube-router and its rules the relay reaches "other"; started again, it is denied."""
    from e2e.cluster import firewall, ipsets

    other = (pods["other"]["ip"], workloads.HTTP_PORT)
    cluster_cli("stop kube-router")
    try:
        firewall.remove(firewall.kube_router_chain)  # a stopped kube-router leaves them in force
        ipsets.remove()
        reached = relay_connects(kubectl, pods, *other)
    finally:
        cluster_cli("start kube-router")
    assert reached.returncode == 0, f"without the enforcer the relay still could not reach it: {reached.stdout}{reached.stderr}"
    wait_for("kube-router to deny the flow again", lambda: relay_connects(kubectl, pods, *other).returncode == 3, 90, 2)


@pytest.fixture(scope="module")
def chart_release(image, kubectl, helm, wait_for):  # noqa: F811
    """The chart with `networkPolicy.enabled=true` in a namespace of its own (Pod Security
    "restricted"), and a relay in it; (namespace, operator pod)."""
    namespace = f"e2e-chart-np-{uuid.uuid4().hex[:6]}"
    kubectl.apply({"apiVersion": "v1", "kind": "Namespace",
                   "metadata": {"name": namespace, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})
    repository, _, tag = image.rpartition(":")
    try:
        helm("install", "np", "charts/zt-relay", "--namespace", namespace, "--set", f"image.repository={repository}",
             "--set", f"image.tag={tag}", "--set", "networkPolicy.enabled=true", "--set", "helmTest.enabled=false",
             "--set", f"operator.watchNamespaces={{{namespace}}}",  # not the other operator's relays
             "--wait", "--timeout", "180s")
        kubectl.apply({"apiVersion": "relay.zt-relay.dev/v1alpha1", "kind": "ZeroTierRelay",
                       "metadata": {"name": "charted", "namespace": namespace},
                       "spec": {"replicas": 1, "resources": {"requests": {"cpu": "20m", "memory": "32Mi"},
                                                             "limits": {"memory": "256Mi"}}}})
        operator = kubectl.api.list("pods", namespace, selector="app.kubernetes.io/component=operator")["items"][0]
        yield namespace, operator["metadata"]["name"]
    finally:
        helm("uninstall", "np", "--namespace", namespace, "--wait", "--timeout", "120s", check=False)
        kubectl("delete", "namespace", namespace, "--wait=false", "--ignore-not-found", check=False)


def test_the_charts_operator_policy_lets_it_reach_the_api_and_nothing_else(enforcer, chart_release, pods, kubectl, wait_for):
    namespace, operator = chart_release

    def relay_ready():
        relay = kubectl.api.get("ztr", "charted", namespace)
        return any(c["type"] == "Ready" and c["status"] == "True" for c in relay.get("status", {}).get("conditions", []))

    # The operator reconciled a relay into running pods: its egress to the API server works.
    wait_for("the chart's relay Ready (the operator reached the API)", relay_ready, 180)

    def connects(ip: str, port: int) -> subprocess.CompletedProcess:
        return kubectl("exec", "-n", namespace, operator, "--", "python3", "-c", CONNECT, ip, str(port), "4",
                       check=False, timeout=60)

    # Not on its egress list (53, 443, 6443): a web server in another namespace.
    denied = connects(pods["other"]["ip"], workloads.HTTP_PORT)
    assert denied.returncode == 3, f"the chart's operator reached a pod its policy denies: {denied.stdout}{denied.stderr}"
    allowed = connects(enforcer[1].kubernetes_service_ip, 443)
    assert allowed.returncode == 0, f"the chart's operator could not reach the API server: {allowed.stdout}{allowed.stderr}"
