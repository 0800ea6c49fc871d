"""tests.ports: the fixed port a test hands a server is one no outgoing connection can take."""

import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests import ports
from tests.relay import test_workers

ROOT = Path(__file__).resolve().parents[1]


def test_a_test_port_is_outside_the_ephemeral_range_and_unbound():
    low, high = ports.ephemeral_range()
    for _ in range(20):
        port = ports.unused_port()
        assert not low <= port <= high
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # nothing holds it


async def test_the_workers_tests_port_is_outside_the_ephemeral_range():
    """The --workers tests' helper (a relay bound to port 0 and stopped, before) handed out a
    port any connection beside them could take before the workers bound it."""
    low, high = ports.ephemeral_range()
    assert not low <= await test_workers.free_port() <= high


ONE_PORT_PICK = """  # another process, offered only the port this one picked
from tests import ports
ports.LOW, ports.HIGH = {port}, {port} + 1
try:
    print(ports.unused_port())
except RuntimeError as e:
    print("refused:", e)
"""


def test_a_port_picked_by_one_test_process_is_not_picked_by_another():
    """Two pytest processes (xdist workers, two clones' runs) pick from the same range: a
    pick that is only released, not reserved, can be handed to both before either binds."""
    port = ports.unused_port()
    other = subprocess.run([sys.executable, "-c", ONE_PORT_PICK.format(port=port)], capture_output=True, text=True,
                           cwd=ROOT, timeout=60, check=True).stdout
    assert other.startswith("refused:"), f"another process was handed port {port} too: {other!r}"


def test_a_port_is_not_handed_out_twice_in_one_process(monkeypatch):
    port = ports.unused_port()
    monkeypatch.setattr(ports, "LOW", port)
    monkeypatch.setattr(ports, "HIGH", port + 1)  # the one port this process holds
    with pytest.raises(RuntimeError, match="no unbound port"):
        ports.unused_port()  # nothing was bound to it: only the reservation can say no


@pytest.fixture
def shared_lock_dir(monkeypatch):
    """A lock directory like /tmp/zt-relay-test-ports (1777) that user nobody can reach."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run a picker as another user")
    path = Path(tempfile.mkdtemp(prefix="zt-port-locks-", dir="/tmp"))
    path.chmod(0o1777)
    monkeypatch.setattr(ports, "LOCK_DIR", path)
    yield path
    shutil.rmtree(path)


def _reserve_as_nobody(port: int) -> str:
    return _as_nobody(lambda: str(ports._reserve(port)))


def _as_nobody(call) -> str:
    """call() in a forked child that is user nobody with umask 077 (a developer's
    test process beside root's CI run), and lets go of the lock as it exits."""
    nobody = pwd.getpwnam("nobody")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read)
            os.umask(0o077)
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            try:
                answer = call()
            except (OSError, RuntimeError) as e:
                answer = f"error: {e!r}"
            os.write(write, answer.encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as r:
        answer = r.read()
    os.waitpid(pid, 0)
    return answer


def test_a_lock_file_made_under_a_private_umask_is_every_users(shared_lock_dir):
    """A developer with umask 077 made the port's lock file 0600: every other user's test
    process then failed on that port with PermissionError (not a skip: the whole test)."""
    port = 19001
    assert _reserve_as_nobody(port) == "True"
    assert (shared_lock_dir / f"{port}.lock").stat().st_mode & 0o444 == 0o444
    assert ports._reserve(port)  # root as well, by its mode (nobody's process has exited)


def test_a_lock_file_another_user_cannot_open_makes_that_port_unavailable_not_an_error(shared_lock_dir):
    """Another user's lock file this process cannot open (an older run's private one; or,
    with fs.protected_regular, any other user's in the sticky directory when opened with
    O_CREAT): the port is skipped, the test is not failed."""
    port = 19002
    path = shared_lock_dir / f"{port}.lock"
    path.touch(mode=0o600)
    path.chmod(0o600)
    assert _reserve_as_nobody(port) == "False"


def test_a_lock_directory_this_user_cannot_write_is_named(shared_lock_dir):
    """Another user made the directory and was stopped before making it every user's (1777): each
    pick then failed as 'no unbound port in 12000-20000 after 200 tries', naming no directory."""
    shared_lock_dir.chmod(0o755)
    answer = _as_nobody(ports.unused_port)
    assert str(shared_lock_dir) in answer and "ZT_TEST_PORT_LOCKS" in answer, answer
