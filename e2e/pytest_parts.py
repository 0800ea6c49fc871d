"""The e2e options (--with-e2e, --only-e2e, --cluster, --part, ...) and the split of the tests into
the cluster part and the rest, described in e2e/conftest.py's docstring.

A plugin, not part of e2e/conftest.py: the repository's root conftest.py loads it for every path,
so `pytest --with-e2e --part=no-cluster tests/x.py` (what `bash .ci/run tests/x.py` runs), where
pytest never loads e2e/conftest.py, knows the options instead of exiting 4.
"""

from pathlib import Path

import pytest

E2E_DIR = Path(__file__).parent
BACKENDS = ("local", "kind", "existing")


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
        keep, deselected = [], []
        for item in items:
            needs_cluster = item.get_closest_marker("e2e") is not None
            (keep if needs_cluster == (part == "cluster") else deselected).append(item)
        if deselected:
            config.hook.pytest_deselected(items=deselected)
            items[:] = keep
    # Tests that restart the cluster go last, so nothing else sees the restart.
    items.sort(key=lambda item: item.get_closest_marker("restarts_cluster") is not None)
