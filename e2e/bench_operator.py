"""Fleet-scale benchmark of the operator on the real cluster (issue 14), run by hand:

    flock /tmp/zt-e2e.lock sh -c '.venv/bin/python -m pytest --with-e2e e2e/bench_operator.py -s -p no:cacheprovider; \
        .venv/bin/python -m e2e.cluster down'

``ZT_BENCH_RELAYS`` ZeroTierRelays (200) that create no pods (replicas 0, ClusterIP), then:

- steady-state API requests/s: the API server's ``apiserver_request_total`` (WATCH excluded:
  a watch is one long request) for the resources the operator reads and writes, over
  ``ZT_BENCH_SECONDS`` (60); the cluster runs nothing else that touches them (no pods);
- operator CPU in % of a core: metrics-server's reading of the operator pod, averaged;
- repair after a child is deleted: a PDB of 50 relays deleted one at a time, seconds until
  a new one exists (p50, p99, max).

The file is not collected by default (not ``test_*.py``); naming it runs it.
"""

from __future__ import annotations

import json
import math
import os
import re
import time

from e2e.test_operator import OPERATOR_LABELS, image, operator_namespace  # noqa: F401 (fixtures)

COUNT = int(os.environ.get("ZT_BENCH_RELAYS", "200"))
SECONDS = float(os.environ.get("ZT_BENCH_SECONDS", "60"))
RESOURCES = ("zerotierrelays", "deployments", "services", "poddisruptionbudgets", "horizontalpodautoscalers",
             "networkpolicies", "events", "pods", "customresourcedefinitions")
LINE = re.compile(r'^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>[0-9.e+]+)$', re.M)


def requests_so_far(kubectl) -> float:
    text = kubectl("get", "--raw", "/metrics", timeout=60).stdout
    total = 0.0
    for match in LINE.finditer(text):
        labels = match["labels"]
        if 'verb="WATCH"' in labels:
            continue
        if any(f'resource="{r}"' in labels for r in RESOURCES):
            total += float(match["value"])
    return total


def operator_millicores(kubectl, namespace: str) -> float | None:
    selector = ",".join(f"{k}={v}" for k, v in OPERATOR_LABELS.items())
    result = kubectl("get", "--raw", f"/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods?labelSelector={selector}",
                     check=False)
    if result.returncode != 0:
        return None
    items = json.loads(result.stdout)["items"]
    if not items:
        return None
    cpu = items[0]["containers"][0]["usage"]["cpu"]
    if cpu.endswith("n"):
        return int(cpu[:-1]) / 1e6
    if cpu.endswith("u"):
        return int(cpu[:-1]) / 1e3
    if cpu.endswith("m"):
        return float(cpu[:-1])
    return float(cpu) * 1000


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def test_fleet_of_relays_costs_little_api_and_cpu_and_repairs_fast(operator_namespace, kubectl, wait_for):
    ns = operator_namespace
    selector = ",".join(f"{k}={v}" for k, v in OPERATOR_LABELS.items())
    kubectl("wait", "--for=condition=Available", "deployment/zt-relay-operator", "-n", ns, "--timeout=180s", timeout=200)
    relays = [{"apiVersion": "relay.zt-relay.dev/v1alpha1", "kind": "ZeroTierRelay",
               "metadata": {"name": f"bench-{i:03d}", "namespace": ns},
               "spec": {"replicas": 0, "service": {"type": "ClusterIP"}}} for i in range(COUNT)]
    for start in range(0, COUNT, 50):
        kubectl.apply(*relays[start:start + 50])
    started = time.monotonic()

    def all_reconciled():
        items = kubectl.json("get", "ztr", "-n", ns, timeout=60)["items"]
        done = [r for r in items if r["metadata"]["name"].startswith("bench-")
                and (r.get("status") or {}).get("observedGeneration") == r["metadata"]["generation"]]
        return len(done) == COUNT

    wait_for(f"{COUNT} relays reconciled", all_reconciled, 600, interval=5)
    print(f"\n{COUNT} relays reconciled in {time.monotonic() - started:.0f} s")
    time.sleep(30)  # let the creation burst settle before measuring the steady state

    before, t0 = requests_so_far(kubectl), time.monotonic()
    cpu = []
    while time.monotonic() - t0 < SECONDS:
        reading = operator_millicores(kubectl, ns)
        if reading is not None:
            cpu.append(reading)
        time.sleep(10)
    rate = (requests_so_far(kubectl) - before) / (time.monotonic() - t0)
    cpu_percent = sum(cpu) / len(cpu) / 10 if cpu else float("nan")

    repairs = []
    for i in range(50):
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
    print(f"steady-state API requests/s (non-watch, operator resources): {rate:.2f} over {SECONDS:.0f} s")
    print(f"operator CPU: {cpu_percent:.2f} % of a core (mean of {len(cpu)} metrics-server readings: {cpu})")
    print(f"repair after a PDB is deleted: p50 {percentile(repairs, 50):.2f} s, p99 {percentile(repairs, 99):.2f} s, "
          f"max {max(repairs):.2f} s (n={len(repairs)})")
    print("\n".join(line for line in metrics.splitlines() if line.startswith("zt_operator_") and "_total" in line))
    kubectl("delete", "ztr", "-n", ns, "--all", "--wait=false")
    assert rate <= 2, rate
    assert cpu_percent <= 5, cpu
    assert percentile(repairs, 99) <= 5, repairs
