"""The operator's RBAC rules (the chart's files/operator-rbac.yaml) grant what it does, and no more."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.zt_operator.conftest import IMAGE, relay_body
from zt_operator import GROUP, builders

RBAC_RULES_FILE = Path(__file__).resolve().parents[2] / "charts" / "zt-relay" / "files" / "operator-rbac.yaml"
RULES = yaml.safe_load(RBAC_RULES_FILE.read_text())
GRANTED = {(g, r, v) for rule in RULES["clusterRules"] + RULES["namespacedRules"]
           for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
PLURALS = {"Deployment": "deployments", "Service": "services", "PodDisruptionBudget": "poddisruptionbudgets",
           "HorizontalPodAutoscaler": "horizontalpodautoscalers", "NetworkPolicy": "networkpolicies"}


def children():
    body = relay_body({"autoscaling": {"enabled": True}, "networkPolicy": {"enabled": True}})
    return [builders.deployment(body, default_image=IMAGE, default_pull_policy="Never"), builders.service(body),
            builders.pod_disruption_budget(body), builders.horizontal_pod_autoscaler(body), builders.network_policy(body)]


def test_every_child_kind_can_be_applied_and_read():
    for child in children():
        group = child["apiVersion"].rpartition("/")[0]
        for verb in ("get", "create", "patch"):
            assert (group, PLURALS[child["kind"]], verb) in GRANTED, (child["kind"], verb)


def test_only_optional_children_can_be_deleted():
    deletable = {r for g, r, v in GRANTED if v == "delete"}
    assert deletable == {"horizontalpodautoscalers", "networkpolicies"}


def test_no_wildcards_and_no_secrets():
    assert not [t for t in GRANTED if "*" in t]
    assert not [t for t in GRANTED if t[1] in ("secrets", "pods/exec")]


def test_every_child_kind_can_be_watched():
    for child in children():
        group = child["apiVersion"].rpartition("/")[0]
        for verb in ("list", "watch"):
            assert (group, PLURALS[child["kind"]], verb) in GRANTED, (child["kind"], verb)


def test_owner_references_with_block_owner_deletion_are_allowed_under_permission_enforcement():
    assert (GROUP, "zerotierrelays/finalizers", "update") in GRANTED


def test_the_relays_subresources_are_only_patched():
    # The operator writes status and the mirrored replicas with PATCH (kube.patch_relay_status,
    # kube.scale_relay) and never reads either subresource: the relay itself comes by watch
    # (or one GET of the relay before a child is created).
    for subresource in ("zerotierrelays/status", "zerotierrelays/scale"):
        assert {v for g, r, v in GRANTED if (g, r) == (GROUP, subresource)} == {"patch"}, subresource
