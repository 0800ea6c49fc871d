"""Pods really run on the cluster, and the control plane behaves like a real one."""

import base64
import json
import re

from e2e import workloads


def test_a_deployments_pods_run_and_answer_logs_and_exec(kubectl, namespace, busybox_image, wait_for_pods_ready, wait_for):
    kubectl.apply(workloads.web_deployment("web", busybox_image, replicas=2), namespace=namespace)
    pods = wait_for_pods_ready(namespace, "app=web", count=2, timeout=120)
    pod = pods[0]["metadata"]["name"]
    wait_for("the pod's log line", lambda: f"serving {pod}" in kubectl("logs", "-n", namespace, pod).stdout, 30)
    served = kubectl("exec", "-n", namespace, pod, "--", "cat", "/www/index.html").stdout
    assert served.strip() == pod
    assert kubectl("exec", "-n", namespace, pod, "--", "id", "-u").stdout.strip() == "10001"


def test_owner_reference_garbage_collection_removes_children(kubectl, namespace, wait_for):
    kubectl.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "parent"}}, namespace=namespace)
    uid = kubectl.json("get", "configmap", "parent", "-n", namespace)["metadata"]["uid"]
    owner = {"apiVersion": "v1", "kind": "ConfigMap", "name": "parent", "uid": uid}
    child = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "child", "ownerReferences": [owner]}}
    kubectl.apply(child, namespace=namespace)
    kubectl("delete", "configmap", "parent", "-n", namespace)
    wait_for(
        "the child to be garbage-collected",
        lambda: kubectl("get", "configmap", "child", "-n", namespace, check=False).returncode != 0,
        60,
    )


def test_rbac_denies_a_service_account_what_it_was_not_granted(kubectl, namespace, tmp_path):
    kubectl("create", "serviceaccount", "reader", "-n", namespace)
    kubectl("create", "role", "pod-reader", "--verb=get,list", "--resource=pods", "-n", namespace)
    kubectl("create", "rolebinding", "reader", "--role=pod-reader", f"--serviceaccount={namespace}:reader", "-n", namespace)
    token = kubectl("create", "token", "reader", "-n", namespace).stdout.strip()
    view = json.loads(kubectl("config", "view", "--raw", "--minify", "-o", "json").stdout)
    cluster = view["clusters"][0]["cluster"]
    ca = tmp_path / "ca.crt"
    ca.write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
    empty = tmp_path / "empty.kubeconfig"
    empty.write_text("apiVersion: v1\nkind: Config\n")
    as_reader = [f"--kubeconfig={empty}", f"--server={cluster['server']}", f"--certificate-authority={ca}", f"--token={token}"]

    allowed = kubectl("get", "pods", "-n", namespace, *as_reader, check=False)
    denied = kubectl("get", "secrets", "-n", namespace, *as_reader, check=False)
    denied_elsewhere = kubectl("get", "pods", "-n", "kube-system", *as_reader, check=False)

    assert allowed.returncode == 0, allowed.stderr
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower()
    assert denied_elsewhere.returncode != 0 and "forbidden" in denied_elsewhere.stderr.lower()


TOP_LINE = re.compile(r"^(\S+)\s+(\d+)m\s+(\d+)Mi\s*$")


def test_kubectl_top_pod_returns_cpu_and_memory_numbers(kubectl, namespace, busybox_image, wait_for_pods_ready, wait_for):
    kubectl.apply(workloads.web_deployment("top", busybox_image), namespace=namespace)
    (pod,) = wait_for_pods_ready(namespace, "app=top")

    # Polled through the API reader (a `kubectl top` process per poll cost ~0.1 s of CPU each,
    # 15-20 of them while metrics-server takes its first two scrapes); then `kubectl top` once.
    def pod_metrics():
        path = f"/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods"
        return [m for m in json.loads(kubectl.api.raw(path))["items"] if m["metadata"]["name"] == pod["metadata"]["name"]]

    wait_for("metrics for the pod from metrics-server", pod_metrics, 180, interval=1)
    out = kubectl("top", "pod", "-n", namespace, "--no-headers").stdout
    rows = [TOP_LINE.match(line).groups() for line in out.splitlines() if TOP_LINE.match(line)]
    assert [row[0] for row in rows] == [pod["metadata"]["name"]], out  # numbers parsed by TOP_LINE (busybox httpd may round to 0Mi)
    node = kubectl("top", "node", "--no-headers").stdout.split()
    assert int(node[1].removesuffix("m")) > 0 and int(node[3].removesuffix("Mi")) > 0  # the node is busy


CRD_GROUP = "e2e.zt-relay.test"


def test_a_crd_and_a_custom_object_of_it_can_be_created(kubectl, namespace, wait_for):
    suffix = namespace.rsplit("-", 1)[1]  # unique per run: CRDs are cluster-scoped
    plural, singular, kind = f"widgets{suffix}", f"widget{suffix}", f"Widget{suffix.capitalize()}"
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{CRD_GROUP}"},
        "spec": {
            "group": CRD_GROUP,
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": singular, "kind": kind},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {"spec": {"type": "object", "properties": {"size": {"type": "integer"}}}},
                        }
                    },
                }
            ],
        },
    }
    kubectl.apply(crd)
    try:
        wait_for(
            "the CRD to be established",
            lambda: kubectl("wait", f"crd/{plural}.{CRD_GROUP}", "--for=condition=Established", "--timeout=5s", check=False).returncode == 0,
            60,
        )
        obj = {"apiVersion": f"{CRD_GROUP}/v1", "kind": kind, "metadata": {"name": "w1"}, "spec": {"size": 3}}
        wait_for("the custom object to be accepted", lambda: kubectl.apply(obj, namespace=namespace), 30)
        got = kubectl.json("get", f"{plural}.{CRD_GROUP}", "w1", "-n", namespace)
        assert got["spec"] == {"size": 3}
        bad = {**obj, "metadata": {"name": "w2"}, "spec": {"size": "three"}}
        rejected = kubectl("apply", "-f", "-", "-n", namespace, input=json.dumps(bad), check=False)
        assert rejected.returncode != 0 and "spec.size" in rejected.stderr
    finally:
        kubectl("delete", "crd", f"{plural}.{CRD_GROUP}", "--wait=false", check=False)
