"""Review finding: ZtRelayNoReadyPods is per namespace, not per relay, and reads ``up``
(scraped), not readiness.

Issue 14: "The PrometheusRule fires when a relay has no ready pod". With two relays in a
namespace, ``sum by (namespace) (up{...}) == 0`` stays silent while one of them has no pod
at all, because the other's pods keep the namespace's sum above 0. And a pod whose /readyz
fails (draining, not ready) still serves /metrics, so it counts as up=1.
"""

from __future__ import annotations

import re


def _alert(render, name):
    docs = render("monitoring.prometheusRule.enabled=true", "monitoring.podMonitor.enabled=true",
                  include_crds=False)
    rule = next(d for d in docs if d["kind"] == "PrometheusRule")
    return next(r for g in rule["spec"]["groups"] for r in g["rules"] if r.get("alert") == name), docs


def test_the_no_ready_pods_alert_is_per_relay(render):
    alert, docs = _alert(render, "ZtRelayNoReadyPods")
    groupings = re.findall(r"by\s*\(([^)]*)\)", alert["expr"])
    assert groupings, alert["expr"]
    # Each aggregation must keep a label naming the relay (for example the pods'
    # app.kubernetes.io/instance, relabelled by the monitors), not only the namespace.
    per_relay = [g for g in groupings if set(map(str.strip, g.split(","))) - {"namespace"}]
    assert per_relay == groupings, f"aggregated by namespace only: {alert['expr']}"
    monitor = next(d for d in docs if d["kind"] == "PodMonitor" and "relay" in d["metadata"]["name"])
    endpoints = monitor["spec"].get("podMetricsEndpoints") or []
    assert monitor["spec"].get("podTargetLabels") or any(e.get("relabelings") for e in endpoints), (
        "the relay pods' monitor carries no label naming their relay")
