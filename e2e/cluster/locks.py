"""Who may change the local cluster, and who is using it.

Two flock(2) files under /run:
- `MUTEX`: one `up`/`down` at a time on this machine.
- `USERS`: every test run holds it SHARED for as long as it uses the cluster. Tearing the
  cluster down (`down`, `stop NAME`, or `up` replacing a broken cluster) needs it EXCLUSIVE,
  without waiting: if another run holds it, they refuse and name the holders instead of
  pulling the floor from under it.

A pytest session opens USERS (`open_session_hold`) but holds nothing until its `up` has the
cluster up: `up`, under the MUTEX, then takes it shared on the session's behalf
(`share_inherited`). A run still waiting for `up` is not using the cluster, so two sessions
starting together on a broken cluster don't each block the other's rebuild (both would refuse).
A run that calls `up`/`down`/`stop` passes its descriptor to the child in `USERS_FD_ENV`
(`child_env`); the child converts that same lock (flock locks belong to the open file, which
parent and child share) to exclusive, so the run's own hold never blocks it, and back to
shared afterwards.
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
def exclusive(path: Path):
    """One process on the machine at a time in the block: an exclusive flock on `path` (made
    if missing), released when the block ends or the process dies."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def mutex():
    with open(MUTEX, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def open_session_hold() -> int:
    """A test session's descriptor on USERS, holding nothing yet: its `up` takes it shared
    once the cluster is up (`share_inherited`). Keep it open to the end of the session."""
    return os.open(USERS, os.O_RDWR | os.O_CREAT, 0o644)


def _inherited_fd() -> int | None:
    inherited = os.environ.get(USERS_FD_ENV)
    if not inherited:
        return None
    try:
        fd = int(inherited)
        os.fstat(fd)
        return fd
    except (ValueError, OSError):
        return None


def share_inherited() -> None:
    """`up`, the cluster up and the MUTEX held: the run that asked now holds the cluster
    shared (its descriptor, so the hold outlives this process). Nobody takes USERS exclusive
    without the MUTEX, so this never waits."""
    fd = _inherited_fd()
    if fd is not None:
        fcntl.flock(fd, fcntl.LOCK_SH)


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
    fd = _inherited_fd()
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
