"""Put images into the local cluster's containerd (namespace k8s.io), where pods find them.

There is no registry: pods must use a non-`latest` tag with `imagePullPolicy: IfNotPresent`
(or `Never`). The kubelet is configured never to garbage-collect images.
"""

import contextlib
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from e2e.cluster import locks, paths
from e2e.cluster.configs import StatePaths

IMPORT_LOCK = Path("/run/zt-relay-e2e.images")
"""Held while a session looks an image up and imports it: concurrent sessions (`.ci/run`'s
shards) load the same images, and the second then finds the first's import."""


def importing():
    """Held around a look-up and import (here and e2e/conftest.py's busybox image)."""
    return locks.exclusive(IMPORT_LOCK)


def _ctr(*args: str) -> list[str]:
    sock = StatePaths(paths.state_dir()).containerd_socket
    return ["ctr", "--address", str(sock), "--namespace", "k8s.io", *args]


def import_archive(archive: bytes, timeout: float = 300) -> None:
    """Import a `docker save`-format tar (bytes)."""
    subprocess.run(_ctr("images", "import", "-"), input=archive, check=True, capture_output=True, timeout=timeout)


DOCKER_ID_LABEL = "org.zt-relay.docker-id"
"""containerd image label: the Docker image id it was imported from (skip re-imports)."""


def docker_image_id(tag: str) -> str | None:
    proc = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", tag], capture_output=True, text=True, timeout=30)
    return proc.stdout.strip() if proc.returncode == 0 else None


def _ref(tag: str) -> str:
    """The kubelet's normalised name of a short Docker reference."""
    return tag if "/" in tag.split(":")[0] and "." in tag.split("/")[0] else f"docker.io/{tag if '/' in tag else 'library/' + tag}"


def imported_from(tag: str) -> str | None:
    """The Docker image id `tag` was imported from (None: absent, or imported otherwise)."""
    out = subprocess.run(_ctr("images", "ls"), capture_output=True, text=True, check=True).stdout
    for line in out.splitlines()[1:]:
        fields = line.split()
        if fields and fields[0] == _ref(tag):
            for label in fields[-1].split(","):
                key, _, value = label.partition("=")
                if key == DOCKER_ID_LABEL:
                    return value
    return None


def _source(tag: str, pin) -> tuple[str, str | None]:
    """(the Docker name to save, the image id it names): ``pin`` (e2e.images.pinned) is this
    session's own build of `tag`, which another checkout may have rebuilt since (one tag for
    every checkout on the machine)."""
    return (pin.source, pin.image_id) if pin is not None else (tag, docker_image_id(tag))


def ensure_docker_image(tag: str, timeout: float = 600, pin=None) -> bool:
    """Import `tag` (or `pin`'s image under the name `tag`) unless containerd already holds
    this very Docker image; True if imported."""
    source, image_id = _source(tag, pin)
    if image_id is None:
        raise RuntimeError(f"Docker has no image {tag!r}")
    with importing():
        if imported_from(tag) == image_id:
            return False
        import_docker_image(tag, timeout, source=source)
        label_imported(tag, image_id)
    return True


def _rename(source: str, tag: str, ctr=_ctr) -> None:
    """containerd's image imported as `source` is `tag` (which pods name); `source` goes.
    `ctr`: the argv of a `ctr` command in namespace k8s.io (default: the local cluster's)."""
    if source == tag:
        return
    subprocess.run(ctr("images", "tag", "--force", _ref(source), _ref(tag)), check=True, capture_output=True)
    subprocess.run(ctr("images", "rm", _ref(source)), check=True, capture_output=True)


def load_into_kind(kind, tag: str, loaded: dict[str, str], pin=None) -> None:
    """`kind load docker-image` of `tag` (or `pin`'s image, named `tag` on the node, as for
    ensure_docker_image) unless `loaded` (tag -> Docker image id, the session's) says this
    very image is there. `kind`: pytest_kind's KindCluster (one node, its default)."""
    source, image_id = _source(tag, pin)
    if image_id is None:
        raise RuntimeError(f"Docker has no image {tag!r}")
    if loaded.get(tag) == image_id:
        return
    kind.load_docker_image(source)
    node = f"{kind.name}-control-plane"
    _rename(source, tag, ctr=lambda *args: ["docker", "exec", node, "ctr", "--namespace", "k8s.io", *args])
    loaded[tag] = image_id


def label_imported(tag: str, image_id: str) -> None:
    """Mark containerd's `tag` as imported from Docker's `image_id` (see imported_from)."""
    subprocess.run(_ctr("images", "label", _ref(tag), f"{DOCKER_ID_LABEL}={image_id}"), check=True, capture_output=True)


PREFETCH_DIR = paths.cache_root() / "images"
"""Where import_as_soon_as_containerd_answers keeps its `docker save` until the import (on
disk, beside the image build's lock: an image is hundreds of MB)."""


def containerd_answers() -> bool:
    sock = StatePaths(paths.state_dir()).containerd_socket
    if not sock.exists():
        return False
    argv = ["ctr", "--address", str(sock), "version"]
    try:
        return subprocess.run(argv, capture_output=True, timeout=5).returncode == 0
    except subprocess.TimeoutExpired:
        return False


class GaveUp(Exception):
    """A `give_up()` stopped a `docker save` here or a wait for the image build's lock
    (e2e.images): what it was for no longer holds (`up` failed, the session ended)."""


def save_docker_image(tag: str, path: Path, timeout: float = 600, give_up=lambda: False, poll: float = 0.2) -> None:
    """`docker save -o path tag`; stopped (GaveUp) as soon as give_up() says so: left running, it
    writes hundreds of MB on after the session that wanted them has ended."""
    errors = path.with_name(path.name + ".stderr")
    with open(errors, "wb") as err, subprocess.Popen(
        ["docker", "save", "-o", str(path), tag], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
    ) as proc:
        deadline = time.monotonic() + timeout
        while True:
            try:
                proc.wait(poll)
                break
            except subprocess.TimeoutExpired:
                stop = "gave up" if give_up() else "timed out" if time.monotonic() > deadline else None
                if stop:
                    proc.kill()
                    proc.wait()
                    if stop == "gave up":
                        raise GaveUp() from None
                    raise RuntimeError(f"docker save {tag} took over {timeout:.0f} s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"docker save {tag} failed: {errors.read_text(errors='replace').strip()}")


def import_archive_file(path: Path, timeout: float = 600) -> None:
    with open(path, "rb") as archive:
        proc = subprocess.run(_ctr("images", "import", "-"), stdin=archive, capture_output=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"ctr images import of {path} failed: {proc.stderr.decode(errors='replace').strip()}")


@contextlib.contextmanager
def _prefetch_lock():
    """One prefetch on the machine at a time (two sessions starting at once would save the
    same image twice); its holder removes every `prefetch-*` left in PREFETCH_DIR: none is in
    use, so each is a killed session's (SIGKILL: no cleanup), hundreds of MB for good."""
    with locks.exclusive(PREFETCH_DIR / "prefetch.lock"):
        for stale in PREFETCH_DIR.glob("prefetch-*"):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
        yield


UP_FAILED = "gave up: `up` returned and containerd does not answer"


def up_failed(up_returned: threading.Event):
    """A check of whether `up` returned with no containerd answering (asked once it returned:
    a `ctr` each poll would cost more than what it guards)."""
    dead: list[bool] = []

    def check() -> bool:
        if up_returned.is_set() and not dead:
            dead.append(not containerd_answers())
        return bool(dead) and dead[0]

    return check


def import_as_soon_as_containerd_answers(tag: str, up_returned: threading.Event, poll: float = 0.2, pin=None) -> str:
    """Put Docker's `tag` into the cluster while `up` is still starting it, and say what happened.

    The import of a fresh cluster's project image (hundreds of MB: `docker save`, then
    containerd's ingest and unpack) took 29 s after `up` on a loaded machine, and `up` itself
    waits ~25 s for the API server and ~13 s for the components after containerd. Here the
    `docker save` runs beside the API server's start, the import as soon as containerd
    answers, beside the kubelet, DNS and metrics-server. Same check, lock and label as
    ensure_docker_image: the first test's load_image then finds it and imports nothing (and
    redoes it, with its own error, if this failed). Gives up if `up` returned (failed) with
    no containerd answering. `pin`: as for ensure_docker_image.
    """
    source, image_id = _source(tag, pin)
    if image_id is None:
        return f"Docker has no image {tag!r}"
    if containerd_answers() and imported_from(tag) == image_id:
        return "already imported"  # a cluster that was up already
    gave_up = UP_FAILED
    PREFETCH_DIR.mkdir(parents=True, exist_ok=True)
    with _prefetch_lock(), tempfile.TemporaryDirectory(dir=PREFETCH_DIR, prefix="prefetch-") as tmp:
        archive = Path(tmp) / "image.tar"
        try:
            save_docker_image(source, archive, give_up=up_failed(up_returned), poll=poll)
        except GaveUp:
            return gave_up
        while not containerd_answers():
            if up_returned.wait(poll) and not containerd_answers():
                return gave_up
        with importing():
            if imported_from(tag) == image_id:
                return "already imported"
            import_archive_file(archive)
            _rename(source, tag)
            label_imported(tag, image_id)
    return "imported"


def import_docker_image(tag: str, timeout: float = 600, source: str | None = None) -> None:
    """`docker save TAG | ctr images import -`: a Docker image built here, into the cluster
    (Docker's `source` instead, named `tag` in containerd).

    Raises ValueError for a `latest` or untagged reference (it would be pulled, and fail).
    """
    source = source or tag
    name, _, version = tag.rpartition(":")
    if not name or "/" in version or version in ("", "latest"):
        raise ValueError(f"image {tag!r}: give an explicit, non-latest tag (pods cannot pull it back)")
    # The context manager closes both pipes and waits for `docker save`.
    with subprocess.Popen(["docker", "save", source], stdout=subprocess.PIPE, stderr=subprocess.PIPE) as save:
        imp = subprocess.run(_ctr("images", "import", "-"), stdin=save.stdout, capture_output=True, timeout=timeout)
        save.stdout.close()
        save_err = save.stderr.read().decode(errors="replace")
    if save.returncode != 0:
        raise RuntimeError(f"docker save {source} failed: {save_err.strip()}")
    if imp.returncode != 0:
        raise RuntimeError(f"ctr images import of {source} failed: {imp.stderr.decode(errors='replace').strip()}")
    _rename(source, tag)


def has_image(tag: str) -> bool:
    """True if containerd holds `tag` (short Docker names are normalised like the kubelet does)."""
    ref = _ref(tag)
    out = subprocess.run(_ctr("images", "ls", "-q"), capture_output=True, text=True, check=True).stdout
    return ref in out.split()
