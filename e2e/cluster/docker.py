"""Start Docker's daemon if it is not running (a fresh machine has it installed, not started).

Idempotent; its log goes to `<cache>/dockerd.log`. Used by the image build and `load_image`.
"""

import shutil
import subprocess
import time
from pathlib import Path

from e2e.cluster import paths

INFO_TIMEOUT = 30
"""Seconds `docker info` may take: a daemon that accepts and never answers is not running."""


def running() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=INFO_TIMEOUT).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _gone(pid_file: Path) -> bool:
    """Whether the dockerd started with `pid_file` has exited (False: running, or not known yet)."""
    try:
        pid = int(pid_file.read_text())
    except (FileNotFoundError, ValueError):
        return False  # the start's shell has not written it yet
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def up(timeout: float = 60) -> int:
    if shutil.which("dockerd") is None:
        raise SystemExit("docker-up: dockerd not found; run `python -m e2e.cluster deps`")
    if running():
        print("docker-up: dockerd already running")
        return 0
    log = paths.cache_root() / "dockerd.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    pid_file = log.with_name("dockerd.start.pid")
    pid_file.unlink(missing_ok=True)
    start = log.stat().st_size if log.exists() else 0
    # Detached (setsid --fork: its own session, and not our child): started from inside pytest
    # (the container tests, load_image), a child's Popen dropped while it runs is a
    # ResourceWarning that fails a test, and the stopped daemon a zombie here. The shell
    # leaves dockerd's pid (its own, before the exec): a daemon that exits at once (another
    # one's pid file, a bad config) fails docker-up at once, with its log.
    with open(log, "ab") as out:
        subprocess.run(["setsid", "--fork", "sh", "-c", 'echo $$ > "$0" && exec dockerd', str(pid_file)],
                       stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, check=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if running():
            print(f"docker-up: dockerd started (log {log})")
            return 0
        if _gone(pid_file):
            with open(log, "rb") as text:
                text.seek(start)
                said = "\n".join(text.read().decode(errors="replace").splitlines()[-15:])
            raise SystemExit(f"docker-up: dockerd exited at once; its log ({log}) says:\n{said}")
        time.sleep(0.5)
    raise SystemExit(f"docker-up: dockerd did not answer within {timeout:.0f} s; see {log}")
