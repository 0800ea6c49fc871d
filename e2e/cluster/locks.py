"""Who may change the local cluster, and who is using it.

Two flock(2) files under /run:
- `MUTEX`: one `up`/`down` at a time on this machine.
- `USERS`: every test run holds it SHARED for as long as it uses the cluster (the pytest
  session fixture takes it before `up` and keeps it to the end). Tearing the cluster down
  (`down`, or `up` replacing a broken cluster) needs it EXCLUSIVE, without waiting: if another
  run holds it, they refuse and name the holders instead of pulling the floor from under it.

A run that holds USERS shared and itself calls `up`/`down` (the fixture, the restart test)
passes its descriptor to the child in `USERS_FD_ENV`; the child converts that same lock
(flock locks belong to the open file, which parent and child share) to exclusive, so the
run's own hold never blocks it, and converts it back to shared afterwards.
"""

import contextlib
import fcntl
import os
from pathlib import Path

MUTEX = Path("/run/zt-relay-e2e.lock")
USERS = Path("/run/zt-relay-e2e.users")
USERS_FD_ENV = "ZT_RELAY_E2E_USERS_FD"


class InUse(RuntimeError):
    """Another test run holds the cluster."""


@contextlib.contextmanager
def mutex():
    with open(MUTEX, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def hold_shared() -> int:
    """Take USERS shared (waits while an `up`/`down` holds it exclusive); returns the fd to
    keep open (and to pass to children in USERS_FD_ENV)."""
    fd = os.open(USERS, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


_session_fd: int | None = None


def remember_session_hold(fd: int | None) -> None:
    """The calling process's own hold (`hold_shared`), which `child_env` hands to the CLI
    children it runs (`up`, `down`, `stop`), so that its own hold never blocks them."""
    global _session_fd
    _session_fd = fd


def child_env(env: dict[str, str] | None = None) -> tuple[dict[str, str], tuple[int, ...]]:
    """(environment, pass_fds) for a `python -m e2e.cluster` child of a run holding the cluster."""
    env = dict(os.environ if env is None else env)
    if _session_fd is None:
        env.pop(USERS_FD_ENV, None)
        return env, ()
    env[USERS_FD_ENV] = str(_session_fd)
    return env, (_session_fd,)


def holders(path: Path = USERS) -> list[int]:
    """Pids with the lock file open (scanning /proc/*/fd: /proc/locks names only the process
    that took a lock, which may have exited while a child still holds it)."""
    target = str(path)
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) == target for fd in (proc / "fd").iterdir()):
                pids.append(int(proc.name))
        except OSError:
            continue
    return sorted(pids)


def _describe(pids: list[int]) -> str:
    out = []
    for pid in pids:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            cmd = "?"
        out.append(f"{pid} ({cmd[:100]})")
    return ", ".join(out) or "unknown"


def adopt_inherited_fd() -> None:
    """Keep the parent run's descriptor (USERS_FD_ENV) to this process: the cluster processes
    `up` starts must not inherit it, or they would hold the cluster "in use" forever."""
    inherited = os.environ.get(USERS_FD_ENV)
    if inherited:
        try:
            os.set_inheritable(int(inherited), False)
        except (ValueError, OSError):
            pass


@contextlib.contextmanager
def sole_user():
    """USERS exclusive for the duration, without waiting; raises InUse if another run holds it."""
    inherited = os.environ.get(USERS_FD_ENV)
    fd = None
    if inherited:
        try:
            fd = int(inherited)
            os.fstat(fd)
        except (ValueError, OSError):
            fd = None
    own = fd is None
    if own:
        fd = os.open(USERS, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            others = [p for p in holders() if p not in (os.getpid(), os.getppid())]
            raise InUse(f"another test run is using the cluster (holding {USERS}): {_describe(others)}") from None
        yield
    finally:
        if own:
            os.close(fd)
        else:
            # Back to shared for the parent run (a failed conversion dropped it too).
            fcntl.flock(fd, fcntl.LOCK_SH)
