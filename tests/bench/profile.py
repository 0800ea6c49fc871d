"""Samples the relay with py-spy during a load run and ranks the hottest functions.

py-spy writes collapsed stacks (``frame;frame;frame COUNT``, root first); ``summarise``
turns them into self time (the function was on top of the stack) and inclusive time (it
was anywhere on the stack), both as a share of all samples.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

#: "name (path/to/file.py:123)" -> "name (file.py)": lines split one function into many rows.
_FRAME = re.compile(r"^(?P<name>.*?) \((?P<file>[^():]+?)(?::\d+)?\)$")


@dataclass(frozen=True)
class Profile:
    samples: int
    self_share: list[tuple[str, float]]
    inclusive_share: list[tuple[str, float]]


def function_of(frame: str) -> str:
    """A py-spy frame label without its line number, with the file's base name."""
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    return f"{match['name']} ({Path(match['file']).name})"


def summarise(collapsed: str, top: int = 15) -> Profile:
    own: Counter[str] = Counter()
    anywhere: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [function_of(f) for f in stack.split(";")]
        # py-spy puts the process/thread label first; it is not a function.
        if frames and frames[0].startswith(("process ", "thread ")):
            frames = frames[1:]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            anywhere[name] += count
    share = (lambda c: [(name, n / total) for name, n in c.most_common(top)]) if total else (lambda c: [])
    return Profile(total, share(own), share(anywhere))


def py_spy() -> str:
    found = Path(sys.executable).with_name("py-spy")
    if found.exists():
        return str(found)
    path = shutil.which("py-spy")
    if not path:
        raise SystemExit("--profile needs py-spy (pip install py-spy)")
    return path


def start_recording(pid: int, seconds: float, output: Path, native: bool = False) -> subprocess.Popen:
    """Starts py-spy sampling ``pid`` at 200 Hz for ``seconds``.

    Python-only sampling doesn't pause the relay (``--nonblocking``); native stacks need
    py-spy to stop the process per sample, which slows it, so those runs' rate is lower.
    """
    command = [py_spy(), "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "200",
               "--format", "raw", "--output", str(output)]
    command.append("--native" if native else "--nonblocking")
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def format_profile(profile: Profile) -> str:
    lines = [f"py-spy: {profile.samples} samples of the relay's busy time"]
    lines.append("  self time (on top of the stack):")
    lines += [f"    {share * 100:5.1f}%  {name}" for name, share in profile.self_share]
    lines.append("  inclusive time (anywhere on the stack):")
    lines += [f"    {share * 100:5.1f}%  {name}" for name, share in profile.inclusive_share]
    return "\n".join(lines)
