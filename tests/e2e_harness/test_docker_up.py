"""e2e.cluster.docker.up, run inside pytest (the container tests' fixture, `load_image`): the
dockerd it starts is not this process's child. As a child, its Popen was dropped while it ran:
a ResourceWarning ("subprocess ... is still running") failed whichever test collected it, and
the daemon would linger as a zombie here once stopped."""

import os
import signal
import time
from pathlib import Path

import pytest

from e2e.cluster import docker

FAKE_DOCKER = '#!/bin/sh\n[ -e "$ZTR_FAKE_DIR/started" ]\n'  # `docker info`: fine once dockerd runs
# The pid goes in whole (written aside, then renamed): `docker info` passes once `started` exists.
FAKE_DOCKERD = '#!/bin/sh\necho $$ > "$ZTR_FAKE_DIR/pid"\nmv "$ZTR_FAKE_DIR/pid" "$ZTR_FAKE_DIR/started"\nexec sleep 60\n'


def ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.mark.timeout(60)
def test_the_dockerd_it_starts_is_not_a_child_of_the_caller(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("docker", FAKE_DOCKER), ("dockerd", FAKE_DOCKERD)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("ZTR_FAKE_DIR", str(tmp_path))
    monkeypatch.setenv("ZT_RELAY_CACHE", str(tmp_path / "cache"))
    assert docker.up(timeout=30) == 0
    pid = int((tmp_path / "started").read_text())
    try:
        assert ppid(pid) != os.getpid(), "dockerd is a child of the process that started it"
    finally:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.05)
