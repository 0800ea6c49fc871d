"""`xdist_group`: under `--dist loadgroup` (`.ci/run`'s no-cluster part) every test of a group
runs on one worker, as the README promises for what must be alone or share a costly fixture."""

import os
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[1]

GROUPED = """\
import os, pytest

pytestmark = pytest.mark.xdist_group("together")

@pytest.mark.parametrize("i", range(6))
def test_grouped(i):
    print("WORKER", os.environ["PYTEST_XDIST_WORKER"])
"""


@pytest.mark.timeout(120)
def test_a_groups_tests_run_on_one_worker(pytester: pytest.Pytester, monkeypatch):
    pytester.makepyfile(test_grouped=GROUPED)
    pytester.makeconftest((REPO / "conftest.py").read_text())  # the project's plugins, as loaded there
    # Besides, only xdist (as tests/test_leaks.py: not every installed plugin).
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    result = pytester.runpytest_subprocess(
        "-p", "xdist.plugin", "-p", "xdist.looponfail", "-p", "no:cacheprovider",
        "-n", "2", "--dist", "loadgroup", "-rP",
    )
    result.assert_outcomes(passed=6)
    workers = {line.split()[-1] for line in result.stdout.lines if line.startswith("WORKER ")}
    assert len(workers) == 1, result.stdout.str()
