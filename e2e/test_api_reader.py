"""The tests' API reader (kubectl.api) against the real API server: kubectl's answers, no process."""

import contextlib
import sys
import threading

import pytest

from e2e import workloads
from e2e.cluster.api_reader import ApiError, NotFound

_spawns: list[tuple[int, list]] = []  # the open recordings (see spawned): (thread, events)


def _audit(event: str, args: tuple) -> None:
    if _spawns and event in ("subprocess.Popen", "os.posix_spawn", "os.fork", "os.exec", "os.system"):
        thread = threading.get_ident()
        for owner, recording in _spawns:
            if owner == thread:
                recording.append((event, args[:2]))


sys.addaudithook(_audit)  # can't be removed: it records only while a `spawned()` block is open


@contextlib.contextmanager
def spawned():
    """The processes started by this thread inside the block: the session's own background
    threads (the project image's early import, which checks containerd with `ctr`) may run
    beside the first test of a session."""
    entry: tuple[int, list] = (threading.get_ident(), [])
    _spawns.append(entry)
    try:
        yield entry[1]
    finally:
        _spawns.remove(entry)


def test_the_reader_answers_what_kubectl_answers(kubectl, namespace, cluster):
    if cluster.backend in ("local", "kind"):
        assert kubectl.api.direct, "the harness's kubeconfig is read without kubectl"
    kubectl.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "one", "labels": {"pick": "yes"}}},
                  {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "two", "labels": {"pick": "no"}}},
                  namespace=namespace)
    by_kubectl = kubectl.json("get", "configmap", "one", "-n", namespace)
    by_reader = kubectl.api.get("cm", "one", namespace)
    assert (by_reader["metadata"]["uid"], by_reader["metadata"]["labels"]) == (
        by_kubectl["metadata"]["uid"], {"pick": "yes"})
    picked = kubectl.api.list("configmaps", namespace, selector="pick=yes")["items"]
    assert [c["metadata"]["name"] for c in picked] == ["one"]
    named = kubectl.api.list("configmaps", namespace, field_selector="metadata.name=two")["items"]
    assert [c["metadata"]["name"] for c in named] == ["two"]
    assert kubectl.api.get("namespace", namespace)["metadata"]["name"] == namespace
    assert kubectl.api.raw("/readyz") == "ok"


def test_a_missing_object_is_not_found_and_another_error_names_its_status(kubectl, namespace):
    assert kubectl.api.exists("configmap", "missing", namespace) is False
    with pytest.raises(NotFound, match="404"):
        kubectl.api.get("configmap", "missing", namespace)
    with pytest.raises(ApiError) as bad:
        kubectl.api.list("pods", namespace, selector="app in (")  # an unparsable selector: 400
    assert not isinstance(bad.value, NotFound) and bad.value.status == 400
    assert kubectl.api.exists("serviceaccount", "default", namespace) is True
    with pytest.raises(KeyError, match="widgets"):
        kubectl.api.get("widgets", "x", namespace)


def test_the_fixtures_polls_start_no_process_and_share_one_connection(
        kubectl, namespace, busybox_image, wait_for_pods_ready, wait_for):
    kubectl.apply(workloads.web_deployment("web", busybox_image, replicas=1), namespace=namespace)
    kubectl.api.raw("/readyz")
    opened = kubectl.api.transport.connections
    with spawned() as started:
        pods = wait_for_pods_ready(namespace, "app=web", count=1, timeout=120)
        wait_for("the ReplicaSet", lambda: kubectl.api.list("replicasets", namespace, selector="app=web")["items"], 30)
        for _ in range(20):
            kubectl.api.get("pod", pods[0]["metadata"]["name"], namespace)
    assert started == []
    assert kubectl.api.transport.connections == opened, "every GET went on the connection already open"
