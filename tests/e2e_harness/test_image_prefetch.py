"""e2e.cluster.image_import.import_as_soon_as_containerd_answers: the session's project image
goes into the cluster while `up` is still starting it (`docker save` beside the API server's
start, the import as soon as containerd answers), under the same check and lock as
ensure_docker_image, which then finds it and imports nothing."""

import os
import signal
import threading
import time
from pathlib import Path

from e2e.cluster import image_import

TAG = "zt-relay:0.1.0-dev"
ORIGINAL_SAVE = image_import.save_docker_image
BOUND = 30.0  # generous: every wait below ends on its condition long before


def fake_containerd(monkeypatch, *, answers: bool, imported: str | None = None):
    """containerd (answering or not) and Docker (image id "sha256:new"), recording each step."""
    steps: list[str] = []
    state = {"answers": answers, "imported": imported, "saved": threading.Event()}
    monkeypatch.setattr(image_import, "docker_image_id", lambda tag: "sha256:new")
    monkeypatch.setattr(image_import, "containerd_answers", lambda: state["answers"])
    monkeypatch.setattr(image_import, "imported_from", lambda tag: state["imported"])

    def save(tag, path, **_):
        steps.append(f"save {tag} answers={state['answers']}")
        path.write_bytes(b"archive")
        state["saved"].set()

    def import_file(path):
        steps.append(f"import {path.read_bytes().decode()} answers={state['answers']}")

    def label(tag, image_id):
        steps.append(f"label {image_id}")
        state["imported"] = image_id

    monkeypatch.setattr(image_import, "save_docker_image", save)
    monkeypatch.setattr(image_import, "import_archive_file", import_file)
    monkeypatch.setattr(image_import, "label_imported", label)
    monkeypatch.setattr(image_import, "importing", lambda: threading.Lock())
    return steps, state


def test_the_image_is_saved_before_containerd_answers_and_imported_once_it_does(monkeypatch, tmp_path):
    monkeypatch.setattr(image_import, "PREFETCH_DIR", tmp_path)
    steps, state = fake_containerd(monkeypatch, answers=False)
    up_returned = threading.Event()
    outcome: list[str] = []
    thread = threading.Thread(target=lambda: outcome.append(
        image_import.import_as_soon_as_containerd_answers(TAG, up_returned, poll=0.01)))
    thread.start()
    # containerd starts while `up` goes on: the import follows, `up` has not returned yet.
    assert state["saved"].wait(BOUND)
    state["answers"] = True
    thread.join(BOUND)
    assert outcome == ["imported"]
    assert steps == [f"save {TAG} answers=False", "import archive answers=True", "label sha256:new"]
    assert [p.name for p in tmp_path.iterdir()] == ["prefetch.lock"]  # the saved archive is not kept
    # The first test's load_image then imports nothing.
    monkeypatch.setattr(image_import, "import_docker_image", lambda tag, timeout: steps.append("imported again"))
    assert image_import.ensure_docker_image(TAG) is False
    assert steps[-1] == "label sha256:new"


def test_an_image_already_in_containerd_is_not_saved_again(monkeypatch, tmp_path):
    monkeypatch.setattr(image_import, "PREFETCH_DIR", tmp_path)
    steps, _ = fake_containerd(monkeypatch, answers=True, imported="sha256:new")
    assert image_import.import_as_soon_as_containerd_answers(TAG, threading.Event(), poll=0.01) == "already imported"
    assert steps == []


def test_it_gives_up_when_up_returned_and_containerd_never_answered(monkeypatch, tmp_path):
    monkeypatch.setattr(image_import, "PREFETCH_DIR", tmp_path)
    steps, _ = fake_containerd(monkeypatch, answers=False)
    up_returned = threading.Event()
    up_returned.set()  # `up` failed
    outcome = image_import.import_as_soon_as_containerd_answers(TAG, up_returned, poll=0.01)
    assert outcome == "gave up: `up` returned and containerd does not answer"
    assert steps == [f"save {TAG} answers=False"]
    assert [p.name for p in tmp_path.iterdir()] == ["prefetch.lock"]


def fake_docker(tmp_path, monkeypatch):
    """A `docker` on PATH whose `save` writes part of the archive, records its pid, then goes on
    until the file `go` exists (a big image on a loaded machine)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    pid_file = tmp_path / "save.pid"
    (bin_dir / "docker").write_text(
        f'#!/bin/sh\n[ "$1" = save ] || exit 1\necho $$ > {pid_file}\necho partial > "$3"\nuntil [ -e {tmp_path}/go ]; do sleep 0.05; done\n')
    (bin_dir / "docker").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return pid_file


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def _prefetch_while_saving(up_returned: threading.Event, pid_file: Path) -> tuple[threading.Thread, list[str]]:
    """The prefetch in a thread (its outcome appended to the list), once the fake `docker
    save` it started has written its pid."""
    outcome: list[str] = []
    thread = threading.Thread(target=lambda: outcome.append(
        image_import.import_as_soon_as_containerd_answers(TAG, up_returned, poll=0.01)), daemon=True)
    thread.start()
    deadline = time.monotonic() + BOUND
    while not (pid_file.exists() and pid_file.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.01)
    return thread, outcome


def test_a_docker_save_under_way_is_stopped_when_up_failed(monkeypatch, tmp_path):
    # `up` fails while `docker save` runs: the save is stopped and its partial archive removed
    # at once, not left writing hundreds of MB after the session (an orphan once pytest exits).
    prefetch = tmp_path / "prefetch"
    monkeypatch.setattr(image_import, "PREFETCH_DIR", prefetch)
    pid_file = fake_docker(tmp_path, monkeypatch)
    monkeypatch.setattr(image_import, "docker_image_id", lambda tag: "sha256:new")
    monkeypatch.setattr(image_import, "containerd_answers", lambda: False)
    up_returned = threading.Event()
    thread, outcome = _prefetch_while_saving(up_returned, pid_file)
    pid = int(pid_file.read_text())
    try:
        up_returned.set()  # `up` failed
        thread.join(BOUND)
        assert not thread.is_alive(), "still saving after `up` failed"
        assert outcome == ["gave up: `up` returned and containerd does not answer"]
        assert not _alive(pid)
        assert [p for p in prefetch.iterdir() if p.name.startswith("prefetch-")] == []
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_a_killed_sessions_archive_is_removed_by_the_next_one(monkeypatch, tmp_path):
    # A session killed mid-save (SIGKILL: no cleanup) leaves its prefetch dir behind; the next
    # prefetch removes it (hundreds of MB each, forever otherwise).
    monkeypatch.setattr(image_import, "PREFETCH_DIR", tmp_path)
    stale = tmp_path / "prefetch-dead"
    stale.mkdir()
    (stale / "image.tar").write_bytes(b"partial")
    keep = tmp_path / "build.lock"  # images.CACHE_DIR's own files are not ours to touch
    keep.write_text("")
    fake_containerd(monkeypatch, answers=True, imported="sha256:old")
    assert image_import.import_as_soon_as_containerd_answers(TAG, threading.Event(), poll=0.01) == "imported"
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == []
    assert keep.exists()


def test_a_docker_save_under_way_goes_on_when_up_succeeded(monkeypatch, tmp_path):
    monkeypatch.setattr(image_import, "PREFETCH_DIR", tmp_path / "prefetch")
    pid_file = fake_docker(tmp_path, monkeypatch)
    steps, state = fake_containerd(monkeypatch, answers=False)
    monkeypatch.setattr(image_import, "save_docker_image", ORIGINAL_SAVE)
    up_returned = threading.Event()
    thread, outcome = _prefetch_while_saving(up_returned, pid_file)
    asked = threading.Event()
    monkeypatch.setattr(image_import, "containerd_answers", lambda: asked.set() or state["answers"])
    state["answers"] = True
    up_returned.set()  # `up` is done, containerd answers: the save is still wanted
    assert asked.wait(BOUND)  # the give-up check looked (and must say no)
    assert thread.is_alive()
    (tmp_path / "go").touch()
    thread.join(BOUND)
    assert outcome == ["imported"]
    assert steps == ["import partial\n answers=True", "label sha256:new"]


class _Item:
    def __init__(self, *fixturenames: str):
        self.fixturenames = fixturenames


class _Session:
    def __init__(self, *items: _Item):
        self.items = items


def test_only_a_session_that_uses_the_project_image_puts_it_in_early(monkeypatch):
    # A session of busybox tests (load_image, not the project's `image`) has no use for
    # hundreds of MB of `docker save` and import on a 2-core machine.
    from e2e import conftest, images

    monkeypatch.setattr(images, "build_image", lambda give_up: TAG)
    monkeypatch.setattr(image_import, "import_as_soon_as_containerd_answers", lambda tag, up_returned, pin: f"imported {tag}")
    monkeypatch.setattr(conftest, "PREFETCH_OUTCOME", [])
    busybox = _Session(_Item("cluster", "load_image", "busybox_image"))
    assert conftest._prefetch_project_image(busybox, threading.Event()) is None
    project = _Session(_Item("cluster", "busybox_image"), _Item("cluster", "image", "load_image"))
    thread = conftest._prefetch_project_image(project, threading.Event())
    assert thread is not None
    thread.join(BOUND)
    assert conftest.PREFETCH_OUTCOME == [f"imported {TAG}"]


def _prefetch_behind_a_held_build_lock(monkeypatch, tmp_path, session_over=None):
    """The session's prefetch, waiting for the image build's lock (another checkout's build
    holds it: a subprocess): (thread, up_returned, the holder)."""
    import fcntl
    import subprocess
    import sys
    from types import SimpleNamespace

    from e2e import conftest, images
    from tests.e2e_harness.test_image_build_lock import HOLDER, ROOT, fake_inputs

    fake_inputs(monkeypatch, tmp_path)
    monkeypatch.setattr(images, "_run", lambda cmd, **kwargs: None)
    # A thread that never gives up ends anyway (and fails the test) before the holder lets go.
    monkeypatch.setattr(images, "BUILD_LOCK_TIMEOUT", BOUND + 5)
    waited = threading.Event()

    def flock(fd, op):
        try:
            return fcntl.flock(fd, op)
        except BlockingIOError:
            waited.set()
            raise

    monkeypatch.setattr(images, "fcntl", SimpleNamespace(**{n: getattr(fcntl, n) for n in dir(fcntl) if n.isupper()},
                                                          flock=flock))
    monkeypatch.setattr(image_import, "containerd_answers", lambda: False)
    monkeypatch.setattr(conftest, "PREFETCH_OUTCOME", [])
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    up_returned = threading.Event()
    project = _Session(_Item("cluster", "image", "load_image"))
    args = (project, up_returned) if session_over is None else (project, up_returned, session_over)
    thread = conftest._prefetch_project_image(*args)
    assert waited.wait(BOUND)  # behind the lock
    return thread, up_returned, holder


def _release(thread, holder):
    thread.join(BOUND + 10)
    holder.stdin.close()
    assert holder.wait(timeout=BOUND) == 0
    holder.stdout.close()


def test_the_prefetch_behind_another_build_gives_up_when_up_failed(monkeypatch, tmp_path):
    # The session's finalizer joins the prefetch for up to 60 s: a prefetch waiting behind the
    # build lock (up to its 1800 s) held a failed session that long, then ran on unwatched.
    from e2e import conftest

    thread, up_returned, holder = _prefetch_behind_a_held_build_lock(monkeypatch, tmp_path)
    try:
        up_returned.set()  # `up` failed: containerd does not answer
        thread.join(BOUND)
        assert not thread.is_alive(), "still waiting for the build lock after `up` failed"
        assert conftest.PREFETCH_OUTCOME == ["gave up: `up` returned and containerd does not answer"]
    finally:
        _release(thread, holder)


def test_the_prefetch_behind_another_build_gives_up_when_the_session_ends(monkeypatch, tmp_path):
    from e2e import conftest

    session_over = threading.Event()
    thread, up_returned, holder = _prefetch_behind_a_held_build_lock(monkeypatch, tmp_path, session_over)
    try:
        monkeypatch.setattr(image_import, "containerd_answers", lambda: True)
        up_returned.set()  # `up` succeeded: the session wants the image; then it ends
        session_over.set()
        thread.join(BOUND)
        assert not thread.is_alive(), "still waiting for the build lock after the session ended"
        assert conftest.PREFETCH_OUTCOME == ["gave up: the session ended"]
    finally:
        _release(thread, holder)
