"""`down` stopping processes (e2e.cluster.processes): it waits on their exits, not on a clock."""

import subprocess
import time

import pytest

from e2e.cluster import processes

# Exits 0.4 s after a SIGTERM (the trap runs once the loop's short sleep ends).
SLOW_TERM = "trap 'sleep 0.4; exit 0' TERM; echo ready; while :; do sleep 0.05; done"


def _started(script: str) -> subprocess.Popen:
    proc = subprocess.Popen(["sh", "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "ready\n"  # its trap is set
    return proc


def _gone(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait()
    proc.stdout.close()


@pytest.mark.timeout(30)
def test_a_process_that_exits_on_sigterm_is_waited_for_without_sleeping(monkeypatch):
    proc = _started("trap 'exit 0' TERM; echo ready; while :; do sleep 0.05; done")

    def no_sleep(seconds):
        raise AssertionError(f"slept {seconds} s instead of waiting for the exit")

    try:
        monkeypatch.setattr(time, "sleep", no_sleep)
        assert processes.kill_and_wait(proc.pid, timeout=5) is True
        monkeypatch.undo()
        assert proc.poll() is not None, "reaped"
    finally:
        _gone(proc)


@pytest.mark.timeout(30)
def test_many_processes_are_stopped_together_not_one_after_another():
    procs = [_started(SLOW_TERM) for _ in range(5)]
    try:
        began = time.monotonic()
        assert processes.kill_all_and_wait([p.pid for p in procs], timeout=5) == set()
        took = time.monotonic() - began
        assert all(p.poll() is not None for p in procs)
        # One after another: >= 5 x 0.4 s.
        assert took < 1.5, took
    finally:
        for p in procs:
            _gone(p)


@pytest.mark.timeout(30)
def test_a_process_that_ignores_sigterm_takes_the_sigkill_after_the_timeout():
    proc = _started("trap '' TERM; echo ready; while :; do sleep 0.05; done")
    try:
        began = time.monotonic()
        assert processes.kill_all_and_wait([proc.pid], timeout=0.5) == {proc.pid}
        assert 0.5 <= time.monotonic() - began < 5
        assert proc.poll() is not None
        assert processes.kill_and_wait(proc.pid, timeout=1) is True, "gone: nothing to wait for"
    finally:
        _gone(proc)
