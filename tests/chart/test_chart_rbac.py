"""The chart grants the operator exactly the permissions operator/rbac.yaml asks for."""

from __future__ import annotations

import yaml

from tests.chart.conftest import OPERATOR_RBAC_FILE, require_operator_file


def normalise(rules: list[dict]) -> set[tuple[str, str, str]]:
    """Rules as (apiGroup, resource, verb) triples, so layout and order don't matter."""
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule.get("apiGroups", [""])
        for resource in rule.get("resources", [])
        for verb in rule.get("verbs", [])
    }


def _cluster_role(docs: list[dict]) -> dict:
    (role,) = [d for d in docs if d and d.get("kind") == "ClusterRole"]
    return role


def test_normalise_expands_every_combination():
    rules = [{"apiGroups": ["apps"], "resources": ["deployments", "deployments/status"], "verbs": ["get", "list"]}]
    assert normalise(rules) == {
        ("apps", "deployments", "get"), ("apps", "deployments", "list"),
        ("apps", "deployments/status", "get"), ("apps", "deployments/status", "list"),
    }


def test_the_charts_cluster_role_has_exactly_the_operators_rules(render):
    wanted = _cluster_role(list(yaml.safe_load_all(require_operator_file(OPERATOR_RBAC_FILE).read_text())))
    granted = _cluster_role(render())

    assert normalise(granted["rules"]) == normalise(wanted["rules"])


def test_the_chart_grants_nothing_cluster_wide_beyond_its_role_and_binding(render):
    cluster_scoped = sorted(d["kind"] for d in render(include_crds=False) if d["kind"].startswith("Cluster"))
    assert cluster_scoped == ["ClusterRole", "ClusterRoleBinding"]
    assert not any("*" in rule.get("verbs", []) or "*" in rule.get("resources", []) for rule in _cluster_role(render())["rules"])
