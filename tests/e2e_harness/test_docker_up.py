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


def _dead(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


class _Clock:
    """docker's clock: each sleep lets its seconds pass, once the fake dockerd has exited
    (really: bounded), so the daemon is gone from the first poll after the start on."""

    def __init__(self, pid_file: Path):
        self.now = 0.0
        self.pid_file = pid_file

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + 30
        while not (self.pid_file.exists() and _dead(int(self.pid_file.read_text()))):
            assert time.monotonic() < deadline, "the fake dockerd did not exit"
            time.sleep(0.01)
        self.now += seconds


@pytest.mark.timeout(60)
def test_a_dockerd_that_exits_at_once_fails_docker_up_at_once_with_its_log(tmp_path, monkeypatch):
    # It used to poll `docker info` for its whole timeout (60 s) after dockerd had died.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    dies = ('#!/bin/sh\necho $$ > "$ZTR_FAKE_DIR/pid.new"\nmv "$ZTR_FAKE_DIR/pid.new" "$ZTR_FAKE_DIR/pid"\n'
            'echo "failed to start daemon: pid file found, ensure docker is not running" >&2\nexit 1\n')
    for name, text in (("docker", "#!/bin/sh\nexit 1\n"), ("dockerd", dies)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("ZTR_FAKE_DIR", str(tmp_path))
    monkeypatch.setenv("ZT_RELAY_CACHE", str(tmp_path / "cache"))
    clock = _Clock(tmp_path / "pid")
    monkeypatch.setattr(docker, "time", clock)
    with pytest.raises(SystemExit) as failed:
        docker.up(timeout=60)
    assert clock.now < 5, f"waited {clock.now} s for a dockerd that had exited"
    assert "exited" in str(failed.value) and "pid file found" in str(failed.value), failed.value


@pytest.mark.timeout(60)
def test_a_hung_dockerd_is_not_running_rather_than_an_error(tmp_path, monkeypatch):
    # `docker info` against a dockerd that accepts and never answers: a TimeoutExpired
    # escaped running() (the container tests' fixture, docker-up) as a traceback.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text("#!/bin/sh\nexec sleep 600\n")
    (bin_dir / "docker").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setattr(docker, "INFO_TIMEOUT", 0.5, raising=False)
    assert docker.running() is False
