"""`helm lint --strict` passes with the default values and with every toggle on."""

from __future__ import annotations

import re

import pytest

from tests.chart.conftest import ALL_TOGGLES, CHART, set_args, tool


@pytest.mark.parametrize("values", [(), ALL_TOGGLES], ids=["defaults", "all-toggles"])
def test_helm_lint_strict_passes(helm, values):
    result = helm("lint", "--strict", str(CHART), *set_args(values), check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def test_helm_unittest_suites_pass(helm):
    # The plugin's binary, laid out as a helm plugin by `python -m e2e.cluster build`.
    tool("untt")
    result = helm("unittest", "--strict", str(CHART), check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = re.search(r"Tests:\s+(\d+) passed, (\d+) total", result.stdout)
    assert summary and summary[1] == summary[2] and int(summary[1]) > 0, result.stdout


def test_the_chart_refuses_a_cluster_too_old_for_the_crds_cel_rules(helm):
    # isCIDR/isIP (CEL IP and CIDR library) are accepted in new CRD rules from Kubernetes
    # 1.31; on 1.30 the chart installed and the CRD failed with "undeclared reference".
    old = helm("template", "x", str(CHART), "--kube-version", "1.30.4", check=False)
    assert old.returncode != 0 and "kubeVersion" in old.stderr, old.stderr
    assert helm("template", "x", str(CHART), "--kube-version", "1.31.0", check=False).returncode == 0
