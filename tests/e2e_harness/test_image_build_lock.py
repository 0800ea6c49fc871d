"""e2e.images.build_image from several processes at once (xdist workers, the two parts of
`.ci/run`): one builds, the others wait and reuse its image, instead of two docker builds and
prunes at once (seen under -n 3: 'a prune operation is already running', two tests in error).
A build that hangs does not block the others for good: they wait a bounded time and name it."""

import fcntl
import os
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from e2e import images
from e2e.cluster import image_import

ROOT = Path(__file__).resolve().parents[2]
BOUND = 30.0  # generous: every wait below ends on its condition long before


def fake_inputs(monkeypatch, tmp_path) -> dict[str, str]:
    monkeypatch.setattr(images, "CACHE_DIR", tmp_path)
    monkeypatch.setattr(images, "ensure_docker", lambda: None)
    monkeypatch.setattr(images, "build_base", lambda: "base")
    monkeypatch.setattr(images, "inputs_digest", lambda base: "digest")
    monkeypatch.setattr(images, "build_wheels", lambda: None)
    monkeypatch.setattr(images, "_drop_stale_pins", lambda tag: None)  # Docker calls (tests/e2e_harness/test_image_pin.py)
    monkeypatch.setattr(images, "_pin", lambda tag: None)
    labels: dict[str, str] = {}
    monkeypatch.setattr(images, "image_label", lambda tag, label: labels.get(tag))
    # _built is per process: each thread plays a process that has not built yet.
    monkeypatch.setattr(images, "_built", type("PerCall", (set,), {"__contains__": lambda self, tag: False})())
    return labels


def record_lockers(monkeypatch, state: threading.Condition, lockers: set[int]) -> None:
    """Each thread that reaches the build lock's own call goes into `lockers` (notifying
    `state`): one that reached it while another builds waits there."""

    def recording_flock(fd, op):
        with state:
            lockers.add(threading.get_ident())
            state.notify_all()
        return fcntl.flock(fd, op)

    monkeypatch.setattr(images, "fcntl", SimpleNamespace(**{n: getattr(fcntl, n) for n in dir(fcntl) if n.isupper()},
                                                          flock=recording_flock))


def test_concurrent_builds_of_one_image_run_one_at_a_time_and_build_once(monkeypatch, tmp_path):
    labels = fake_inputs(monkeypatch, tmp_path)
    state = threading.Condition()
    running, overlaps, builds, lockers, decided = [0], [], [], set(), [False]
    record_lockers(monkeypatch, state, lockers)

    def fake_run(cmd, **kwargs):
        with state:
            running[0] += 1
            overlaps.append(running[0])
            state.notify_all()
            # The first build lasts until every thread has reached the lock (and waits there)
            # or, without a lock, another one runs beside it: either way the overlap is decided.
            assert state.wait_for(lambda: decided[0] or len(lockers) == len(threads) or running[0] > 1, BOUND), lockers
            decided[0] = True
        if cmd[:2] == ["docker", "build"]:
            builds.append(cmd)
            labels[cmd[cmd.index("--tag") + 1]] = "digest"
        with state:
            running[0] -= 1

    monkeypatch.setattr(images, "_run", fake_run)
    threads = [threading.Thread(target=images.build_image, args=("zt-relay:test",)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=BOUND)
    assert not any(t.is_alive() for t in threads)
    assert max(overlaps) == 1, overlaps
    assert len(builds) == 1, builds


def test_a_build_behind_this_processs_own_build_reuses_it_even_if_another_checkout_rebuilt_since(monkeypatch, tmp_path):
    """The session's image prefetch and its first test's image fixture both build: the one that
    waited at the lock takes the image built by the other (and its pin), even when another
    checkout's build got the lock in between and changed the shared tag: building once more
    would import once more too."""
    labels = fake_inputs(monkeypatch, tmp_path)
    monkeypatch.setattr(images, "_built", set())  # one process, two threads
    state = threading.Condition()
    lockers: set[int] = set()
    record_lockers(monkeypatch, state, lockers)
    builds, result = [], []
    behind = threading.Thread(target=lambda: _capture(result, images.build_image, "zt-relay:test"), daemon=True)

    def fake_run(cmd, **kwargs):
        if cmd[:2] == ["docker", "build"]:
            builds.append(cmd)
            if len(builds) == 1:  # the first build: the other thread comes and waits at the lock
                behind.start()
                with state:
                    assert state.wait_for(lambda: behind.ident in lockers, BOUND)
            labels["zt-relay:test"] = "another checkout's"  # its build got the lock just after ours

    monkeypatch.setattr(images, "_run", fake_run)
    assert images.build_image("zt-relay:test") == "zt-relay:test"
    behind.join(timeout=BOUND)
    assert not behind.is_alive() and result == []
    assert len(builds) == 1, builds


HOLDER = """  # a build that hangs, holding the lock
import sys
from pathlib import Path
from e2e import images
from e2e.cluster import image_import
images.CACHE_DIR = Path(sys.argv[1])
with images._build_lock():
    print("held", flush=True)
    sys.stdin.read()
"""


def test_a_build_that_hangs_makes_the_others_fail_in_bounded_time_naming_it(monkeypatch, tmp_path):
    fake_inputs(monkeypatch, tmp_path)
    monkeypatch.setattr(images, "_run", lambda cmd, **kwargs: pytest.fail(f"ran {cmd} without the lock"))
    monkeypatch.setattr(images, "BUILD_LOCK_TIMEOUT", 0.5, raising=False)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        result: list[BaseException] = []
        waiter = threading.Thread(target=lambda: _capture(result, images.build_image, "zt-relay:test"), daemon=True)
        waiter.start()
        waiter.join(timeout=BOUND)
        assert not waiter.is_alive(), "build_image still waits for a hung build's lock"
        assert len(result) == 1 and isinstance(result[0], TimeoutError), result
        assert f"pid {holder.pid}" in str(result[0]) and "ZT_RELAY_BUILD_LOCK_TIMEOUT" in str(result[0])
    finally:
        holder.stdin.close()
        assert holder.wait(timeout=BOUND) == 0
        holder.stdout.close()


def test_a_build_given_up_at_the_lock_raises_the_one_gave_up_a_docker_save_raises_too(monkeypatch, tmp_path):
    """One exception for whatever a give_up() stopped (this wait, the prefetch's `docker save`):
    the prefetch catches that one."""
    fake_inputs(monkeypatch, tmp_path)
    monkeypatch.setattr(images, "_run", lambda cmd, **kwargs: pytest.fail(f"ran {cmd} without the lock"))
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(image_import.GaveUp):
            images.build_image("zt-relay:test", give_up=lambda: True)
    finally:
        holder.stdin.close()
        assert holder.wait(timeout=BOUND) == 0
        holder.stdout.close()


def _capture(result: list, fn, *args) -> None:
    try:
        fn(*args)
    except BaseException as e:  # noqa: BLE001 (handed to the test's thread)
        result.append(e)


@pytest.mark.parametrize("value", ["30m", "-5", "nan"])
def test_a_bad_build_lock_timeout_is_refused_naming_the_variable(value):
    """ZT_RELAY_BUILD_LOCK_TIMEOUT was float()'d at import: '30m' was a bare ValueError traceback
    from conftest's import, and a negative or nan one made every waiter give up at once."""
    proc = subprocess.run([sys.executable, "-c", "import e2e.images"], capture_output=True, text=True, timeout=60,
                          cwd=images.REPO, env={**os.environ, "ZT_RELAY_BUILD_LOCK_TIMEOUT": value})
    assert proc.returncode != 0
    assert "ZT_RELAY_BUILD_LOCK_TIMEOUT" in proc.stderr and value in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
