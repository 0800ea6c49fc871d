"""Reads a process tree's CPU time and RSS, and the machine's busy time, from /proc.

The parsers take the file's text so they can be checked without a live process.
"""

from __future__ import annotations

import os
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def parse_stat_user_system_seconds(stat_text: str) -> tuple[float, float]:
    """(utime, stime) in seconds from ``/proc/PID/stat`` text.

    The command name (field 2) may contain spaces and parentheses, so fields are counted
    from the last ``)``.
    """
    fields = stat_text[stat_text.rindex(")") + 2 :].split()
    # fields[0] is state (field 3); utime and stime are fields 14 and 15.
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


def parse_stat_cpu_seconds(stat_text: str) -> float:
    """utime + stime in seconds from ``/proc/PID/stat`` text."""
    return sum(parse_stat_user_system_seconds(stat_text))


def parse_status_rss_kib(status_text: str) -> int:
    """VmRSS in KiB from ``/proc/PID/status`` text."""
    for line in status_text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ValueError("no VmRSS line (kernel thread or exited process?)")


def parse_machine_busy_seconds(proc_stat_text: str) -> tuple[float, float, float]:
    """(busy, total, softirq) CPU seconds over all cores from ``/proc/stat``'s ``cpu`` line.

    softirq is reported apart because with IRQ time accounting it is charged to no process:
    under load it is mostly the loopback delivery of the benchmark's own packets.
    """
    values = [int(v) for v in proc_stat_text.splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # guest time is already inside user
    return (total - idle) / CLOCK_TICKS, total / CLOCK_TICKS, values[6] / CLOCK_TICKS


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (the relay may fork workers)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                todo.extend(int(child) for child in (task / "children").read_text().split())
            except FileNotFoundError:
                pass
    return found


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds used so far by ``pid`` and its descendants."""
    total = 0.0
    for member in process_tree(pid):
        try:
            total += parse_stat_cpu_seconds(Path(f"/proc/{member}/stat").read_text())
        except FileNotFoundError:
            pass
    return total


def tree_system_seconds(pid: int) -> float:
    """Kernel-mode CPU seconds of ``pid`` and its descendants (syscalls, loopback delivery)."""
    total = 0.0
    for member in process_tree(pid):
        try:
            total += parse_stat_user_system_seconds(Path(f"/proc/{member}/stat").read_text())[1]
        except FileNotFoundError:
            pass
    return total


def tree_rss_kib(pid: int) -> int:
    """Resident set of ``pid`` and its descendants in KiB (shared pages counted per process)."""
    total = 0
    for member in process_tree(pid):
        try:
            total += parse_status_rss_kib(Path(f"/proc/{member}/status").read_text())
        except (FileNotFoundError, ValueError):  # exited, or a zombie without memory
            pass
    return total


def machine_busy_seconds() -> tuple[float, float, float]:
    return parse_machine_busy_seconds(Path("/proc/stat").read_text())
