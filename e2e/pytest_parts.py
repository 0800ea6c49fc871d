"""The e2e options (--with-e2e, --only-e2e, --cluster, --part, --phase, --shard, ...) and the split of
the tests into the cluster part and the rest, described in e2e/conftest.py's docstring.

The cluster part runs in two phases (`.ci/run`): first, in one session with no other on the
cluster, the tests marked `alone_on_cluster` (or `restarts_cluster`): they take a component
away (which `stop` refuses while another run holds the cluster), or read a counter or pool of
the whole machine that a concurrent test could move; then the others, as concurrent sessions
(`--phase=shared --shard=K/N`).

A plugin, not part of e2e/conftest.py: the repository's root conftest.py loads it for every path,
so `pytest --with-e2e --part=no-cluster tests/x.py` (what `bash .ci/run tests/x.py` runs), where
pytest never loads e2e/conftest.py, knows the options instead of exiting 4.
"""

import json
from pathlib import Path

import pytest

E2E_DIR = Path(__file__).parent
BACKENDS = ("local", "kind", "existing")
DURATIONS = E2E_DIR / "cluster_durations.json"
"""Measured seconds per test (setup + call + teardown, from `--durations=0` of the cluster part):
the weights the shards are balanced by. A test missing from it weighs UNKNOWN_SECONDS."""
UNKNOWN_SECONDS = 3.0
ALONE = "alone_on_cluster"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("e2e", "end-to-end tests on a real Kubernetes")
    group.addoption("--with-e2e", action="store_true", help="also run the e2e tests (needs a cluster)")
    group.addoption("--only-e2e", action="store_true", help="run only the e2e tests")
    group.addoption(
        "--cluster", choices=BACKENDS, default="local",
        help="cluster backend for e2e tests: local (built here), kind, existing ($KUBECONFIG)",
    )
    group.addoption(
        "--part", choices=("all", "cluster", "no-cluster"), default="all",
        help="run only the tests that need a cluster, or only the others (the rest is deselected)",
    )
    group.addoption(
        "--phase", choices=("all", "shared", "alone"), default="all",
        help="with the cluster part: only the tests that may share the cluster with concurrent sessions, "
        "or only those that need it alone (marked alone_on_cluster or restarts_cluster)",
    )
    group.addoption(
        "--shard", metavar="K/N", default=None,
        help="run only shard K (1..N) of the selected tests, balanced by e2e/cluster_durations.json; "
        "a module stays in one shard unless it sets SHARDABLE = True (its tests are independent)",
    )
    group.addoption(
        "--with-restart", action="store_true",
        help="also run tests that stop and restart the shared local cluster (on by default when CI is set)",
    )
    group.addoption(
        "--cluster-lb-standin", action="store_true",
        help="with --cluster=existing, run the LoadBalancer stand-in against it too",
    )
    group.addoption(
        "--image-registry", metavar="REGISTRY",
        help="with --cluster=existing: a registry the cluster pulls from (e.g. registry.example.com/me); "
        "load_image pushes images there (docker tag + docker push; `docker login` first)",
    )


def _is_e2e(item: pytest.Item) -> bool:
    path = Path(str(item.fspath))
    if E2E_DIR not in path.parents:
        return False
    return getattr(item.module, "NEEDS_CLUSTER", True) if hasattr(item, "module") else True


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    with_e2e = config.getoption("--with-e2e") or config.getoption("--only-e2e")
    only_e2e = config.getoption("--only-e2e")
    skip_e2e = pytest.mark.skip(reason="e2e test: needs a real cluster; enable with --with-e2e (or --only-e2e)")
    skip_unit = pytest.mark.skip(reason="not an e2e test, and --only-e2e was given")
    for item in items:
        if _is_e2e(item):
            item.add_marker(pytest.mark.e2e)
            if not with_e2e:
                item.add_marker(skip_e2e)
        elif only_e2e:
            item.add_marker(skip_unit)
    part = config.getoption("--part")
    if part != "all":
        _select(config, items, lambda item: (item.get_closest_marker("e2e") is not None) == (part == "cluster"))
    phase = config.getoption("--phase")
    if phase != "all":
        _select(config, items, lambda item: needs_alone(item) == (phase == "alone"))
    shard = config.getoption("--shard")
    if shard is not None:
        k, n = _parse_shard(shard)
        chosen = {id(item) for item in shards(items, n)[k - 1]}
        _select(config, items, lambda item: id(item) in chosen)
    # Tests that restart the cluster go last, so nothing else sees the restart.
    items.sort(key=lambda item: item.get_closest_marker("restarts_cluster") is not None)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{ALONE}(reason): needs the cluster to itself (a component taken away, a machine-wide "
        "counter or pool read): runs in the cluster part's alone phase, with no concurrent session")


def needs_alone(item: pytest.Item) -> bool:
    marker = item.get_closest_marker(ALONE)
    if marker is not None and not (marker.kwargs.get("reason") or marker.args):
        raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.{ALONE} needs a reason (why a concurrent test would break it)")
    return marker is not None or item.get_closest_marker("restarts_cluster") is not None


def _select(config: pytest.Config, items: list[pytest.Item], keep) -> None:
    """Deselects (not skips) the items `keep` refuses."""
    kept, dropped = [], []
    for item in items:
        (kept if keep(item) else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def _parse_shard(text: str) -> tuple[int, int]:
    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise pytest.UsageError(f"--shard={text}: expected K/N, e.g. 1/2") from None
    if not 1 <= k <= n:
        raise pytest.UsageError(f"--shard={text}: K must be 1..N")
    return k, n


def _durations() -> dict[str, float]:
    try:
        return json.loads(DURATIONS.read_text())
    except FileNotFoundError:
        return {}


def shards(items: list[pytest.Item], n: int) -> list[list[pytest.Item]]:
    """`items` in `n` shards of about equal measured time, deterministically: units (a module,
    or one test of a SHARDABLE module) heaviest first, each to the lightest shard so far (ties:
    the lower shard); within a shard the collection order is kept."""
    weights = _durations()
    units: dict[str, list[pytest.Item]] = {}
    for item in items:
        module = item.nodeid.split("::")[0]
        shardable = getattr(getattr(item, "module", None), "SHARDABLE", False)
        units.setdefault(item.nodeid if shardable else module, []).append(item)

    def weight(unit: list[pytest.Item]) -> float:
        return sum(weights.get(item.nodeid, UNKNOWN_SECONDS) for item in unit)

    loads = [0.0] * n
    shard_of: dict[int, int] = {}
    for key, unit in sorted(units.items(), key=lambda kv: (-weight(kv[1]), kv[0])):
        lightest = min(range(n), key=lambda i: (loads[i], i))
        loads[lightest] += weight(unit)
        for item in unit:
            shard_of[id(item)] = lightest
    return [[item for item in items if shard_of[id(item)] == i] for i in range(n)]
