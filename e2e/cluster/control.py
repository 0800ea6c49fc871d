"""Take one cluster component away for a while, from a test (local backend).

    from e2e.cluster import control
    with control.stopped("kube-apiserver"):
        ...  # the API server is down here; it is started again (and ready) on exit

Runs `python -m e2e.cluster stop|start NAME` in a child process, so the restarted component
is not a child of the test process (it would linger as a zombie there). `stop` refuses while
another test run holds the cluster (`locks`).
"""

import contextlib
import subprocess
import sys
from pathlib import Path

from e2e.cluster import locks

REPO = Path(__file__).resolve().parents[2]


def _cli(command: str, name: str, timeout: float, *more: str) -> str:
    # The test session's own hold goes to the child (`stop` refuses while ANOTHER run holds
    # the cluster, never because of the run asking).
    env, pass_fds = locks.child_env()
    proc = subprocess.run(
        [sys.executable, "-m", "e2e.cluster", command, name, *more], capture_output=True, text=True, timeout=timeout, cwd=REPO,
        env=env, pass_fds=pass_fds,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"python -m e2e.cluster {' '.join((command, name, *more))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def stop(name: str, timeout: float = 60) -> str:
    """Stop it; returns what `stop` printed (whether it exited on SIGTERM or was killed)."""
    return _cli("stop", name, timeout)


def start(name: str, timeout: float = 120) -> str:
    """Start it again and wait until it is ready (the API server: /readyz)."""
    return _cli("start", name, timeout)


def restart(names: tuple[str, ...], timeout: float = 300) -> str:
    """Stop them all at once, start each again in `up`'s order and wait until it is ready."""
    return _cli("restart", names[0], timeout, *names[1:])


@contextlib.contextmanager
def stopped(name: str):
    stop(name)
    try:
        yield
    finally:
        start(name)
