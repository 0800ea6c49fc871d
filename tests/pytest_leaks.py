"""A resource a test leaks (a socket, a transport, a subprocess never waited for) fails that test.

Its ResourceWarning (an error here: filterwarnings) comes from ``__del__``, whenever the object
is freed: at once if nothing else refers to it, otherwise at the garbage collector's next run,
which may be in any later test (under pytest-xdist, whichever test follows on that worker) or
after the last one. So the garbage is collected once each test's fixtures are torn down, and
what that collection reports fails the test's teardown, naming the object.

The report is caught here, with a hook of our own for the collection only: pytest's (which
would report it in the next test's setup) has already run for this teardown, as trylast hooks
run in the order they were registered.

What survives that collection (modules, session fixtures, caches: 100k objects and more) is
frozen out of the next ones (gc.freeze): collecting it all after every test cost ~50-70 ms of
CPU each, for 1000 tests more than the tests themselves. So each test's collection looks at what
that test made, and a teardown that ends fixtures which outlived it (module, class, package or
session ones), and a worker's last test, have a full one. At every module's end that was ~200
full collections in `.ci/run`'s no-cluster part (50-130 ms each), where few modules have such
fixtures. What was frozen and became garbage otherwise (a global a later test cleared) waits for
the next full collection, which fails its test saying so; pytest's own last collection, after
everything is unfrozen at the end, reports what is left.

Loaded for every path by the repository's root conftest.py.
"""

import gc
import sys
import traceback

import pytest


def pytest_collection_finish(session: pytest.Session) -> None:
    gc.collect()
    gc.freeze()


def pytest_sessionfinish(session: pytest.Session) -> None:
    gc.unfreeze()


_ENDS_BROADER_FIXTURES = pytest.StashKey[bool]()
_last_full: list[str] = []  # the test after whose teardown the last full collection ran


def ends_broader_fixtures(item: pytest.Item, nextitem: pytest.Item | None) -> bool:
    """Whether this test's teardown ends fixtures of a broader scope than the test's: those
    pytest's setup state keeps on the nodes (module, class, package, session) that `nextitem`
    does not share, besides each node's own `teardown`. Read before the teardown runs."""
    stack = getattr(getattr(item.session, "_setupstate", None), "stack", None)
    if not isinstance(stack, dict):
        return True  # pytest's internals changed: in full, as if every node had some
    needed = set(nextitem.listchain()) if nextitem is not None else set()
    return any(len(finalizers) > 1 for node, (finalizers, _) in stack.items() if node is not item and node not in needed)


@pytest.hookimpl(specname="pytest_runtest_teardown", wrapper=True, tryfirst=True)  # pytest takes pytest_* names only
def pytest_runtest_teardown_notes_broader_fixtures(item: pytest.Item, nextitem: pytest.Item | None):
    item.stash[_ENDS_BROADER_FIXTURES] = ends_broader_fixtures(item, nextitem)
    return (yield)


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    # A teardown that ended fixtures of a broader scope (or this process's last: session
    # fixtures) freed values that outlived earlier collections, frozen since: collected in full
    # now, or what they leaked would be reported at the session's end only, naming no test, and
    # under pytest-xdist not at all (a worker's unconfigure: the run passed).
    full = nextitem is None or item.stash.get(_ENDS_BROADER_FIXTURES, True)
    reports: list[str] = []

    def hook(unraisable) -> None:
        # Formatted now: the object and the exception must not outlive the hook.
        what = unraisable.err_msg or "Exception ignored in"
        reports.append(f"{what}: {unraisable.object!r}\n" + "".join(
            traceback.format_exception(unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback)))

    previous, sys.unraisablehook = sys.unraisablehook, hook
    # Its fixtures' values, which pytest drops only after this hook: kept, they would survive
    # this collection and be frozen (a leaky fixture's socket reported by no test).
    if getattr(item, "funcargs", None):
        item.funcargs = {}
    try:
        if full:
            gc.unfreeze()
        gc.collect()
    finally:
        sys.unraisablehook = previous
        gc.freeze()
    since = f"after {_last_full[0]}" if _last_full else "since this process's first test"
    if full:
        _last_full[:] = [item.nodeid]
    if reports:
        how = (f" (a full collection: the fixtures its teardown ended left it, or a test of this process {since}"
               " left what lived until now)") if full else ""
        pytest.fail(f"{item.nodeid} left garbage that reported, when collected after its teardown{how}:\n"
                    + "\n".join(reports), pytrace=False)
