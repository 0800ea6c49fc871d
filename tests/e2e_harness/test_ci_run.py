"""`.ci/run` run for real with every command it calls faked (python, pip): its pytest sessions
(the no-cluster part beside the cluster part's alone phase, then its concurrent shards), each
one's exit code and output, and their clean stop on an early exit."""

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

# The fake interpreter: a pytest session does what ZTR_FAKE_<TAG> says (TAG: REST, CLUSTER_ALONE,
# CLUSTER_1OF3, ...), else ZTR_FAKE_<PART> (REST, CLUSTER); it writes <tag>.pid, <tag>.env and
# "start TAG" / "end TAG" lines to `events`; everything else (e2e.cluster
# deps/build/docker-up/down/logs, e2e.images build, venv) succeeds at once.
# -S (no site): it needs the standard library only, and .ci/run starts it a dozen times a test
# (~270 times in this module); subprocess is imported only where it is used ("hang"): the import
# took 19 ms of each start's 31 ms of CPU.
FAKE_PYTHON = textwrap.dedent(f"""\
    #!{sys.executable} -S
    import os, sys, time
    if sys.argv[1:2] == ["-c"]:  # a real script (.ci/run's SIGINT reset): run it as python would
        code, sys.argv = sys.argv[2], ["-c", *sys.argv[3:]]
        exec(code)
        sys.exit(0)
    # Like a pytest-xdist worker: a child process whose fixtures need their teardown too.
    WORKER = "import sys, time\\ntry:\\n    open(sys.argv[1], 'w').close()\\n    time.sleep(120)\\nexcept KeyboardInterrupt:\\n    print('WORKER-TEARDOWN', flush=True)\\n    sys.exit(2)\\n"
    args = " ".join(sys.argv[1:])
    with open(os.path.join(os.environ["ZTR_FAKE_STATE"], "calls"), "a") as f:
        f.write(args + "\\n")
    part = "rest" if "--part=no-cluster" in args else "cluster" if "--part=cluster" in args else None
    if sys.argv[1:3] == ["-m", "venv"]:  # .ci/venv's template: this interpreter and a fake pip
        os.makedirs(os.path.join(sys.argv[3], "bin"))
        for name, text in (("python", open(sys.argv[0]).read()), ("pip", "#!/bin/sh\\n[ \\"$1\\" = freeze ] && echo fake==1\\nexit 0\\n")):
            with open(os.path.join(sys.argv[3], "bin", name), "w") as f:
                f.write(text)
            os.chmod(os.path.join(sys.argv[3], "bin", name), 0o755)
        with open(os.path.join(sys.argv[3], "pyvenv.cfg"), "w") as f:
            f.write("command = python3 -m venv " + sys.argv[3] + "\\n")
    if part is None:
        sys.exit(0)
    state = os.environ["ZTR_FAKE_STATE"]
    tag = part
    for arg in sys.argv:
        if arg.startswith("--shard="):
            tag += "-" + arg.split("=", 1)[1].replace("/", "of")
    if "--phase=alone" in sys.argv:
        tag += "-alone"
    def event(what):
        with open(os.path.join(state, "events"), "a") as f:
            f.write(what + " " + tag + "\\n")
    event("start")
    print(f"{{tag.upper()}}-OUTPUT", flush=True)
    action = os.environ.get("ZTR_FAKE_" + tag.upper().replace("-", "_"), os.environ.get("ZTR_FAKE_" + part.upper(), "exit 0"))
    if action == "hang":
        import subprocess
        ready = os.path.join(state, tag + ".worker")
        worker = subprocess.Popen([sys.executable, "-S", "-c", WORKER, ready])
        while not os.path.exists(ready):
            time.sleep(0.01)
    with open(os.path.join(state, tag + ".env"), "w") as f:
        f.write(repr(os.environ.get("PYTHONDONTWRITEBYTECODE")))
    with open(os.path.join(state, tag + ".pid"), "w") as f:  # (the tests signal once it exists)
        f.write(str(os.getpid()))
    if action.startswith("exit "):
        event("end")
        sys.exit(int(action.split()[1]))
    if action.startswith("await "):  # exit 0 once every session named has started (3 after 30 s)
        deadline = time.monotonic() + 30
        while not all("start " + other in open(os.path.join(state, "events")).read().splitlines()
                      for other in action.split()[1:]):
            if time.monotonic() > deadline:
                sys.exit(3)
            time.sleep(0.02)
        event("end")
        sys.exit(0)
    if action == "crash":
        os.kill(os.getpid(), 9)
    if action == "hang":  # like pytest: a KeyboardInterrupt runs the teardown
        try:
            time.sleep(120)
        except KeyboardInterrupt:
            try:  # like xdist's controller: the workers' own teardown first
                worker.wait(timeout=10)
            except subprocess.TimeoutExpired:
                worker.kill()
            print(f"{{tag.upper()}}-TEARDOWN", flush=True)
            sys.exit(2)
        sys.exit(0)
    """)


@pytest.fixture
def ci(tmp_path):
    root = tmp_path / "repo"
    (root / ".ci").mkdir(parents=True)
    for script in ("run", "venv"):
        shutil.copy2(REPO / ".ci" / script, root / ".ci" / script)
    (root / ".ci" / "requirements.lock").write_text("fake==1\n")
    bin_dir, state = tmp_path / "bin", tmp_path / "state"
    for d in (bin_dir, state):
        d.mkdir(parents=True)
    (bin_dir / "python3").write_text(FAKE_PYTHON)
    (bin_dir / "python3").chmod(0o755)
    # TMPDIR: nothing of .ci/run's may land there (its session logs are in the clone).
    # PYTHONDONTWRITEBYTECODE: as in this machine's environment (.ci/run turns it off).
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "ZTR_FAKE_STATE": str(state), "HOME": str(tmp_path), "TMPDIR": str(tmp_path),
           "PYTHONDONTWRITEBYTECODE": "1"}

    started = []

    def start(sigint=signal.SIG_DFL, args=(), shards="2", **actions: str) -> subprocess.Popen:
        """`sigint`: .ci/run's SIGINT at entry (SIG_IGN: started as a background job or by nohup;
        whatever the test session's own was); `shards`: ZT_CI_CLUSTER_SHARDS (None: unset)."""
        run_env = {**env, **{f"ZTR_FAKE_{k.upper()}": v for k, v in actions.items()}}
        if shards is not None:
            run_env["ZT_CI_CLUSTER_SHARDS"] = shards
        proc = subprocess.Popen(
            ["bash", str(root / ".ci" / "run"), *args], env=run_env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, sigint),
        )
        started.append(proc)
        return proc

    start.state, start.root, start.env, start.cache = state, root, env, tmp_path / ".cache" / "zt-relay" / "venvs"
    yield start
    for proc in started:  # a test that failed before `finish` (a wait_for that timed out)
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    """Kill .ci/run's process group (it and its pytest parts: start_new_session) and reap it."""
    if proc.returncode is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.communicate()



def interrupt(proc: subprocess.Popen, how: str) -> None:
    """Stops .ci/run as `how` says: SIGTERM to it, or a Ctrl-C (SIGINT to its process group)."""
    if how.startswith("SIGTERM"):
        proc.send_signal(signal.SIGTERM)
    else:
        os.killpg(proc.pid, signal.SIGINT)

def finish(proc: subprocess.Popen, timeout: float = 60) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(proc)
        raise
    return proc.returncode, out


@pytest.mark.parametrize(
    ("cluster", "rest", "expected"),
    [("exit 0", "exit 0", 0), ("exit 0", "exit 1", 1), ("exit 1", "exit 0", 1), ("exit 0", "crash", 137),
     ("crash", "exit 0", 137), ("exit 5", "exit 0", 0), ("exit 5", "exit 5", 5), ("exit 2", "exit 5", 2)],
)
def test_both_parts_exit_codes_propagate_and_the_background_output_is_shown(ci, cluster, rest, expected):
    rc, out = finish(ci(cluster=cluster, rest=rest))
    assert rc == expected, out
    for tag in SESSIONS:
        assert f"{tag.upper()}-OUTPUT" in out, out


SESSIONS = ("rest", "cluster-alone", "cluster-1of2", "cluster-2of2")
"""Every pytest session of a .ci/run with ZT_CI_CLUSTER_SHARDS=2 (the fake's tags)."""


def events(ci) -> list[str]:
    return (ci.state / "events").read_text().splitlines()


def test_the_alone_phase_runs_beside_the_no_cluster_part_and_ends_before_any_shard_starts(ci):
    # Each `await` ends (rc 0) only once the sessions it names have started, 3 after 30 s:
    # the no-cluster part runs beside the alone phase and the shards, the shards side by side.
    rc, out = finish(ci(rest="await cluster-alone cluster-1of2 cluster-2of2", cluster_1of2="await cluster-2of2",
                        cluster_2of2="await cluster-1of2"))
    assert rc == 0, out
    seen = events(ci)
    alone_end = seen.index("end cluster-alone")
    assert seen.index("start cluster-1of2") > alone_end and seen.index("start cluster-2of2") > alone_end, seen


@pytest.mark.parametrize("failing", SESSIONS)
def test_each_sessions_exit_code_counts_and_every_sessions_output_is_shown(ci, failing):
    rc, out = finish(ci(**{failing.replace("-", "_"): "exit 1"}))
    assert rc == 1, out
    for tag in SESSIONS:
        assert f"{tag.upper()}-OUTPUT" in out, out
    # A failed alone phase does not stop the shards: every test still runs and reports.
    assert {f"start {tag}" for tag in SESSIONS} <= set(events(ci)), events(ci)


def test_the_shards_are_the_number_asked_for_each_with_the_extra_arguments(ci):
    rc, out = finish(ci(shards="3", args=("-k", "relay")))
    assert rc == 0, out
    sessions = [line for line in (ci.state / "calls").read_text().splitlines() if "--part=" in line]
    assert sorted(sessions) == sorted([
        "-m pytest --with-e2e -p no:cacheprovider -rs --part=no-cluster -n 3 --dist loadgroup -k relay",
        "-m pytest --with-e2e -p no:cacheprovider -rs --part=cluster --phase=alone -k relay",
        *(f"-m pytest --with-e2e -p no:cacheprovider -rs --part=cluster --phase=shared --shard={k}/3 -k relay"
          for k in (1, 2, 3)),
    ]), sessions


@pytest.mark.parametrize("backend", [("--cluster=kind",), ("--cluster", "existing"), ("--durations=5", "--cluster=kind"),
                                     ("--cluster=kind", "--cluster=local")])
def test_another_backend_runs_the_cluster_part_as_one_session(ci, backend):
    """The phases and shards are the local cluster's: on kind every session creates the one kind
    cluster if it is missing and deletes it at its end (e2e/conftest.py's `cluster`), so a shard
    that ended first deleted it under the others (and the alone phase under all of them); on a
    user's cluster (existing) nothing holds it for the sessions. Another backend's cluster part
    is one session, as before the phases."""
    rc, out = finish(ci(shards="3", args=backend))
    assert rc == 0, out
    sessions = [line for line in (ci.state / "calls").read_text().splitlines() if "--part=" in line]
    extra = " ".join(backend)
    if backend[-1] == "--cluster=local":  # the last one wins, as in pytest
        cluster = [f"--part=cluster --phase=alone {extra}", *(f"--part=cluster --phase=shared --shard={k}/3 {extra}" for k in (1, 2, 3))]
    else:
        cluster = [f"--part=cluster {extra}"]
    assert sorted(sessions) == sorted([
        f"-m pytest --with-e2e -p no:cacheprovider -rs --part=no-cluster -n 3 --dist loadgroup {extra}",
        *(f"-m pytest --with-e2e -p no:cacheprovider -rs {c}" for c in cluster),
    ]), sessions
    assert "REST-OUTPUT" in out and ("CLUSTER-OUTPUT" in out or "CLUSTER-ALONE-OUTPUT" in out), out


@pytest.mark.parametrize("shards", ["0", "two", "1/2"])
def test_a_bad_shard_count_is_refused_naming_the_variable_before_anything_runs(ci, shards):
    rc, out = finish(ci(shards=shards))
    assert rc == 2 and f"ZT_CI_CLUSTER_SHARDS={shards}:" in out, out
    assert not (ci.state / "calls").exists(), (ci.state / "calls").read_text()


def test_the_parts_write_bytecode_caches_whatever_the_callers_environment_says(ci):
    """PYTHONDONTWRITEBYTECODE in the caller's environment (this machine sets it) would make
    every interpreter the tests start (the xdist workers, the pytest runs some tests make,
    each relay process) compile the project's sources again, and pytest rewrite every test
    module's asserts again: most of a collection's CPU. Both parts run without it."""
    rc, out = finish(ci())
    assert rc == 0, out
    for tag in SESSIONS:
        assert (ci.state / f"{tag}.env").read_text() == "None", out


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


OLD_ENV = """#!/bin/sh
# env of coreutils < 8.31 (Ubuntu 20.04's 8.30): no --default-signal.
case "$1" in --default-signal*) echo "env: unrecognized option '$1'" >&2; exit 125;; esac
exec /usr/bin/env "$@"
"""


@pytest.mark.parametrize("how", ["SIGTERM to .ci/run", "Ctrl-C (SIGINT to its process group)",
                                 "SIGTERM to .ci/run started with SIGINT ignored (a background job)",
                                 "SIGTERM to .ci/run started with SIGINT ignored (a background job), coreutils < 8.31"])
def test_an_early_exit_stops_the_background_part_with_its_teardown_and_shows_its_output(ci, how):
    """.ci/run interrupted while the no-cluster part still runs: that part, and each of its
    pytest-xdist workers (where the fixtures are), gets pytest's KeyboardInterrupt (its fixtures'
    teardown: containers, relays; a SIGINT to the controller alone kills the workers without
    it), is waited for, its output
    shown, and the run fails. Also when .ci/run itself started with SIGINT ignored, which bash
    cannot undo (`trap - INT` leaves a signal ignored at entry ignored) and pytest inherits."""
    ignored = "(a background job)" in how
    if how.endswith("coreutils < 8.31"):
        (ci.state.parent / "bin" / "env").write_text(OLD_ENV)
        (ci.state.parent / "bin" / "env").chmod(0o755)
    proc = ci(cluster="exit 0", rest="hang", sigint=signal.SIG_IGN if ignored else signal.SIG_DFL)
    rest_pid = wait_for(ci.state / "rest.pid")
    # Whether .ci/run is still in the cluster part (it finishes that first) or already waits on
    # the background part, the checks below hold.
    interrupt(proc, how)
    rc, out = finish(proc)
    assert rc != 0, out
    assert "REST-TEARDOWN" in out, out
    assert "WORKER-TEARDOWN" in out, out  # the part's xdist workers got the SIGINT too
    assert "REST-OUTPUT" in out, out
    assert not alive(rest_pid), out
    assert ("needs coreutils >= 8.31" in out) == how.endswith("coreutils < 8.31"), out


@pytest.mark.parametrize("how", ["SIGTERM to .ci/run", "Ctrl-C (SIGINT to its process group)"])
def test_an_early_exit_stops_every_cluster_shard_with_its_teardown_and_shows_each_ones_output(ci, how):
    proc = ci(cluster="hang", cluster_alone="exit 0", rest="hang")
    pids = [wait_for(ci.state / f"{tag}.pid") for tag in ("cluster-1of2", "cluster-2of2", "rest")]
    interrupt(proc, how)
    rc, out = finish(proc)
    assert rc != 0, out
    for tag in ("CLUSTER-1OF2", "CLUSTER-2OF2", "REST"):
        assert f"{tag}-TEARDOWN" in out and f"{tag}-OUTPUT" in out, out
    assert not any(alive(pid) for pid in pids), out


def test_an_early_exit_in_the_alone_phase_stops_it_and_starts_no_shard(ci):
    proc = ci(cluster="hang", rest="hang")
    # Both sessions started (each writes its pid once its handlers are set): a signal before the
    # no-cluster fake got there interrupted its start-up, and no teardown of it was printed.
    alone, rest = wait_for(ci.state / "cluster-alone.pid"), wait_for(ci.state / "rest.pid")
    proc.send_signal(signal.SIGTERM)
    rc, out = finish(proc)
    assert rc != 0, out
    assert "CLUSTER-ALONE-TEARDOWN" in out and "REST-TEARDOWN" in out, out
    assert not alive(alone) and not alive(rest), out
    assert not any(line.startswith("start cluster-") and "alone" not in line for line in events(ci)), events(ci)


def run_venv(ci) -> None:
    run = subprocess.run(["bash", str(ci.root / ".ci" / "venv")], env=ci.env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


def calls(ci, part: str) -> int:
    return sum(part in line for line in (ci.state / "calls").read_text().splitlines())


def test_the_venv_is_a_copy_of_a_template_built_once_per_lock(ci):
    """.ci/venv: the locked dependencies are installed once per lock into a template in the
    per-user cache; each run's .venv is a hard-linked copy naming its own directory, with the
    project installed into it; a changed lock gets a new template, not the old one."""
    run_venv(ci)
    run_venv(ci)
    assert calls(ci, "-m venv") == 1 and calls(ci, "-r .ci/requirements.lock") == 1
    assert calls(ci, "-e .[operator,test]") == 2
    (template,) = [p for p in ci.cache.iterdir() if not p.name.startswith(".")]
    venv = ci.root / ".venv"
    assert (venv / "pyvenv.cfg").read_text() == f"command = python3 -m venv {venv}\n"
    assert str(ci.cache) in (template / "pyvenv.cfg").read_text()  # the template keeps its own
    assert (venv / "bin" / "python").stat().st_ino == (template / "bin" / "python").stat().st_ino

    (ci.root / ".ci" / "requirements.lock").write_text("fake==2\n")
    run_venv(ci)
    assert calls(ci, "-m venv") == 2 and calls(ci, "-r .ci/requirements.lock") == 2
    assert len([p for p in ci.cache.iterdir() if not p.name.startswith(".")]) == 2


def gone(pid: int) -> bool:
    """Exited: no such process, or a zombie waiting for its (new) parent to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def test_a_run_that_outlives_its_timeout_is_stopped_with_everything_it_started(ci):
    """A `.ci/run` that hangs past `finish`'s timeout: the test fails with TimeoutExpired, and
    neither .ci/run (a Popen never waited for: a ResourceWarning in a later test) nor its pytest
    parts (their own sessions' children, in its process group) outlive it."""
    proc = ci(cluster="hang", rest="hang")
    cluster_pid, rest_pid = wait_for(ci.state / "cluster-alone.pid"), wait_for(ci.state / "rest.pid")
    with pytest.raises(subprocess.TimeoutExpired):
        finish(proc, timeout=0.5)
    assert proc.returncode is not None  # waited for
    deadline = time.monotonic() + 30
    while not (gone(cluster_pid) and gone(rest_pid)):
        assert time.monotonic() < deadline, "a pytest part of .ci/run outlived it"
        time.sleep(0.05)


def test_a_second_run_in_the_same_clone_refuses_and_leaves_the_first_ones_venv(ci):
    """Two `.ci/run`s in one clone: the second would replace `.venv` (`.ci/venv`) under the first
    one's running tests before either reaches the cluster's lock. It refuses at once instead,
    naming the clone, and the first one runs on with its `.venv` untouched."""
    first = ci(cluster="hang")
    wait_for(ci.state / "cluster-alone.pid")
    venv = ci.root / ".venv"
    marker = venv / "first-run"
    marker.write_text("mine")
    rc, out = finish(ci(), timeout=30)
    assert rc != 0 and "another .ci/run" in out and str(ci.root) in out, out
    assert marker.read_text() == "mine", "the second run replaced the first one's .venv"
    assert first.poll() is None, "the first run stopped"
    os.killpg(first.pid, signal.SIGINT)
    rc, out = finish(first)
    assert rc != 0 and "CLUSTER-ALONE-OUTPUT" in out, out


PAUSING_CP = """#!/bin/sh
# cp for the clone named in ZTR_PAUSE_IN: says it copies, then waits for the test's go.
if [ "$PWD" = "$ZTR_PAUSE_IN" ]; then
  echo $$ > "$ZTR_FAKE_STATE/copying"
  i=0
  while [ ! -e "$ZTR_FAKE_STATE/go" ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i + 1)); done
fi
exec /bin/cp "$@"
"""


def test_the_old_templates_cleanup_never_removes_a_template_a_run_is_copying(ci, tmp_path):
    """The two-week cleanup of templates (`find -mtime +14 -exec rm -rf`) in one clone's
    .ci/venv raced another clone's .ci/venv still using that template: its `find` saw the
    template old just before the other run's `touch`, then removed it under that run's copy.
    Here run A copies from its template, paused; the template is made old again (as that
    `find` saw it) and run B, of another lock, cleans up: A's template must survive."""
    run_venv(ci)
    (template,) = [p for p in ci.cache.iterdir() if not p.name.startswith(".")]
    month_ago = time.time() - 30 * 86400
    (ci.state.parent / "bin" / "cp").write_text(PAUSING_CP)
    (ci.state.parent / "bin" / "cp").chmod(0o755)
    a = subprocess.Popen(["bash", str(ci.root / ".ci" / "venv")], env={**ci.env, "ZTR_PAUSE_IN": str(ci.root)},
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(ci.state / "copying")
        os.utime(template, (month_ago, month_ago))
        other = tmp_path / "other-clone"
        (other / ".ci").mkdir(parents=True)
        for script in ("run", "venv"):
            shutil.copy2(ci.root / ".ci" / script, other / ".ci" / script)
        (other / ".ci" / "requirements.lock").write_text("fake==2\n")
        b = subprocess.run(["bash", str(other / ".ci" / "venv")], env=ci.env, capture_output=True, text=True, timeout=60)
        assert b.returncode == 0, b.stdout + b.stderr
        assert template.is_dir(), "the cleanup removed the template a run was copying from"
        os.utime(template)  # it was old in that stale view only: A touched it before copying
    finally:
        (ci.state / "go").touch()
        out, _ = a.communicate(timeout=60)
    assert a.returncode == 0, out
    assert (ci.root / ".venv" / "bin" / "python").stat().st_ino == (template / "bin" / "python").stat().st_ino


def test_an_old_template_no_run_uses_is_removed(ci):
    run_venv(ci)
    (template,) = [p for p in ci.cache.iterdir() if not p.name.startswith(".")]
    (ci.root / ".ci" / "requirements.lock").write_text("fake==2\n")
    month_ago = time.time() - 30 * 86400
    os.utime(template, (month_ago, month_ago))
    run_venv(ci)
    assert not template.exists()
    assert len([p for p in ci.cache.iterdir() if not p.name.startswith(".")]) == 1
    assert (ci.root / ".venv" / "bin" / "python").is_file()


def _session_logs(ci) -> list[Path]:
    return sorted(p for p in Path(ci.env["TMPDIR"]).rglob("zt-relay-ci-*") if p.is_file())  # the clone is inside it


def test_a_killed_runs_session_logs_are_removed_by_the_next_run(ci):
    """SIGKILL leaves .ci/run no chance to remove its sessions' output files; they live in the
    clone (one run at a time there), and the next run there removes them."""
    proc = ci(cluster_alone="hang", rest="hang")
    wait_for(ci.state / "cluster-alone.pid")
    wait_for(ci.state / "rest.pid")
    left = _session_logs(ci)
    assert len(left) == 2 and all(ci.root in p.parents for p in left), left
    os.killpg(proc.pid, signal.SIGKILL)  # .ci/run and its sessions: no trap runs
    proc.wait()
    assert _session_logs(ci) == left
    rc, out = finish(ci())
    assert rc == 0, out
    assert _session_logs(ci) == [], out
