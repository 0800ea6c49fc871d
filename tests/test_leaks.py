"""tests.pytest_leaks: a resource a test leaks fails that test, not whichever test the garbage
collector happens to run in next (on another xdist worker's order, another test)."""

import os
import textwrap
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[1]


def plugins_of_the_claim(monkeypatch, *plugins: str) -> list[str]:
    """The inner pytest loads the leak plugin, pytest-asyncio (its ini's options) and what the
    test needs (xdist), not every installed plugin: hypothesis's imports all of hypothesis in
    its terminal summary, pytest-kind a Kubernetes client (together ~2 core-seconds for each
    interpreter, for nothing here)."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    return [arg for plugin in ("tests.pytest_leaks", "pytest_asyncio.plugin", *plugins) for arg in ("-p", plugin)]


LEAKY = textwrap.dedent("""\
    import asyncio, gc, socket

    class Cycle:
        def __init__(self, thing):
            self.me, self.thing = self, thing  # freed by a collection only, whenever one runs

    def test_leaks_a_socket():
        Cycle(socket.socket())

    async def test_leaks_a_transport():
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        _, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
        Cycle(writer)
        server.close()

    def test_next():
        gc.collect()  # as an allocation may start one anywhere
""")


@pytest.mark.timeout(60)
def test_a_leak_fails_the_test_that_leaked_it_not_the_next(pytester: pytest.Pytester, monkeypatch):
    pytester.makepyfile(test_leaky=LEAKY)
    pytester.makeini("[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    result = pytester.runpytest_subprocess("-W", "error", *plugins_of_the_claim(monkeypatch), "-p", "no:cacheprovider", "-rA")
    out = result.stdout.str()
    # Each leaking test errors in its teardown with the warning; the next one passes.
    assert "ERROR test_leaky.py::test_leaks_a_socket" in out, out
    assert "ERROR test_leaky.py::test_leaks_a_transport" in out, out
    assert "PASSED test_leaky.py::test_next" in out, out
    assert "unclosed" in out, out
    result.assert_outcomes(passed=3, errors=2)


HELD = textwrap.dedent("""\
    import socket

    held = []

    class Cycle:
        def __init__(self, thing):
            self.me, self.thing = self, thing

    def test_holds():
        held.append(Cycle(socket.socket()))  # not garbage yet at its teardown

    def test_lets_go():
        held.clear()  # garbage now, for a collection only
""")


@pytest.mark.timeout(60)
def test_a_leak_that_outlives_every_test_still_fails_the_run(pytester: pytest.Pytester, monkeypatch):
    """What survives a test's collection is frozen out of the next ones (their cost): what of it
    becomes garbage later is still collected, and reported, at the end of the session."""
    pytester.makepyfile(test_held=HELD)
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    result = pytester.runpytest_subprocess("-W", "error", *plugins_of_the_claim(monkeypatch), "-p", "no:cacheprovider")
    assert result.ret != 0, result.stdout.str()
    assert "unclosed <socket.socket" in result.stdout.str() + result.stderr.str()


FIXTURE = textwrap.dedent("""\
    import socket

    import pytest

    class Cycle:
        def __init__(self, thing):
            self.me, self.thing = self, thing

    @pytest.fixture(scope="module")
    def shared():
        yield Cycle(socket.socket())  # never closed: garbage once the module is done with it

    def test_one(shared):
        pass

    def test_two(shared):
        pass
""")


LEAKY_FIXTURE = textwrap.dedent("""\
    import socket

    import pytest

    class Cycle:
        def __init__(self, thing):
            self.me, self.thing = self, thing

    @pytest.fixture
    def conn():
        yield Cycle(socket.socket())  # never closed: garbage once the test is done with it

    def test_one():
        pass

    def test_two(conn):
        pass

    def test_three():
        pass
""")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("workers", [[], ["-n", "1"]], ids=["serial", "xdist"])
@pytest.mark.parametrize("source", [FIXTURE, LEAKY_FIXTURE], ids=["module-fixture-value", "function-fixture-value"])
def test_a_fixtures_leak_fails_the_test_that_used_it_under_xdist_too(pytester: pytest.Pytester, monkeypatch, workers, source):
    """A fixture's value is still the test's (item.funcargs) when its teardown's collection
    runs, and a module (or class, or session) fixture's outlived earlier collections: either
    way it survived a collection and was frozen. What it leaks must still fail the test whose
    teardown ended it, not be reported only at the session's end, naming no test, which under
    pytest-xdist is lost (a worker's unconfigure): the run passed."""
    pytester.makepyfile(test_fixture=source)
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    result = pytester.runpytest_subprocess("-W", "error", *plugins_of_the_claim(monkeypatch, *(["xdist.plugin"] if workers else [])),
                                           "-p", "no:cacheprovider", "-rA", *workers)
    out = result.stdout.str()
    assert result.ret != 0, out
    assert "test_fixture.py::test_two left garbage" in out and "unclosed <socket.socket" in out, out


SHARED_HOLDER = "held = []\n"

HOLDS_THEN_LETS_GO = textwrap.dedent("""\
    import socket

    import holder

    class Cycle:
        def __init__(self, thing):
            self.me, self.thing = self, thing

    def test_holds():
        holder.held.append(Cycle(socket.socket()))  # not garbage yet at its teardown: frozen

    def test_lets_go():
        holder.held.clear()  # garbage now, for a full collection only
""")

MODULE_FIXTURE_THEN_MORE = FIXTURE  # a module fixture's garbage, then more modules after it

PLAIN = textwrap.dedent("""\
    def test_plain_one():
        pass

    def test_plain_two():
        pass
""")


@pytest.mark.timeout(120)
def test_a_module_end_collects_in_full_only_where_broader_fixtures_ended(pytester: pytest.Pytester, monkeypatch):
    """A collection of everything (frozen included) costs ~50-130 ms of CPU with the suite's
    imports; one at every module's end was ~200 a run on the part's 3 workers. So it runs where a
    teardown ended fixtures broader than the test (module, class, package, session ones: their
    values outlived earlier collections), and at a worker's last test. Elsewhere, what was
    frozen and became garbage since (a global cleared by a later test) waits for the next full
    one, which still fails its test and says so: not lost, but maybe named after a later test."""
    pytester.makepyfile(holder=SHARED_HOLDER, test_a_holds=HOLDS_THEN_LETS_GO, test_b_module_fixture=MODULE_FIXTURE_THEN_MORE,
                        test_c_plain=PLAIN, test_d_plain=PLAIN)
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(pytester.path), str(REPO), os.environ.get("PYTHONPATH", "")]))
    result = pytester.runpytest_subprocess("-W", "error", *plugins_of_the_claim(monkeypatch), "-p", "no:cacheprovider", "-rA")
    out = result.stdout.str()
    # test_a's end ended no fixture: no full collection there; test_b's did (its module fixture),
    # which finds both its socket and test_a's, and says it was a full collection.
    assert "ERROR test_a_holds.py::test_lets_go" not in out, out
    assert "ERROR test_b_module_fixture.py::test_two" in out, out
    assert "test_b_module_fixture.py::test_two left garbage" in out and "a full collection" in out, out
    errors = out.split("short test summary info")[0]  # the summary repeats the message, cut to the terminal's width
    assert errors.count("ResourceWarning: unclosed <socket.socket") == 2, out
    result.assert_outcomes(passed=8, errors=1)
