"""ZtRelayFull (issue 14): the refusals it counts are the relay's own "no room" reasons.

The default HPA scales on CPU; a pod full of idle tunnels refuses new ones (for example
``memory_pressure``) at little CPU, so nothing scales up. The alert is the signal; if a
reason it names were renamed in the relay, it would silently never fire again.
"""

from __future__ import annotations

import re

from relay import fallback, metrics, stats
from tests.chart.test_no_ready_pods_alert import _alert

FULL = {stats.MEMORY_PRESSURE, stats.MAX_CONNECTIONS, stats.FILE_DESCRIPTORS, stats.EPHEMERAL_PORTS}
NOT_FULL = {stats.MAX_CONNECTIONS_PER_IP, stats.DRAINING, stats.PROXY_UNTRUSTED}
"""One client over its own cap, a pod shutting down, a misconfigured balancer: not a full pod."""


def test_the_full_alert_counts_exactly_the_relays_no_room_refusal_reasons(render):
    alert, _ = _alert(render, "ZtRelayFull")
    selectors = re.findall(r'zt_relay_connections_refused_total\{reason=~"([^"]*)"\}', alert["expr"])
    assert len(selectors) == 1, alert["expr"]
    assert set(selectors[0].split("|")) == FULL
    assert not FULL & NOT_FULL


def test_the_full_alert_keeps_a_threshold_when_the_release_values_predate_it(render):
    """`helm upgrade --reuse-values` takes the previous release's values, not this chart's
    defaults: a release installed before ZtRelayFull has no ``fullRefusalsPerSecond``. The
    expression ended in ``> `` then (Helm renders a missing value as nothing): invalid PromQL,
    which the Prometheus operator refuses for the whole rule, the chart's other alerts with it.
    (``=null`` deletes the key, as an old release's values lack it.)"""
    docs = render("monitoring.prometheusRule.enabled=true", "monitoring.prometheusRule.fullRefusalsPerSecond=null",
                  include_crds=False)
    rule = next(d for d in docs if d["kind"] == "PrometheusRule")
    alert = next(r for g in rule["spec"]["groups"] for r in g["rules"] if r.get("alert") == "ZtRelayFull")
    assert re.search(r"\) > 0$", alert["expr"]), alert["expr"]


SITE_FULL = {fallback.MEMORY_PRESSURE, fallback.MAX_CONNECTIONS, fallback.FILE_DESCRIPTORS}
"""Site connections (--fallback) refused because the pod has no room for another."""
SITE_NOT_FULL = {fallback.MAX_CONNECTIONS_PER_IP, fallback.BACKEND_REFUSED, fallback.BACKEND_TIMEOUT, fallback.BACKEND_ERROR,
                 fallback.CLIENT_GONE, fallback.CLIENT_RESET, fallback.CONNECTED}
"""One visitor over its share, the site down or slow, a visitor gone: not a full pod."""


def _series(key: str) -> tuple[str, str]:
    """A snapshot key's metric name and label, as the relay exposes them."""
    (name, label), = ((n, lbl) for k, n, _, _, lbl in metrics._SERIES if k == key)
    return name, label


def test_a_pod_full_of_site_connections_alerts_by_the_relays_own_result_names(render):
    """ZtRelayFull counts tunnel refusals only: a relay refusing visitors of its --fallback
    site at its cap, memory or descriptors (zt_relay_fallback_connections_total{result})
    went unseen. ZtRelaySiteFull is its sibling, pinned to the relay's names."""
    name, label = _series("fallback")
    alert, _ = _alert(render, "ZtRelaySiteFull")
    selectors = re.findall(rf'{name}\{{{label}=~"([^"]*)"\}}', alert["expr"])
    assert len(selectors) == 1, alert["expr"]
    assert set(selectors[0].split("|")) == SITE_FULL
    assert not SITE_FULL & SITE_NOT_FULL
    assert re.search(rf"by \([^)]*\b{label}\b[^)]*\)", alert["expr"]), alert["expr"]  # the summary names the result
    assert f"$labels.{label}" in alert["annotations"]["summary"]
    assert re.search(r"\) > 0$", alert["expr"]), alert["expr"]  # the same threshold as ZtRelayFull (default 0)


def test_the_site_full_alert_names_the_relay_resources_field_and_keeps_a_threshold_on_old_values(render):
    """The chart runs relays as ZeroTierRelay resources: who gets ZtRelaySiteFull raises the
    cap in ``spec.fallback.maxConnections`` (the operator passes it as
    --fallback-max-connections), not a flag they never set. And as ZtRelayFull, it keeps a
    threshold under `helm upgrade --reuse-values` from a release whose values lack it."""
    docs = render("monitoring.prometheusRule.enabled=true", "monitoring.prometheusRule.fullRefusalsPerSecond=null",
                  include_crds=False)
    rule = next(d for d in docs if d["kind"] == "PrometheusRule")
    alert = next(r for g in rule["spec"]["groups"] for r in g["rules"] if r.get("alert") == "ZtRelaySiteFull")
    assert re.search(r"\) > 0$", alert["expr"]), alert["expr"]
    assert "spec.fallback.maxConnections" in alert["annotations"]["description"], alert["annotations"]["description"]


def test_every_result_the_relay_counts_for_site_connections_is_judged_full_or_not():
    """A result added to relay/fallback.py (its str constants are the label values of
    zt_relay_fallback_connections_total) must be sorted into SITE_FULL or SITE_NOT_FULL:
    a new "no room" result would otherwise never reach ZtRelaySiteFull."""
    results = {v for k, v in vars(fallback).items() if k.isupper() and isinstance(v, str)}
    assert results == SITE_FULL | SITE_NOT_FULL, results ^ (SITE_FULL | SITE_NOT_FULL)
