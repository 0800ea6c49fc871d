"""Fleet-scale benchmark of the operator on the real cluster (issue 14), run by hand:

    flock /tmp/zt-e2e.lock sh -c '.venv/bin/python -m pytest --with-e2e e2e/bench_operator.py -s -p no:cacheprovider; \
        .venv/bin/python -m e2e.cluster down'

``ZT_BENCH_RELAYS`` ZeroTierRelays (200) that create no pods (replicas 0, ClusterIP),
server-side applied from this process (``apply_relays``: 8 at a time, one request each, no
kubectl per object). It prints each figure with its target and the ratio, and fails when a
target is missed:

- steady-state API requests/s **from the operator**, counted by the API server. The
  request counter ``apiserver_request_total`` has no user or user-agent label, so the
  benchmark adds a FlowSchema that matches only the operator's ServiceAccount and reads
  ``apiserver_flowcontrol_dispatched_requests_total{flow_schema=...}``: every request the
  operator makes (watches too, once each, when they start), identified by the API server's
  authentication rather than by a client-chosen User-Agent, with no apiserver flag or
  restart (an audit log would need both). Over ``ZT_BENCH_SECONDS`` (330: longer than the
  operator's 300 s resync and relist), starting ``ZT_BENCH_SETTLE_SECONDS`` (60) after
  the relays were reconciled (past the creation burst; nothing comes due later than the
  300 s relist, which the window holds); target <= 2;
- operator CPU in % of a core: the operator container's cgroup CPU time
  (``container_cpu_usage_seconds_total`` of the kubelet's /metrics/resource) over the same
  window; target <= 5;
- repair after a child is deleted: the PDBs of ``ZT_BENCH_REPAIRS`` (50) relays deleted one
  at a time, seconds until a new one exists (polled every 0.1 s; p50, p99, max); target p99 <= 5.

``test_thousands_of_relays_...`` (select it with ``-k thousands``) is the pagination run:
``ZT_BENCH_PAGED_RELAYS`` (2000) relays, so each relist LIST of a kind comes in pages of 500.
It reports the time until every relay has a status (and the operator's requests, CPU and
memory meanwhile), then restarts the operator (start: time to ready, to every relay
reconciled, its requests, the LISTs and the CPU of the new container), then a steady window
of the restarted operator as above (``ZT_BENCH_SECONDS``: over 300 s holds its first
periodic relist) with its memory, the API server's LIST count and largest LIST answer per
kind, and deletes the relays (one deletecollection), timing the garbage collection
(``ZT_BENCH_DELETE_SECONDS``, 900; the cluster's ``down`` removes what is left).
Report-only: no target.

The file is not collected by default (not ``test_*.py``); naming it runs it.
"""

from __future__ import annotations

import math
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor

from kubernetes import client as kube_client
from kubernetes import config as kube_config

from e2e.test_operator import OPERATOR_LABELS, image, operator_namespace  # noqa: F401 (fixtures)
from zt_operator import kube

COUNT = int(os.environ.get("ZT_BENCH_RELAYS", "200"))
SECONDS = float(os.environ.get("ZT_BENCH_SECONDS", "330"))
SETTLE = float(os.environ.get("ZT_BENCH_SETTLE_SECONDS", "60"))
PAGED = int(os.environ.get("ZT_BENCH_PAGED_RELAYS", "2000"))
GROUP, VERSION, PLURAL = "relay.zt-relay.dev", "v1alpha1", "zerotierrelays"
CHILDREN = ("deployments", "services", "poddisruptionbudgets")
"""What a relay with replicas 0, ClusterIP and no autoscaling or policy gets."""
REPAIRS = int(os.environ.get("ZT_BENCH_REPAIRS", "50"))
TARGETS = {"requests_per_second": 2.0, "cpu_percent": 5.0, "repair_p99_seconds": 5.0}
SAMPLE = re.compile(r'^(?P<name>[a-z_]+)\{(?P<labels>[^}]*)\} (?P<value>[-0-9.e+]+)(?: (?P<ms>[0-9]+))?$', re.M)


def samples(text: str, name: str, **labels: str) -> list[tuple[float, float | None]]:
    """(value, timestamp in s or None) of every sample of metric ``name`` with ``labels``."""
    found = []
    for match in SAMPLE.finditer(text):
        if match["name"] == name and all(f'{k}="{v}"' in match["labels"] for k, v in labels.items()):
            found.append((float(match["value"]), int(match["ms"]) / 1000 if match["ms"] else None))
    return found


def operator_requests(kubectl, flow_schema: str) -> float:
    """Requests the API server has dispatched for the operator's ServiceAccount so far."""
    text = kubectl("get", "--raw", "/metrics", timeout=60).stdout
    found = samples(text, "apiserver_flowcontrol_dispatched_requests_total", flow_schema=flow_schema)
    # No series: the FlowSchema matched none of the operator's requests (which made many to
    # reconcile the fleet), so a 0 here would be a count of nothing, passing any target.
    assert found, f"the API server counted no request under FlowSchema {flow_schema}: it does not match the operator"
    return sum(value for value, _ in found)


def operator_cpu_seconds(kubectl, node: str, namespace: str) -> tuple[float, float]:
    """The operator container's cgroup CPU seconds and the kubelet's timestamp of them."""
    text = kubectl("get", "--raw", f"/api/v1/nodes/{node}/proxy/metrics/resource", timeout=60).stdout
    found = samples(text, "container_cpu_usage_seconds_total", namespace=namespace, container="operator")
    assert len(found) == 1, f"expected one operator container in {namespace}, found {found}"
    value, stamp = found[0]
    return value, stamp if stamp is not None else time.time()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def relay(namespace: str, name: str) -> dict:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ZeroTierRelay", "metadata": {"name": name, "namespace": namespace},
            "spec": {"replicas": 0, "service": {"type": "ClusterIP"}}}


def api(kubeconfig) -> kube_client.CustomObjectsApi:
    return kube_client.CustomObjectsApi(kube_config.new_client_from_config(config_file=str(kubeconfig)))


def apply_relays(kubeconfig, namespace: str, names: list[str], workers: int = 8) -> float:
    """Server-side apply a relay per name from this process (``workers`` at a time); seconds taken."""
    custom = api(kubeconfig)

    def one(name: str) -> None:
        custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, relay(namespace, name),
                                              field_manager="zt-bench", force=True,
                                              _content_type="application/apply-patch+yaml", _request_timeout=60)

    started = time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, names))
    return time.monotonic() - started


def reconciled(kubeconfig, namespace: str) -> tuple[int, int]:
    """(relays, relays whose status describes their generation) in ``namespace``."""
    items = api(kubeconfig).list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, _request_timeout=120)["items"]
    return len(items), sum((r.get("status") or {}).get("observedGeneration") == r["metadata"]["generation"] for r in items)


def operator_memory(kubectl, node: str, namespace: str) -> dict[str, float]:
    """The operator container's memory (MiB): working set (kubelet /metrics/resource) and, if
    the kubelet's cAdvisor endpoint has it, RSS."""
    found = {}
    text = kubectl("get", "--raw", f"/api/v1/nodes/{node}/proxy/metrics/resource", timeout=60).stdout
    for value, _ in samples(text, "container_memory_working_set_bytes", namespace=namespace, container="operator"):
        found["working_set_mib"] = value / 2**20
    text = kubectl("get", "--raw", f"/api/v1/nodes/{node}/proxy/metrics/cadvisor", timeout=60, check=False).stdout
    for value, _ in samples(text, "container_memory_rss", namespace=namespace, container="operator"):
        found["rss_mib"] = value / 2**20
    return found


def start_lists(relays: int) -> int:
    """LIST requests per child kind by the end of a restarted operator's start, at least: the
    watch's LIST, then the relist (RELIST_DELAY after the watches' LISTs), each in pages of
    PAGE_SIZE (handlers.configure gives Kopf that chunk_size); more if other namespaces
    hold relays (then the watch pages through them too, or the relist LISTs every namespace)."""
    pages = max(1, math.ceil(relays / kube.PAGE_SIZE))
    return 2 * pages


def restart_relisted(before: dict[str, float], now: dict[str, float], relays: int) -> bool:
    """Whether the LIST counts ``now`` (``list_counts``) show a restarted operator's start
    over, from the counts ``before`` it started."""
    least = start_lists(relays)
    return all(now[k] - before[k] >= least for k in CHILDREN)


def list_counts(kubectl) -> dict[str, float]:
    """LIST requests the API server answered so far, by child resource (every client's: on
    this test cluster only the operator LISTs these kinds after start; controllers watch)."""
    text = kubectl("get", "--raw", "/metrics", timeout=60).stdout
    return {resource: sum(value for value, _ in samples(text, "apiserver_request_total", verb="LIST", resource=resource))
            for resource in CHILDREN}


def largest_list_answer(kubectl) -> dict[str, str]:
    """Per child resource, the smallest response-size bucket holding every LIST answer so far."""
    text = kubectl("get", "--raw", "/metrics", timeout=60).stdout
    found = {}
    for resource in CHILDREN:
        buckets = [(match["labels"], float(match["value"])) for match in SAMPLE.finditer(text)
                   if match["name"] == "apiserver_response_sizes_bucket"
                   and f'resource="{resource}"' in match["labels"] and 'verb="LIST"' in match["labels"]]
        total = max((count for labels, count in buckets if 'le="+Inf"' in labels), default=0)
        bounds = sorted(float(re.search(r'le="([^"]+)"', labels)[1]) for labels, count in buckets
                        if count >= total > 0 and 'le="+Inf"' not in labels)
        found[resource] = f"<= {bounds[0] / 2**20:.2f} MiB" if bounds else "none"
    return found


def operator_pod(kubectl, namespace: str) -> str:
    selector = ",".join(f"{k}={v}" for k, v in OPERATOR_LABELS.items())
    pods = [p for p in kubectl.json("get", "pods", "-n", namespace, "-l", selector)["items"]
            if not p["metadata"].get("deletionTimestamp")]
    return pods[0]["metadata"]["name"] if len(pods) == 1 else ""


def operator_metrics(kubectl, namespace: str, pod: str) -> str:
    return kubectl("get", "--raw", f"/api/v1/namespaces/{namespace}/pods/{pod}:8081/proxy/metrics", timeout=60).stdout


def reconciliations(kubectl, namespace: str, pod: str) -> float:
    result = kubectl("get", "--raw", f"/api/v1/namespaces/{namespace}/pods/{pod}:8081/proxy/metrics",
                     timeout=60, check=False)
    if result.returncode != 0:
        return 0.0
    return sum(value for value, _ in samples(result.stdout, "zt_operator_reconciliations_total"))


def flow_schema(name: str, namespace: str) -> dict:
    """A FlowSchema that catches every request of the operator's ServiceAccount (precedence
    50: before the built-in service-accounts schema at 9000) in the usual priority level."""
    return {
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "FlowSchema", "metadata": {"name": name},
        "spec": {
            "matchingPrecedence": 50, "priorityLevelConfiguration": {"name": "workload-low"},
            "distinguisherMethod": {"type": "ByUser"},
            "rules": [{
                "subjects": [{"kind": "ServiceAccount", "serviceAccount": {"name": name, "namespace": namespace}}],
                "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"], "clusterScope": True,
                                   "namespaces": ["*"]}],
                "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
            }],
        },
    }


def report(name: str, value: float, unit: str) -> bool:
    target = TARGETS[name]
    print(f"{name}: {value:.3f} {unit} (target <= {target:g}, ratio {value / target:.2f})")
    return value <= target


def test_fleet_of_relays_costs_little_api_and_cpu_and_repairs_fast(operator_namespace, kubectl, wait_for):
    ns = operator_namespace  # also the name of the operator's ServiceAccount (e2e.test_operator)
    kubectl.apply(flow_schema(ns, ns))
    try:
        run(ns, kubectl, wait_for)
    finally:
        kubectl("delete", "ztr", "-n", ns, "--all", "--wait=false", check=False, timeout=120)
        kubectl("delete", "flowschema", ns, "--ignore-not-found", check=False)


def run(ns: str, kubectl, wait_for) -> None:
    selector = ",".join(f"{k}={v}" for k, v in OPERATOR_LABELS.items())
    kubectl("wait", "--for=condition=Available", "deployment/zt-relay-operator", "-n", ns, "--timeout=180s", timeout=200)
    node = kubectl.json("get", "nodes")["items"][0]["metadata"]["name"]
    started = time.monotonic()
    created = apply_relays(kubectl.kubeconfig, ns, [f"bench-{i:03d}" for i in range(COUNT)])
    print(f"\n{COUNT} relays server-side applied in {created:.1f} s")

    def all_reconciled():
        items = kubectl.json("get", "ztr", "-n", ns, timeout=60)["items"]
        done = [r for r in items if r["metadata"]["name"].startswith("bench-")
                and (r.get("status") or {}).get("observedGeneration") == r["metadata"]["generation"]]
        return len(done) == COUNT

    wait_for(f"{COUNT} relays reconciled", all_reconciled, 600, interval=5)
    print(f"\n{COUNT} relays reconciled {time.monotonic() - started:.0f} s after the first apply")
    time.sleep(SETTLE)  # past the creation burst and one resync interval: the steady state

    requests0, (cpu0, stamp0), t0 = operator_requests(kubectl, ns), operator_cpu_seconds(kubectl, node, ns), time.monotonic()
    time.sleep(SECONDS)
    requests1, (cpu1, stamp1), t1 = operator_requests(kubectl, ns), operator_cpu_seconds(kubectl, node, ns), time.monotonic()
    rate = (requests1 - requests0) / (t1 - t0)
    cpu_percent = 100 * (cpu1 - cpu0) / (stamp1 - stamp0)
    print(f"window {t1 - t0:.0f} s: {requests1 - requests0:.0f} operator requests; "
          f"{cpu1 - cpu0:.2f} CPU s over {stamp1 - stamp0:.0f} s; memory {operator_memory(kubectl, node, ns)}")

    repairs = []
    for i in range(min(REPAIRS, COUNT)):
        name = f"bench-{i:03d}"
        uid = kubectl.json("get", "pdb", name, "-n", ns)["metadata"]["uid"]
        kubectl("delete", "pdb", name, "-n", ns, "--wait=false")
        deleted = time.monotonic()

        def replaced():
            result = kubectl("get", "pdb", name, "-n", ns, "-o", "jsonpath={.metadata.uid}", check=False)
            return result.returncode == 0 and result.stdout not in ("", uid)

        wait_for(f"PDB {name} repaired", replaced, 60, interval=0.1)
        repairs.append(time.monotonic() - deleted)

    pod = kubectl.json("get", "pods", "-n", ns, "-l", selector)["items"][0]["metadata"]["name"]
    metrics = kubectl("get", "--raw", f"/api/v1/namespaces/{ns}/pods/{pod}:8081/proxy/metrics").stdout
    print(f"relays: {COUNT}")
    ok = [report("requests_per_second", rate, "requests/s from the operator's ServiceAccount"),
          report("cpu_percent", cpu_percent, "% of a core (operator cgroup)"),
          report("repair_p99_seconds", percentile(repairs, 99), "s")]
    print(f"repair after a PDB is deleted: p50 {percentile(repairs, 50):.2f} s, p99 {percentile(repairs, 99):.2f} s, "
          f"max {max(repairs):.2f} s (n={len(repairs)})")
    print("\n".join(line for line in metrics.splitlines() if line.startswith("zt_operator_") and "_total" in line))
    assert all(ok), "a target was missed (see the lines above)"


def test_thousands_of_relays_list_in_pages_start_and_stay_cheap(operator_namespace, kubectl, wait_for):
    ns = operator_namespace
    kubectl.apply(flow_schema(ns, ns))
    try:
        paged(ns, kubectl, wait_for)
    finally:
        delete_fleet(ns, kubectl, wait_for)
        kubectl("delete", "flowschema", ns, "--ignore-not-found", check=False)


def window(label: str, ns: str, node: str, kubectl, seconds: float) -> None:
    """Print what the operator cost over ``seconds`` from now (requests, CPU, memory, LISTs)."""
    requests0, (cpu0, stamp0), lists0 = operator_requests(kubectl, ns), operator_cpu_seconds(kubectl, node, ns), list_counts(kubectl)
    t0 = time.monotonic()
    time.sleep(seconds)
    requests1, (cpu1, stamp1), lists1 = operator_requests(kubectl, ns), operator_cpu_seconds(kubectl, node, ns), list_counts(kubectl)
    t1 = time.monotonic()
    print(f"{label}: {t1 - t0:.0f} s, {requests1 - requests0:.0f} operator requests ({(requests1 - requests0) / (t1 - t0):.3f}/s), "
          f"CPU {cpu1 - cpu0:.2f} s ({100 * (cpu1 - cpu0) / (stamp1 - stamp0):.2f} % of a core), "
          f"memory {operator_memory(kubectl, node, ns)}, "
          f"LISTs (all clients) {({k: lists1[k] - lists0[k] for k in CHILDREN})}")


def paged(ns: str, kubectl, wait_for) -> None:
    kubectl("wait", "--for=condition=Available", "deployment/zt-relay-operator", "-n", ns, "--timeout=180s", timeout=200)
    node = kubectl.json("get", "nodes")["items"][0]["metadata"]["name"]
    pod = operator_pod(kubectl, ns)
    print(f"\noperator idle: memory {operator_memory(kubectl, node, ns)}")

    requests0, (cpu0, _) = operator_requests(kubectl, ns), operator_cpu_seconds(kubectl, node, ns)
    started = time.monotonic()
    created = apply_relays(kubectl.kubeconfig, ns, [f"page-{i:05d}" for i in range(PAGED)])
    print(f"{PAGED} relays server-side applied in {created:.1f} s ({PAGED / created:.0f}/s, 8 at a time)")

    def everyone_has_status():
        total, done = reconciled(kubectl.kubeconfig, ns)
        print(f"  {time.monotonic() - started:6.0f} s: {done}/{total} relays with a status of their generation")
        return total == PAGED and done == PAGED

    wait_for(f"{PAGED} relays with a status", everyone_has_status, 1500, interval=15)
    took = time.monotonic() - started
    requests1, (cpu1, _) = operator_requests(kubectl, ns), operator_cpu_seconds(kubectl, node, ns)
    print(f"every relay has a status {took:.0f} s after the first apply: {requests1 - requests0:.0f} operator requests "
          f"({(requests1 - requests0) / took:.1f}/s), CPU {cpu1 - cpu0:.1f} s ({100 * (cpu1 - cpu0) / took:.0f} % of a core), "
          f"memory {operator_memory(kubectl, node, ns)}")

    print(f"largest LIST answer so far per kind: {largest_list_answer(kubectl)}")

    # Start: a new operator pod with the fleet in place (discovery, the watches' LISTs, the
    # relist's pages, one pass of every relay).
    requests0, lists0 = operator_requests(kubectl, ns), list_counts(kubectl)
    started = time.monotonic()
    kubectl("delete", "pod", pod, "-n", ns, "--wait=false")

    def new_pod_ready():
        name = operator_pod(kubectl, ns)
        if name in ("", pod):
            return ""
        conditions = kubectl.json("get", "pod", name, "-n", ns)["status"].get("conditions") or []
        return name if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions) else ""

    new = wait_for("a new operator pod ready", new_pod_ready, 300, interval=1)
    ready = time.monotonic() - started
    wait_for(f"the new operator reconciled {PAGED} relays", lambda: reconciliations(kubectl, ns, new) >= PAGED, 900, interval=2)
    passes = time.monotonic() - started
    def relisted():
        lists = list_counts(kubectl)
        return lists if restart_relisted(lists0, lists, PAGED) else None

    lists1 = wait_for(f"the new operator's relist ({start_lists(PAGED)} LISTs of each of {', '.join(CHILDREN)})",
                      relisted, 300, interval=2)
    requests1, (cpu, _) = operator_requests(kubectl, ns), operator_cpu_seconds(kubectl, node, ns)
    print(f"start: ready {ready:.1f} s after the old pod's deletion, every relay reconciled at {passes:.1f} s; "
          f"{requests1 - requests0:.0f} operator requests until {time.monotonic() - started:.0f} s; "
          f"LISTs {({k: lists1[k] - lists0[k] for k in CHILDREN})}; CPU of the new container {cpu:.1f} s; "
          f"memory {operator_memory(kubectl, node, ns)}")
    print("\n".join(line for line in operator_metrics(kubectl, ns, new).splitlines()
                    if line.startswith("zt_operator_") and ("_total" in line or "relays" in line)))
    # The steady state of the restarted operator: the window holds its first periodic relist
    # (300 s after its start) and a resync pass of every relay.
    window("steady (after the start)", ns, node, kubectl, SECONDS)
    print(f"largest LIST answer so far per kind: {largest_list_answer(kubectl)}")


def delete_fleet(ns: str, kubectl, wait_for) -> None:
    """One deletecollection; garbage collection removes the children (ownerReferences)."""
    started = time.monotonic()
    api(kubectl.kubeconfig).delete_collection_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, _request_timeout=300)
    labels = "app.kubernetes.io/managed-by=zt-relay-operator"

    def gone():
        children = kubectl("get", f"zerotierrelays,{','.join(CHILDREN)}", "-n", ns, "-l", labels, "-o", "name",
                           timeout=120, check=False)
        relays = kubectl("get", "zerotierrelays", "-n", ns, "-o", "name", timeout=120, check=False)
        if children.returncode or relays.returncode:  # no answer is not "nothing left"
            print(f"  {time.monotonic() - started:6.0f} s: kubectl get failed, asking again")
            return False
        left, relays = children.stdout.split(), relays.stdout.split()
        print(f"  {time.monotonic() - started:6.0f} s: {len(relays)} relays, {len(left)} children left")
        return not left and not relays

    try:  # bounded: the cluster's `down` removes whatever garbage collection has not
        wait_for("the fleet deleted", gone, float(os.environ.get("ZT_BENCH_DELETE_SECONDS", "900")), interval=10)
        print(f"fleet deleted (relays and children gone) {time.monotonic() - started:.0f} s after the deletecollection")
    except TimeoutError:
        print(f"fleet not yet deleted {time.monotonic() - started:.0f} s after the deletecollection")
