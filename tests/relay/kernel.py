"""Real kernel ceilings for tests: a private network namespace with its own sysctls, and a
memory cgroup of our own. Both are created for one test and removed after it; nothing of
the machine's own settings is touched. Need root; tests skip without it.

The namespace is entered by the test's thread (``setns``), so the relay process the test
starts, its UDP peers and its clients all live in it: the namespace's
``net.ipv4.ip_local_port_range`` and ``disable_ipv6`` apply to them and to nothing else.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import signal
import subprocess
import time
from pathlib import Path

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_names = itertools.count()


def is_root() -> bool:
    return os.geteuid() == 0


@contextlib.contextmanager
def private_netns(**sysctls: str):
    """Moves this thread into a fresh network namespace with loopback up and the given
    sysctls set inside it (``ipv4__ip_local_port_range="40000 40007"`` is
    net.ipv4.ip_local_port_range); back to the original namespace on exit. The namespace
    goes away with the last process and socket in it."""
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.unshare(CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")
        try:
            subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=10)
            for key, value in sysctls.items():
                path = Path("/proc/sys/net", *key.split("__"))
                path.write_text(value)
                assert path.read_text().split() == value.split(), f"{path} did not take {value!r}"
            yield
        finally:
            if _libc.setns(original, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns back to the original namespace: {os.strerror(err)}")
    finally:
        os.close(original)


def memory_hierarchy() -> tuple[Path, int] | None:
    """The writable memory cgroup hierarchy's root and its version (2 or 1), else None."""
    fs = Path("/sys/fs/cgroup")
    if "memory" in (fs / "cgroup.controllers").read_text().split() if (fs / "cgroup.controllers").exists() else False:
        root, version = fs, 2
    elif (fs / "memory" / "memory.limit_in_bytes").exists():
        root, version = fs / "memory", 1
    else:
        return None
    return (root, version) if os.access(root, os.W_OK) else None


class MemoryCgroup:
    """A uniquely named memory cgroup at the hierarchy's root (never the e2e harness's
    ``zt-relay-e2e-*`` trees), with a hard limit; ``enter`` is a preexec_fn that moves the
    child process into it."""

    def __init__(self, limit: int) -> None:
        found = memory_hierarchy()
        if found is None:
            raise RuntimeError("no writable memory cgroup hierarchy")
        root, self.version = found
        self.path = root / f"zt-relay-test-memory-{os.getpid()}-{next(_names)}"
        self.path.mkdir()
        if self.version == 2:
            (self.path / "memory.max").write_text(str(limit))
            (self.path / "memory.swap.max").write_text("0")
        else:
            (self.path / "memory.limit_in_bytes").write_text(str(limit))
            with contextlib.suppress(OSError):  # only with swap accounting
                (self.path / "memory.memsw.limit_in_bytes").write_text(str(limit))

    def enter(self) -> None:
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def oom_kills(self) -> int:
        """OOM kills in this cgroup (v2 memory.events, v1 memory.oom_control)."""
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        for line in (self.path / name).read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        raise RuntimeError(f"no oom_kill count in {self.path / name}")

    def pids(self) -> list[int]:
        return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]

    def remove(self) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.path.rmdir()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
