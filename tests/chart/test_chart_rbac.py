"""The chart grants the operator exactly the rules of files/operator-rbac.yaml, written once."""

from __future__ import annotations

import yaml

from tests.chart.conftest import CHART, RBAC_RULES_FILE, REPO

RULES = yaml.safe_load(RBAC_RULES_FILE.read_text())


def normalise(rules: list[dict]) -> set[tuple[str, str, str, tuple[str, ...]]]:
    """Rules as (apiGroup, resource, verb, resourceNames) tuples, so layout and order don't matter."""
    return {
        (group, resource, verb, tuple(rule.get("resourceNames", ())))
        for rule in rules
        for group in rule.get("apiGroups", [""])
        for resource in rule.get("resources", [])
        for verb in rule.get("verbs", [])
    }


def _only(docs: list[dict], kind: str) -> dict:
    (found,) = [d for d in docs if d and d.get("kind") == kind]
    return found


def test_normalise_expands_every_combination():
    rules = [{"apiGroups": ["apps"], "resources": ["deployments", "deployments/status"], "verbs": ["get", "list"]}]
    assert normalise(rules) == {
        ("apps", "deployments", "get", ()), ("apps", "deployments", "list", ()),
        ("apps", "deployments/status", "get", ()), ("apps", "deployments/status", "list", ()),
    }


def test_the_charts_cluster_role_has_exactly_the_operators_rules(render):
    granted = _only(render(), "ClusterRole")

    assert normalise(granted["rules"]) == normalise(RULES["clusterRules"] + RULES["namespacedRules"])


def test_in_namespaced_mode_each_watched_namespace_gets_the_namespaced_rules_and_the_cluster_only_the_rest(render):
    docs = render("operator.watchNamespaces={edge,core}", include_crds=False)
    roles = [d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == "zt-relay-operator"]

    assert normalise(_only(docs, "ClusterRole")["rules"]) == normalise(RULES["clusterRules"])
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["core", "edge"]
    assert all(normalise(r["rules"]) == normalise(RULES["namespacedRules"]) for r in roles)


def test_the_cluster_rules_name_only_cluster_scoped_resources():
    """A Role can't grant these; anything else belongs in namespacedRules (least privilege
    in namespaced mode)."""
    assert {resource for _, resource, _, _ in normalise(RULES["clusterRules"])} == {"customresourcedefinitions", "namespaces"}
    assert not {resource for _, resource, _, _ in normalise(RULES["namespacedRules"])} & {"customresourcedefinitions", "namespaces"}


def test_the_chart_grants_nothing_cluster_wide_beyond_its_role_and_binding(render):
    cluster_scoped = sorted(d["kind"] for d in render(include_crds=False) if d["kind"].startswith("Cluster"))
    assert cluster_scoped == ["ClusterRole", "ClusterRoleBinding"]
    assert not any("*" in rule.get("verbs", []) or "*" in rule.get("resources", []) for rule in _only(render(), "ClusterRole")["rules"])


def _restating(path) -> bool:
    """Whether a file grants the operator's finalizers rule (a rule only a copy of its RBAC
    has): prose and code may name the subresource, but not as a YAML rule."""
    text = path.read_text(errors="replace")
    return "zerotierrelays/finalizers" in text and "verbs" in text


def test_the_operators_rbac_rules_are_written_in_one_file():
    """One source: the chart's files/operator-rbac.yaml. The chart renders it and the
    operator's e2e install reads it; no other file restates the rules."""
    roots = (REPO / "charts", REPO / "operator", REPO / "e2e")
    copies = sorted(str(p.relative_to(REPO)) for root in roots for p in root.rglob("*")
                    if p.is_file() and p.suffix in (".yaml", ".yml", ".tpl", ".json") and CHART / "tests" not in p.parents
                    and _restating(p))
    assert copies == ["charts/zt-relay/files/operator-rbac.yaml"]
