"""One Docker tag, `zt-relay:0.1.0-dev`, for every checkout on the machine: a session must put
into the cluster the image it built from its own tree, even if another checkout rebuilt the
tag (its own test run, its own session) between this session's build and its import.

A fake `docker` and `ctr` (tests/e2e_harness/fake_image_cli.py) keep images by id, so the
test sees which build ends up under the tag in the "cluster"."""

import json
import os
import subprocess
import threading
from types import SimpleNamespace

import pytest

from e2e import images
from e2e.cluster import image_import
from tests.e2e_harness import fake_image_cli

TAG = images.IMAGE
REF = fake_image_cli.docker_ref(TAG)


@pytest.fixture
def fake_cli(monkeypatch, tmp_path):
    """Fake docker and ctr on PATH; this tree's build inputs are "inputs-a"."""
    store = tmp_path / "store.json"
    fake_image_cli.install(tmp_path / "bin", store)
    path = f"{tmp_path / 'bin'}:{os.environ['PATH']}"
    monkeypatch.setenv("PATH", path)
    monkeypatch.setenv("ZTR_FAKE_STORE", str(store))
    monkeypatch.setattr(images, "DOCKER_ENV", {**images.DOCKER_ENV, "PATH": path, "ZTR_FAKE_STORE": str(store)})
    monkeypatch.setattr(images, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.setattr(images, "ensure_docker", lambda: None)
    monkeypatch.setattr(images, "build_base", lambda: "base")
    monkeypatch.setattr(images, "build_wheels", lambda: None)
    monkeypatch.setattr(images, "inputs_digest", lambda base: "inputs-a")
    monkeypatch.setattr(images, "_built", set())
    monkeypatch.setattr(images, "_pins", {})  # this test's pins, not the process's (removed below)
    state = tmp_path / "state"
    (state / "containerd").mkdir(parents=True)
    (state / "containerd" / "containerd.sock").touch()  # containerd "answers" (the fake ctr)
    monkeypatch.setenv("ZT_RELAY_E2E_STATE", str(state))
    monkeypatch.setenv("ZT_RELAY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(image_import, "PREFETCH_DIR", tmp_path / "prefetch")
    lock = threading.Lock()
    monkeypatch.setattr(image_import, "importing", lambda: lock)
    yield lambda: json.loads(store.read_text())
    images.unpin_all()  # with the fake docker still on PATH


def another_checkout_rebuilds_the_tag() -> None:
    """What another tree's build_image does with other inputs: build, then prune the untagged."""
    for argv in (["docker", "build", "--label", f"{images.INPUTS_LABEL}=inputs-b", "--tag", TAG, "."],
                 ["docker", "image", "prune", "--force", "--filter", "label=org.opencontainers.image.title=zt-relay"]):
        subprocess.run(argv, check=True, env=images.DOCKER_ENV)


def built_here(store: dict) -> str:
    [image_id] = [i for i, image in store["docker"].items() if image["labels"].get(images.INPUTS_LABEL) == "inputs-a"]
    return image_id


def test_load_image_imports_this_trees_build_even_if_another_checkout_rebuilt_the_tag_since(fake_cli):
    tag = images.build_image()
    mine = image_import.docker_image_id(tag)
    another_checkout_rebuilds_the_tag()
    assert image_import.docker_image_id(TAG) != mine  # the shared tag moved
    image_import.ensure_docker_image(tag, pin=images.pinned(tag))  # the session's load_image (local backend)
    store = fake_cli()
    assert store["ctr"][REF]["id"] == mine, "the cluster got the other checkout's build"
    assert image_import.imported_from(TAG) == mine


def test_the_early_import_puts_this_trees_build_in_the_cluster_even_if_the_tag_moved(fake_cli):
    tag = images.build_image()
    mine = image_import.docker_image_id(tag)
    another_checkout_rebuilds_the_tag()
    outcome = image_import.import_as_soon_as_containerd_answers(tag, threading.Event(), poll=0.01,
                                                                pin=images.pinned(tag))
    assert outcome == "imported"
    assert fake_cli()["ctr"][REF]["id"] == mine, "the cluster got the other checkout's build"


def tags(store: dict) -> dict[str, list[str]]:
    return {image["labels"].get(images.INPUTS_LABEL, image_id): sorted(image["tags"]) for image_id, image in store["docker"].items()}


def test_the_pin_goes_at_the_sessions_end_and_a_superseded_build_with_it(fake_cli):
    tag = images.build_image()
    pin = images.pinned(tag)
    assert pin.source == f"{TAG}-pin-{images.process_identity(os.getpid())}" and pin.image_id == built_here(fake_cli())
    assert tags(fake_cli()) == {"inputs-a": sorted([TAG, pin.source])}
    another_checkout_rebuilds_the_tag()
    assert tags(fake_cli()) == {"inputs-a": [pin.source], "inputs-b": [TAG]}  # not pruned: pinned
    images.unpin_all()
    assert tags(fake_cli()) == {"inputs-b": [TAG]}  # no image left behind
    assert images.pinned(tag) is None


def test_the_pin_of_a_killed_session_is_removed_by_the_next_build_and_a_live_ones_kept(fake_cli):
    gone = subprocess.Popen(["true"])
    gone.wait()  # its pid names no process now
    ns, _, _ = images.process_identity(1).split("-")
    live = images.process_identity(1)
    reused = f"{ns}-1-{int(live.split('-')[2]) + 1}"  # pid 1, but not the process that made the pin
    elsewhere = f"{int(ns) + 1}-{gone.pid}-1"  # another pid namespace's process (a container on the same dockerd)
    another_checkout_rebuilds_the_tag()
    for name in (f"{ns}-{gone.pid}-1", live, reused, elsewhere, str(gone.pid), "1"):
        subprocess.run(["docker", "tag", TAG, f"{TAG}-pin-{name}"], check=True, env=images.DOCKER_ENV)
    images.build_image()
    # Kept: the live process's, another namespace's (not ours to judge), and an old-style pin of a live pid.
    assert tags(fake_cli())["inputs-b"] == sorted(f"{TAG}-pin-{name}" for name in (live, elsewhere, "1"))
    assert tags(fake_cli())["inputs-a"] == sorted([TAG, f"{TAG}-pin-{images.process_identity(os.getpid())}"])


class FakeKind:
    """pytest_kind's KindCluster as load_image uses it: `kind load docker-image` is a `docker save`
    imported into the node's containerd (the fake ctr's store), named as Docker names it."""

    name = "zt-relay-e2e"

    def __init__(self) -> None:
        self.loads: list[str] = []

    def load_docker_image(self, image: str) -> None:
        self.loads.append(image)
        archive = subprocess.run(["docker", "save", image], capture_output=True, check=True).stdout
        subprocess.run(["docker", "exec", f"{self.name}-control-plane", "ctr", "--namespace", "k8s.io", "images", "import", "-"],
                       input=archive, check=True)


def test_the_kind_backend_loads_this_trees_build_under_the_tag_even_if_another_checkout_rebuilt_it(fake_cli):
    from e2e import conftest

    kind = FakeKind()
    load = conftest.load_image.__wrapped__(  # the fixture's function, with a kind cluster
        SimpleNamespace(config=SimpleNamespace(getoption=lambda name: None)), SimpleNamespace(backend="kind", kind=kind))
    tag = images.build_image()
    mine = image_import.docker_image_id(tag)
    another_checkout_rebuilds_the_tag()
    assert load(tag) == tag
    store = fake_cli()
    assert store["ctr"][REF]["id"] == mine, "the cluster got the other checkout's build"
    assert list(store["ctr"]) == [REF]  # the pin's own name is not left on the node
    assert load(tag) == tag and kind.loads == [images.pinned(tag).source]  # loaded once


def test_a_process_exiting_while_its_identity_is_read_counts_as_gone(monkeypatch):
    """/proc/PID/stat of a process exiting at that moment answers ESRCH, not ENOENT."""
    def exiting(self, *args, **kwargs):
        raise ProcessLookupError(3, "No such process")

    monkeypatch.setattr(images.Path, "read_text", exiting)
    assert images.process_identity(os.getpid()) is None
