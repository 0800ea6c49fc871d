"""`xdist_group` for pytest >= 9 (a plugin the root conftest loads).

pytest-xdist (3.8, the newest) sends every test marked `xdist_group("name")` to one worker
under `--dist loadgroup` by appending "@name" to the test's node id, which it writes into
`item._nodeid`. pytest 9 keeps the id in `item._id` and no longer reads `_nodeid`, so the
suffix was lost and grouped tests were spread over the workers without a word. This writes it
where pytest reads it, as xdist would, once (a fixed xdist already did it).
"""

from __future__ import annotations

import pytest


def _group(item: pytest.Item) -> str | None:
    names = {str(mark.args[0] if mark.args else mark.kwargs.get("name", "default")) for mark in item.iter_markers("xdist_group")}
    return "_".join(sorted(names)) if names else None


@pytest.hookimpl(trylast=True)  # after xdist's own attempt
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not getattr(config.option, "loadgroup", False):  # set on xdist's workers under --dist loadgroup
        return
    try:
        from _pytest.nodeid import coerce_node_id  # pytest >= 9
    except ImportError:  # an older pytest reads xdist's `_nodeid`
        return
    for item in items:
        group = _group(item)
        if group and not item.nodeid.endswith("@" + group) and hasattr(item, "_id"):
            item._id = coerce_node_id(f"{item.nodeid}@{group}")
