"""`--part`: `.ci/run` runs the tests that need a cluster and the others as two sessions side by
side; together the two parts are every test, once, and neither skips what it leaves out."""

import functools
import subprocess
import sys
from pathlib import Path

import pytest

NEEDS_CLUSTER = False
# One xdist worker runs this module, so the two tests that compare whole collections share them
# (`collection`, module-scoped): on two workers each made its own, two more pytest processes.
pytestmark = pytest.mark.xdist_group("test_ci_parts")

REPO = Path(__file__).resolve().parent.parent
# One module of each kind: needs the cluster, e2e without a cluster, no e2e at all.
PATHS = ("e2e/test_cluster_images.py", "e2e/test_harness_sandbox.py", "tests/chart/test_values_schema.py")


def collected(*options: str) -> set[str]:
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "--with-e2e", *options, *PATHS],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return {line for line in run.stdout.splitlines() if "::" in line}


@pytest.fixture(scope="module")
def collection():
    """`collected`, run once per set of options for this module's tests (a whole pytest each)."""
    return functools.cache(collected)


def test_the_cluster_part_is_exactly_the_tests_that_need_a_cluster(collection):
    everything, cluster = collection(), collection("--part=cluster")
    assert cluster and all(test.startswith("e2e/test_cluster_images.py::") for test in cluster)
    assert cluster == {test for test in everything if test.startswith("e2e/test_cluster_images.py::")}


def test_the_two_parts_are_every_test_once(collection):
    everything, cluster, rest = collection(), collection("--part=cluster"), collection("--part=no-cluster")
    assert not cluster & rest
    assert cluster | rest == everything
    assert any(test.startswith("tests/") for test in rest) and any(test.startswith("e2e/test_harness_sandbox.py::") for test in rest)


@pytest.mark.parametrize(("part", "expected"), [("no-cluster", 0), ("cluster", 5)])
def test_a_part_of_only_tests_paths_knows_the_options(part, expected):
    """`bash .ci/run tests/x.py` runs both parts on that path alone, where pytest never loads
    e2e/conftest.py: the options must still be known (pytest exits 4 on an unknown one), the
    no-cluster part runs the tests and the cluster part selects none of them (5)."""
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--with-e2e", f"--part={part}", PATHS[2]],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == expected, run.stdout + run.stderr
    if part == "no-cluster":
        assert " passed" in run.stdout and "deselected" not in run.stdout, run.stdout
