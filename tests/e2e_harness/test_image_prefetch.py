"""e2e.cluster.image_import.import_as_soon_as_containerd_answers: the session's project image
goes into the cluster while `up` is still starting it (`docker save` beside the API server's
start, the import as soon as containerd answers), under the same check and lock as
ensure_docker_image, which then finds it and imports nothing."""

import threading

from e2e.cluster import image_import

TAG = "zt-relay:0.1.0-dev"
BOUND = 30.0  # generous: every wait below ends on its condition long before


def fake_containerd(monkeypatch, *, answers: bool, imported: str | None = None):
    """containerd (answering or not) and Docker (image id "sha256:new"), recording each step."""
    steps: list[str] = []
    state = {"answers": answers, "imported": imported, "saved": threading.Event()}
    monkeypatch.setattr(image_import, "docker_image_id", lambda tag: "sha256:new")
    monkeypatch.setattr(image_import, "containerd_answers", lambda: state["answers"])
    monkeypatch.setattr(image_import, "imported_from", lambda tag: state["imported"])

    def save(tag, path):
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
    assert list(tmp_path.iterdir()) == []  # the saved archive is not kept
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
    assert list(tmp_path.iterdir()) == []
