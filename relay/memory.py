"""``--max-memory``: refuse new tunnels before the kernel OOM-kills the pod.

An OOM kill cuts every tunnel at once; refusing new ones (``memory_pressure``) lets the
load balancer send them to another pod while the open ones keep relaying. The budget is
``--max-memory``, by default the cgroup's limit (``memory.max``, or v1's
``memory.limit_in_bytes``) when there is one. Usage is the cgroup's working set (usage
minus inactive file cache, as the kubelet counts it), which covers every worker of the
pod; outside a memory cgroup, this process's resident set. Sampled once a second by the
housekeeping tick, never per packet.
"""

from __future__ import annotations

import ctypes
import os

#: New tunnels are refused from this share of the budget on: what open tunnels may still
#: allocate (write buffers filling, see the README) must fit in the rest.
HIGH_WATER = 0.9
#: ... and accepted again below this share (no flapping around HIGH_WATER).
LOW_WATER = 0.85
#: Seconds between samples by the share of the budget last seen used: more often once
#: half of it is used (a sample reads two small files, tens of us, and above half also
#: sums the tunnels' write buffers: see Relay._share_write_buffers).
SAMPLE_INTERVALS = ((0.5, 1.0), (float("inf"), 0.1))
_CGROUP_ROOT = "/sys/fs/cgroup"
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return None if text == "max" else int(text)


def _cgroup_dir() -> tuple[str | None, int]:
    """The memory cgroup directory of this process and its version (2 or 1)."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return None, 0
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            directory = _CGROUP_ROOT + path.rstrip("/")
            if os.path.exists(directory + "/memory.current"):
                return directory, 2
        elif "memory" in controllers.split(","):
            directory = f"{_CGROUP_ROOT}/memory{path.rstrip('/')}"
            if os.path.exists(directory + "/memory.usage_in_bytes"):
                return directory, 1
    return None, 0


class MemoryBudget:
    """``sample()`` reads the usage and says whether new tunnels must be refused."""

    def __init__(self, limit: int, source: str) -> None:
        self.limit = limit
        self.source = source
        self.used = 0
        self.directory, self.version = _cgroup_dir()

    def usage(self) -> int:
        if self.version == 2:
            return _working_set(self.directory + "/memory.current", self.directory + "/memory.stat", "inactive_file")
        if self.version == 1:
            return _working_set(self.directory + "/memory.usage_in_bytes", self.directory + "/memory.stat", "total_inactive_file")
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE

    def sample(self, pressure: bool = False) -> bool:
        """Whether new tunnels must be refused; ``pressure``: the last answer (hysteresis)."""
        self.used = self.usage()
        return self.used >= self.limit * (LOW_WATER if pressure else HIGH_WATER)

    def interval(self) -> float:
        """Seconds until the next sample."""
        share = self.used / self.limit
        return next(seconds for below, seconds in SAMPLE_INTERVALS if share < below)

    def describe(self) -> str:
        measured = f"cgroup v{self.version} working set" if self.version else "this process's RSS"
        return (f"{self.limit} bytes ({self.source}); refusing new tunnels from {HIGH_WATER:.0%} of it until "
                f"below {LOW_WATER:.0%}, write buffers sharing what is left, measured as {measured}")


def _load_malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc
    except (OSError, AttributeError):
        return None


_malloc_trim = _load_malloc_trim()


def give_back() -> bool:
    """Returns freed heap to the kernel (glibc ``malloc_trim``). Replies that were queued
    for stuck clients are freed when they close, but malloc keeps the pages: measured in
    a real cgroup, the working set stayed at 70-87 % of the budget (an 80 MB RSS with no
    tunnel left), so the relay could go on refusing (pressure ends below 85 %)."""
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True


def _working_set(usage_path: str, stat_path: str, inactive_key: str) -> int:
    used = _read_int(usage_path) or 0
    try:
        with open(stat_path) as f:
            for line in f:
                key, _, value = line.partition(" ")
                if key == inactive_key:
                    return max(0, used - int(value))
    except OSError:
        pass
    return used


def budget(max_memory: int | None) -> MemoryBudget | None:
    """The budget for ``--max-memory`` (None: the cgroup's limit, if any; 0: none)."""
    if max_memory == 0:
        return None
    if max_memory is not None:
        return MemoryBudget(max_memory, "--max-memory")
    directory, version = _cgroup_dir()
    if directory is None:
        return None
    limit = _read_int(directory + ("/memory.max" if version == 2 else "/memory.limit_in_bytes"))
    if limit is None or limit >= 1 << 60:  # v1 reports "no limit" as a huge number
        return None
    return MemoryBudget(limit, "the cgroup's memory limit")
