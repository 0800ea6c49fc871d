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
