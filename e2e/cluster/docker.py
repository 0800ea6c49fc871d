"""Start Docker's daemon if it is not running (a fresh machine has it installed, not started).

Idempotent; its log goes to `<cache>/dockerd.log`. Used by the image build and `load_image`.
"""

import shutil
import subprocess
import time

from e2e.cluster import paths


def running() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0


def up(timeout: float = 60) -> int:
    if shutil.which("dockerd") is None:
        raise SystemExit("docker-up: dockerd not found; run `python -m e2e.cluster deps`")
    if running():
        print("docker-up: dockerd already running")
        return 0
    log = paths.cache_root() / "dockerd.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    # Detached (setsid --fork: its own session, and not our child): started from inside pytest
    # (the container tests, load_image), a child's Popen dropped while it runs is a
    # ResourceWarning that fails a test, and the stopped daemon a zombie here.
    with open(log, "ab") as out:
        subprocess.run(["setsid", "--fork", "dockerd"], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, check=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if running():
            print(f"docker-up: dockerd started (log {log})")
            return 0
        time.sleep(0.5)
    raise SystemExit(f"docker-up: dockerd did not answer within {timeout:.0f} s; see {log}")
