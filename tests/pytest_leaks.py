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
that test made. What was frozen and became garbage later (a session fixture's) is unfrozen at
the end, for pytest's own last collection, which reports it.

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
def pytest_runtest_teardown(item: pytest.Item) -> None:
    reports: list[str] = []

    def hook(unraisable) -> None:
        # Formatted now: the object and the exception must not outlive the hook.
        what = unraisable.err_msg or "Exception ignored in"
        reports.append(f"{what}: {unraisable.object!r}\n" + "".join(
            traceback.format_exception(unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback)))

    previous, sys.unraisablehook = sys.unraisablehook, hook
    try:
        gc.collect()
    finally:
        sys.unraisablehook = previous
        gc.freeze()
    if reports:
        pytest.fail(f"{item.nodeid} left garbage that reported, when collected after its teardown:\n"
                    + "\n".join(reports), pytrace=False)
