"""`.ci/run` run for real with every command it calls faked (python, pip): its two pytest
sessions' exit codes, the background session's output and its clean stop on an early exit."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# The fake interpreter: pytest's two parts do what ZTR_FAKE_<PART> says; everything else
# (e2e.cluster deps/build/docker-up/down/logs, e2e.images build, venv) succeeds at once.
FAKE_PYTHON = textwrap.dedent(f"""\
    #!{sys.executable}
    import os, sys, time
    args = " ".join(sys.argv[1:])
    part = "rest" if "--part=no-cluster" in args else "cluster" if "--part=cluster" in args else None
    if part is None:
        sys.exit(0)
    state = os.environ["ZTR_FAKE_STATE"]
    print(f"{{part.upper()}}-OUTPUT", flush=True)
    with open(os.path.join(state, part + ".pid"), "w") as f:
        f.write(str(os.getpid()))
    action = os.environ.get("ZTR_FAKE_" + part.upper(), "exit 0")
    if action.startswith("exit "):
        sys.exit(int(action.split()[1]))
    if action == "crash":
        os.kill(os.getpid(), 9)
    if action == "hang":  # like pytest: a KeyboardInterrupt runs the teardown
        try:
            time.sleep(120)
        except KeyboardInterrupt:
            print(f"{{part.upper()}}-TEARDOWN", flush=True)
            sys.exit(2)
        sys.exit(0)
    """)


@pytest.fixture
def ci(tmp_path):
    root = tmp_path / "repo"
    (root / ".ci").mkdir(parents=True)
    shutil.copy2(REPO / ".ci" / "run", root / ".ci" / "run")
    (root / ".ci" / "requirements.lock").write_text("fake==1\n")
    bin_dir, venv_bin, state = tmp_path / "bin", root / ".venv" / "bin", tmp_path / "state"
    for d in (bin_dir, venv_bin, state):
        d.mkdir(parents=True)
    for path in (bin_dir / "python3", venv_bin / "python"):
        path.write_text(FAKE_PYTHON)
        path.chmod(0o755)
    (venv_bin / "pip").write_text("#!/bin/sh\n[ \"$1\" = freeze ] && echo fake==1\nexit 0\n")
    (venv_bin / "pip").chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "ZTR_FAKE_STATE": str(state), "HOME": str(tmp_path)}

    def start(**actions: str) -> subprocess.Popen:
        return subprocess.Popen(
            ["bash", str(root / ".ci" / "run")], env={**env, **{f"ZTR_FAKE_{k.upper()}": v for k, v in actions.items()}},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )

    start.state = state
    return start


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=60)
    return proc.returncode, out


@pytest.mark.parametrize(
    ("cluster", "rest", "expected"),
    [("exit 0", "exit 0", 0), ("exit 0", "exit 1", 1), ("exit 1", "exit 0", 1), ("exit 0", "crash", 137),
     ("crash", "exit 0", 137), ("exit 5", "exit 0", 0), ("exit 5", "exit 5", 5), ("exit 2", "exit 5", 2)],
)
def test_both_parts_exit_codes_propagate_and_the_background_output_is_shown(ci, cluster, rest, expected):
    rc, out = finish(ci(cluster=cluster, rest=rest))
    assert rc == expected, out
    assert "CLUSTER-OUTPUT" in out and "REST-OUTPUT" in out, out


def wait_for(path: Path) -> int:
    deadline = time.monotonic() + 30
    while not (path.exists() and path.read_text()):
        assert time.monotonic() < deadline, f"{path} never written"
        time.sleep(0.05)
    return int(path.read_text())


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("how", ["SIGTERM to .ci/run", "Ctrl-C (SIGINT to its process group)"])
def test_an_early_exit_stops_the_background_part_with_its_teardown_and_shows_its_output(ci, how):
    """.ci/run interrupted while the no-cluster part still runs: that part gets pytest's
    KeyboardInterrupt (its fixtures' teardown: containers, relays), is waited for, its output
    shown, and the run fails."""
    proc = ci(cluster="exit 0", rest="hang")
    rest_pid = wait_for(ci.state / "rest.pid")
    # Whether .ci/run is still in the cluster part (it finishes that first) or already waits on
    # the background part, the checks below hold.
    if how.startswith("SIGTERM"):
        proc.send_signal(signal.SIGTERM)
    else:
        os.killpg(proc.pid, signal.SIGINT)
    rc, out = finish(proc)
    assert rc != 0, out
    assert "REST-TEARDOWN" in out, out
    assert "REST-OUTPUT" in out, out
    assert not alive(rest_pid), out
