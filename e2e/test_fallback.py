"""One load-balancer address for a website and a relay: ``spec.fallback`` on a real cluster.

A real nginx (Debian's nginx-light in an image made offline with debootstrap, as the base
image is) serves HTTPS with a CA made here, behind a ClusterIP Service "site". A
ZeroTierRelay "web" falls back to it; the operator runs in a pod as in
``test_operator.py``. From a test host "on the internet", through the relay's
LoadBalancer address only: ``curl --cacert`` gets the page (the backend's own certificate,
verified), framed ZeroTier traffic round-trips to a UDP root, and both keep working
together under load (16 tunnels and 16 parallel HTTPS downloads).
"""

from __future__ import annotations

import hashlib
import json
import subprocess

import pytest

from e2e import images
from e2e.cluster import network
from e2e.peers import ROOT_PORT, Background, Tunnel, relay_hosts, udp_root  # noqa: F401 (fixtures)
from e2e.test_operator import image, operator_namespace  # noqa: F401 (fixtures)
from tests.relay.nginx_site import INDEX, SERVER_NAME, make_certificates

RELAY = "web"
HOST_PREFIX = "fb"
SITE_LABELS = {"app.kubernetes.io/name": "e2e-site"}
BIG_BYTES = 20_000_000
PARALLEL = 16
#: Datagrams each tunnel keeps in flight under the downloads (the 16 of the ``load`` peer
#: that lost one in an earlier run).
IN_FLIGHT = 16
NGINX_CONF = f"""
pid /tmp/nginx.pid;
error_log stderr;
worker_processes 2;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path /tmp/body;
    proxy_temp_path /tmp/proxy;
    fastcgi_temp_path /tmp/fastcgi;
    uwsgi_temp_path /tmp/uwsgi;
    scgi_temp_path /tmp/scgi;
    default_type application/octet-stream;
    sendfile on;
    server {{
        listen 8443 ssl;
        server_name {SERVER_NAME};
        ssl_certificate /tls/chain.pem;
        ssl_certificate_key /tls/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        root /tmp/www;
        location / {{ index index.html; }}
    }}
}}
"""
START = (
    "mkdir -p /tmp/www && cat /etc/site/index.html > /tmp/www/index.html"
    f" && head -c {BIG_BYTES} /dev/zero > /tmp/www/big"
    " && exec nginx -c /etc/site/nginx.conf -e stderr -g 'daemon off;'"
)


@pytest.fixture(scope="module")
def nginx_image(load_image) -> str:
    return load_image(images.build_base(images.NGINX_PACKAGES, images.NGINX_REPOSITORY))


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    return make_certificates(tmp_path_factory.mktemp("site-tls"))  # ca, chain, key


@pytest.fixture(scope="module")
def site(operator_namespace, nginx_image, certificates, kubectl):  # noqa: F811
    """nginx behind the ClusterIP Service "site" (443 -> 8443), in the operator's
    namespace (Pod Security "restricted": nginx runs as a numeric non-root user); applied,
    not yet ready (see `address`)."""
    namespace = operator_namespace
    _, chain, key = certificates
    kubectl.apply(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "site-tls", "namespace": namespace},
         "stringData": {"chain.pem": chain.read_text(), "key.pem": key.read_text()}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "site", "namespace": namespace},
         "data": {"nginx.conf": NGINX_CONF, "index.html": INDEX.decode()}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "site", "namespace": namespace},
         "spec": {"replicas": 1, "selector": {"matchLabels": SITE_LABELS}, "template": {
             "metadata": {"labels": SITE_LABELS},
             "spec": {
                 "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                                     "seccompProfile": {"type": "RuntimeDefault"}},
                 "containers": [{
                     "name": "nginx", "image": nginx_image, "imagePullPolicy": "IfNotPresent",
                     "command": ["/bin/sh", "-c", START],
                     "ports": [{"name": "https", "containerPort": 8443}],
                     "readinessProbe": {"tcpSocket": {"port": "https"}, "periodSeconds": 2},
                     "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                         "readOnlyRootFilesystem": True},
                     "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"},
                                      {"name": "tls", "mountPath": "/tls", "readOnly": True},
                                      {"name": "conf", "mountPath": "/etc/site", "readOnly": True}],
                 }],
                 "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
                             {"name": "tls", "secret": {"secretName": "site-tls"}},
                             {"name": "conf", "configMap": {"name": "site"}}],
             }}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "site", "namespace": namespace},
         "spec": {"type": "ClusterIP", "selector": SITE_LABELS,
                  "ports": [{"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP"}]}},
    )
    return namespace


def wait_for_the_site(kubectl, namespace: str, wait_for) -> list[dict]:
    selector = ",".join(f"{k}={v}" for k, v in SITE_LABELS.items())

    def ready():
        pods = kubectl.json("get", "pods", "-n", namespace, "-l", selector)["items"]
        return [p for p in pods if any(c["type"] == "Ready" and c["status"] == "True"
                                       for c in p["status"].get("conditions", []))]

    try:
        return wait_for("the site's nginx pod ready", ready, 180)
    except TimeoutError as exc:
        logs = kubectl("logs", "-n", namespace, "-l", selector, "--tail=30", check=False)
        raise AssertionError(f"{exc}\n{logs.stdout}{logs.stderr}") from None


@pytest.fixture(scope="module")
def address(site, kubectl, cluster, wait_for) -> str:
    """The ZeroTierRelay "web" with spec.fallback to the site; its load-balancer address, once
    the site's nginx is ready too (the relay is applied first: both pods start together)."""
    kubectl.apply({
        "apiVersion": "relay.zt-relay.dev/v1alpha1", "kind": "ZeroTierRelay",
        "metadata": {"name": RELAY, "namespace": site},
        "spec": {
            "replicas": 1,
            "resources": {"requests": {"cpu": "50m", "memory": "48Mi"}, "limits": {"memory": "256Mi"}},
            "relay": {"allowDestinations": [cluster.layout.test_host_cidr]},
            "fallback": {"service": "site", "port": 443},
            "networkPolicy": {"enabled": True},
        },
    })

    def ready():
        relay = kubectl.json("get", "ztr", RELAY, "-n", site)
        conditions = {c["type"]: c["status"] for c in relay.get("status", {}).get("conditions", [])}
        return relay["status"].get("address") if conditions.get("Ready") == "True" else None

    pods = wait_for_the_site(kubectl, site, wait_for)
    found = wait_for("ZeroTierRelay web Ready with an address", ready, 180)
    for ip in (p["status"]["podIP"] for p in pods):
        wait_for_the_route_to(ip, wait_for)
    return found


def wait_for_the_route_to(ip: str, wait_for) -> None:
    """Ready pods are not yet a route: kube-proxy programs the site Service's endpoint, and
    kube-router lets the relay's egress policy reach the new pod, a moment after the pod is
    Ready; until then the relay's fallback to site.<ns>.svc:443 is refused (both REJECT)."""
    wait_for(f"kube-proxy to route the site Service to {ip}", lambda: f"--to-destination {ip}:8443" in network.sh(
        "iptables", "-w", "5", "-t", "nat", "-S").stdout, 60, interval=0.2)

    def in_a_policys_destinations():
        for line in network.sh("ipset", "save").stdout.splitlines():
            parts = line.split()
            if parts[:1] == ["add"] and parts[1].startswith("KUBE-DST-") and parts[2] == ip:
                return True
        return False

    wait_for(f"kube-router to let the relay's policy reach {ip}", in_a_policys_destinations, 60, interval=0.2)


def curl(host, address: str, ca, path: str = "/", output: str = "-") -> subprocess.CompletedProcess:
    return host.run(
        "curl", "-sS", "--fail", "--max-time", "60", "--cacert", str(ca),
        "--resolve", f"{SERVER_NAME}:443:{address}", "-o", output,
        f"https://{SERVER_NAME}{path}", timeout=90, check=False,
    )


def test_the_page_comes_through_the_relays_address_with_the_sites_certificate(address, relay_hosts, certificates, kubectl, site):
    ca = certificates[0]
    result = curl(relay_hosts[0], address, ca)
    logs = kubectl("logs", "-n", site, "-l", f"app.kubernetes.io/instance={RELAY}", "--tail=20", check=False).stdout
    assert result.returncode == 0, f"{result.stderr}\nrelay logs:\n{logs}"
    assert result.stdout == INDEX.decode()


def test_framed_zerotier_traffic_round_trips_through_the_same_address(address, relay_hosts, udp_root):
    tunnel = Tunnel(relay_hosts[0], address, udp_root)
    try:
        answer = tunnel.round_trip("zt-beside-the-site")
    finally:
        tunnel.close()
    assert answer == f"{udp_root} {ROOT_PORT} echo:zt-beside-the-site"


def udp_counters(host) -> dict[str, int]:
    """The kernel's UDP counters of a test host's namespace (``Udp:`` of /proc/net/snmp)."""
    lines = [line.split() for line in host.run("cat", "/proc/net/snmp").stdout.splitlines() if line.startswith("Udp:")]
    return {name: int(value) for name, value in zip(lines[0][1:], lines[1][1:])}


def relay_drops(kubectl, namespace: str) -> dict[str, float]:
    """zt_relay_dropped_total and UDP send errors of the relay's pods, by pod and reason, and
    the kernel's UDP counters of each pod's namespace (a datagram the root echoed that never
    reached the relay shows there, as RcvbufErrors or InErrors, if the pod's kernel dropped it)."""
    drops = {}
    for pod in kubectl.json("get", "pods", "-n", namespace, "-l", f"app.kubernetes.io/instance={RELAY}")["items"]:
        name = pod["metadata"]["name"]
        text = kubectl("get", "--raw", f"/api/v1/namespaces/{namespace}/pods/{name}:9090/proxy/metrics").stdout
        for line in text.splitlines():
            if line.startswith(("zt_relay_dropped_total{", "zt_relay_udp_send_errors_total")):
                key, value = line.rsplit(" ", 1)
                drops[f"{name} {key}"] = float(value)
        snmp = kubectl("exec", "-n", namespace, name, "--", "python3", "-c", "print(open('/proc/net/snmp').read())").stdout
        lines = [line.split() for line in snmp.splitlines() if line.startswith("Udp:")]
        for counter, value in zip(lines[0][1:], lines[1][1:]):
            if counter in ("InErrors", "RcvbufErrors", "NoPorts"):
                drops[f"{name} kernel Udp {counter}"] = float(value)
    return drops


def test_16_tunnels_and_16_https_downloads_work_together(address, relay_hosts, udp_root, certificates, tmp_path, kubectl, site):
    client, root = relay_hosts
    before = udp_counters(root), relay_drops(kubectl, site)
    loads = [Background(client, "steady", address, udp_root, extra=(str(IN_FLIGHT),)) for _ in range(PARALLEL)]
    downloads = []
    try:
        for load in loads:  # every tunnel is up before the downloads start
            load.wait_for_line("connected")
        for i in range(PARALLEL):
            argv = ["curl", "-sS", "--fail", "--max-time", "120", "--cacert", str(certificates[0]),
                    "--resolve", f"{SERVER_NAME}:443:{address}", "-o", str(tmp_path / f"big-{i}"),
                    f"https://{SERVER_NAME}/big"]
            downloads.append(client.popen(*argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        results = [(p.wait(timeout=180), p.communicate()[1]) for p in downloads]
    finally:
        counts = [json.loads(load.finish()) for load in loads]  # each tunnel stayed open
    after = udp_counters(root), relay_drops(kubectl, site)
    zero = hashlib.sha256(bytes(BIG_BYTES)).hexdigest()
    assert [code for code, _ in results] == [0] * PARALLEL, [err for _, err in results]
    for i in range(PARALLEL):
        assert hashlib.sha256((tmp_path / f"big-{i}").read_bytes()).hexdigest() == zero
    # Every datagram of every tunnel round-trips: the path is local (veth, the node, the
    # pod), so a loss is a bug. Where one would be lost is said: the root's socket
    # (its kernel counters) or the relay (its drop counters, its pod's kernel UDP counters).
    root_delta = {k: v - before[0].get(k, 0) for k, v in after[0].items() if v != before[0].get(k, 0)}
    relay_delta = {k: v - before[1].get(k, 0) for k, v in after[1].items() if v != before[1].get(k, 0)}
    where = f"root UDP counters changed by {root_delta}; relay drops {relay_delta}"
    print(f"round trips per tunnel {[c['received'] for c in counts]}; {where}")
    assert all(c["sent"] >= 20 for c in counts), counts
    assert [(c["received"], c["missing"], c["unexpected"]) for c in counts] == [(c["sent"], [], 0) for c in counts], where
    assert "RcvbufErrors" not in root_delta and "InErrors" not in root_delta, where
    assert not relay_delta, where


def test_the_network_policy_opens_egress_to_exactly_the_sites_pods(address, kubectl, site):
    policy = kubectl.json("get", "networkpolicy", RELAY, "-n", site)
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": site}},
                    "podSelector": {"matchLabels": SITE_LABELS}}],
            "ports": [{"protocol": "TCP", "port": "https"}]} in policy["spec"]["egress"]
