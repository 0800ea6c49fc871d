"""`--part`: `.ci/run` runs the tests that need a cluster and the others side by side; together the
two parts are every test, once, and neither skips what it leaves out. `--phase` and `--shard`:
the cluster part runs the tests that need the cluster alone, then the others as concurrent
shards; together they are every cluster test, once."""

import dis
import functools
import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from e2e import recovery

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


# --- The cluster part's phases: the tests that need the cluster alone, then concurrent shards.

def collected_cluster(*options: str) -> list[str]:
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "--with-e2e",
         "--part=cluster", *options, "e2e"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return [line for line in run.stdout.splitlines() if "::" in line]


@pytest.fixture(scope="module")
def phases() -> dict[str, list[str]]:
    return {"all": collected_cluster(), "shared": collected_cluster("--phase=shared"),
            "alone": collected_cluster("--phase=alone")}


# What a concurrent test breaks (or makes pass wrongly), found in a test's source or in the
# source of the module functions it calls: a component taken away (`stop` also refuses while
# another run holds the cluster), the cluster stopped, a counter of the whole machine read,
# the cluster-wide CRD's schema replaced. A probe (e2e/probes.py) counts one test's own packets
# only: a test proving its drops with probes shares the cluster.
MACHINE_WIDE = ('cluster_cli("stop ', 'control.stop', 'control.restart(', 'cluster_cli("down', 'drop_counter(',
                'rule_counter(', 'sink_dropped_packets(', '["openAPIV3Schema"]')


def _called(code, globals_: dict):
    """The functions `code` names: globals, and attributes of modules it names (`recovery.f`)."""
    loaded = None
    for instruction in dis.get_instructions(code):
        if instruction.opname in ("LOAD_GLOBAL", "LOAD_NAME"):
            loaded = globals_.get(instruction.argval)
            yield loaded
        elif instruction.opname in ("LOAD_ATTR", "LOAD_METHOD") and inspect.ismodule(loaded):
            yield getattr(loaded, instruction.argval, None)
            loaded = None
        else:
            loaded = None


def _reach(function, seen: set) -> str:
    """The source of `function` and of the e2e functions it calls (transitively), also those
    called through their module."""
    text = inspect.getsource(function)
    codes = [function.__code__]
    while codes:
        code = codes.pop()
        codes.extend(c for c in code.co_consts if inspect.iscode(c))
        for found in _called(code, function.__globals__):
            if inspect.isfunction(found) and found.__module__.startswith("e2e.") and found not in seen:
                seen.add(found)
                text += _reach(found, seen)
    return text


def _unwrapped(found):
    """A fixture's own function (pytest wraps it), or `found` itself."""
    get = getattr(found, "_get_wrapped_function", None)
    return get() if get is not None else getattr(found, "__wrapped__", found)


def _sources(module, name: str, seen: set) -> str:
    """A test's source with what it reaches, and its module's fixtures it asks for (transitively)."""
    function = _unwrapped(getattr(module, name))
    text = _reach(function, seen)
    for argument in inspect.signature(function).parameters:
        fixture = getattr(module, argument, None)
        if fixture is not None and argument not in seen and inspect.isfunction(_unwrapped(fixture)):
            seen.add(argument)
            text += _sources(module, argument, seen)
    return text


def machine_wide_tests(nodeids: list[str]) -> set[str]:
    found = set()
    for nodeid in nodeids:
        path, name = nodeid.split("::")[0], nodeid.split("::")[-1].split("[")[0]
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        if any(sign in _sources(module, name, set()) for sign in MACHINE_WIDE):
            found.add(nodeid)
    return found


def test_every_test_that_takes_the_cluster_or_reads_a_machine_wide_counter_runs_alone(phases):
    assert set(phases["shared"]) | set(phases["alone"]) == set(phases["all"])
    assert not set(phases["shared"]) & set(phases["alone"])
    disruptive = machine_wide_tests(phases["all"])
    # The finder finds what it should: the outage, the enforcer's stop, down/up, the counters.
    assert any("api_server_down" in t for t in disruptive) and any("enforcer_stopped" in t for t in disruptive)
    assert any("test_cluster_lifecycle.py" in t for t in disruptive) and any("never_imported" in t for t in disruptive)
    assert sorted(disruptive - set(phases["alone"])) == []


def _restarts_through_a_helper() -> None:
    """What an unmarked test could do: stop components through a helper of another e2e module,
    called through that module (the component restart is in the helper's source only)."""
    recovery.restart_api_watchers()


def test_the_finder_follows_a_helper_called_through_its_module():
    text = _reach(_restarts_through_a_helper, set())
    assert any(sign in text for sign in MACHINE_WIDE), text


def test_the_alone_phase_also_has_the_cluster_wide_pool_and_the_default_chart_operator(phases):
    """What the source scan cannot see: the LoadBalancer pool's lowest free address, and the
    chart's default operator, which watches (and would reconcile) every namespace's relays
    (the whole module: its steps share one release)."""
    alone = set(phases["alone"])
    assert "e2e/test_cluster_services.py::test_deleting_a_load_balancer_service_releases_its_address" in alone
    chart = [t for t in phases["all"] if t.startswith("e2e/test_chart.py::")]
    assert chart and all(t in alone for t in chart)


@pytest.mark.parametrize("n", [2, 3])
def test_the_shards_of_the_shared_phase_are_every_shared_test_once_and_deterministic(phases, n):
    shards = [collected_cluster("--phase=shared", f"--shard={k}/{n}") for k in range(1, n + 1)]
    assert all(shards)
    assert sorted(t for shard in shards for t in shard) == sorted(phases["shared"])
    assert collected_cluster("--phase=shared", f"--shard=1/{n}") == shards[0]
    # A module that is not SHARDABLE (its tests share a site and a relay) stays in one shard;
    # a SHARDABLE one (test_operator: each test makes what it needs) is spread over them.
    assert sum(any(t.startswith("e2e/test_fallback.py::") for t in shard) for shard in shards) == 1
    assert all(any(t.startswith("e2e/test_operator.py::") for t in shard) for shard in shards)


def test_a_bad_shard_is_refused_with_its_flag_named():
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "--with-e2e",
         "--part=cluster", "--shard=3/2", PATHS[0]],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 4 and "--shard=3/2" in run.stderr, run.stdout + run.stderr
