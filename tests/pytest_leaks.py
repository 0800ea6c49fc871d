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
that test made, and the last test of each module or class (whose teardown ends the fixtures that
outlived it, module, class or session ones) has a full one. What was frozen and became garbage
later still is unfrozen at the end, for pytest's own last collection, which reports it.

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


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    # The last test of a module or class (or of this process: session fixtures) tore down
    # fixtures that outlived earlier collections, frozen since: collected in full now, or what
    # their teardown leaked would be reported at the session's end only, naming no test, and
    # under pytest-xdist not at all (a worker's unconfigure: the run passed).
    full = nextitem is None or nextitem.parent is not item.parent
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
    if reports:
        pytest.fail(f"{item.nodeid} left garbage that reported, when collected after its teardown:\n"
                    + "\n".join(reports), pytrace=False)
