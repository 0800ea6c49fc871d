"""operator/rbac.yaml grants what the operator does, and no more."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.zt_operator.conftest import IMAGE, relay_body
from zt_operator import builders

RBAC_FILE = Path(__file__).resolve().parents[2] / "operator" / "rbac.yaml"
(ROLE,) = [d for d in yaml.safe_load_all(RBAC_FILE.read_text()) if d["kind"] == "ClusterRole"]
GRANTED = {(g, r, v) for rule in ROLE["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
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
    assert ("relay.zt-relay.dev", "zerotierrelays/finalizers", "update") in GRANTED
