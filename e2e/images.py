"""Build the project's container image without any registry.

Nothing can be pulled here, and downloads inside ``docker build`` fail certificate
verification (the build sandbox does not trust this machine's egress CA). So:

1. the base image is a Debian ``debootstrap --variant=minbase`` root filesystem turned into
   an image with ``docker import``; its tag carries a digest of the recipe, so an existing
   tag is reused and a changed recipe builds a new one;
2. the project and all its dependencies are built as wheels on the host (``pip wheel``)
   into ``build/wheels`` (the only part of the repo the ``.dockerignore`` lets through);
3. ``docker build`` installs those wheels with ``--no-index``: nothing is downloaded.

Usage: ``python -m e2e.images build`` (prints the image tag on stdout), ``base`` (prints
the base tag), ``tag`` (prints the tag without building).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import fcntl
import hashlib
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

IMAGE = "zt-relay:0.1.0-dev"
"""The tag the pipeline builds and loads into clusters; never ``latest``, because
kubelet would then try to pull it (``imagePullPolicy: Always``) and nothing can be pulled."""

BASE_REPOSITORY = "zt-relay-base"
BASE_SUITE = "bookworm"
BASE_MIRROR = "http://deb.debian.org/debian"
# python3-venv brings ensurepip, which the builder stage uses to make the venv.
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")

WHEEL_DIR = REPO / "build" / "wheels"
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "zt-relay" / "images"

# Debian's docker.io has no buildx; the legacy builder is what works everywhere here.
DOCKER_ENV = {**os.environ, "DOCKER_BUILDKIT": "0"}


def base_tag(suite: str = BASE_SUITE, packages: tuple[str, ...] = BASE_PACKAGES, repository: str = BASE_REPOSITORY) -> str:
    """The base image tag: the suite plus a digest of the recipe, so recipes never collide."""
    recipe = "\n".join([suite, BASE_MIRROR, "minbase", *sorted(packages)])
    return f"{repository}:{suite}-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"


def _log(message: str) -> None:
    # stdout carries only the resulting tag, so scripts can capture it.
    print(f"[images] {message}", file=sys.stderr, flush=True)


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    _log("$ " + " ".join(cmd))
    return subprocess.run(cmd, check=True, **kwargs)


def image_exists(tag: str) -> bool:
    result = subprocess.run(
        ["docker", "image", "inspect", tag], capture_output=True, env=DOCKER_ENV
    )
    return result.returncode == 0


def _ensure_debootstrap() -> None:
    if shutil.which("debootstrap"):
        return
    _run(["apt-get", "update", "-qq"])
    _run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "debootstrap"],
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )


#: A real website for the fallback e2e test: Debian's nginx, made the same way as the base.
NGINX_REPOSITORY = "zt-relay-e2e-nginx"
NGINX_PACKAGES = ("nginx-light", "ca-certificates")


def build_base(packages: tuple[str, ...] = BASE_PACKAGES, repository: str = BASE_REPOSITORY) -> str:
    """Make the base image (or another minbase image of ``packages``) unless its tag
    already exists; return the tag."""
    tag = base_tag(packages=packages, repository=repository)
    if image_exists(tag):
        _log(f"base image {tag} exists, reusing it")
        return tag
    _ensure_debootstrap()
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    log = CACHE_DIR / "debootstrap.log"
    with tempfile.TemporaryDirectory(dir=CACHE_DIR, prefix="rootfs-") as rootfs, log.open("w") as out:
        _log(f"debootstrap into {rootfs} (about a minute), log in {log}")
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=" + ",".join(packages),
                BASE_SUITE,
                rootfs,
                BASE_MIRROR,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        # apt lists and caches are dead weight in an image that never runs apt.
        for pattern in ("var/cache/apt/archives/*.deb", "var/lib/apt/lists/*_*"):
            for path in Path(rootfs).glob(pattern):
                path.unlink()
        _log(f"importing {rootfs} as {tag}")
        tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(
            ["docker", "import", "-", tag], stdin=tar.stdout, stdout=sys.stderr, env=DOCKER_ENV
        )
        tar.stdout.close()
        if tar.wait() != 0 or imported.returncode != 0:
            raise SystemExit(f"importing the base image {tag} failed")
    return tag


LOCK_FILE = REPO / ".ci" / "requirements.lock"


def build_wheels(wheel_dir: Path = WHEEL_DIR) -> Path:
    """Build the project (with the operator extra) and every dependency as wheels, at the
    versions of the lock file (an input of `inputs_digest`: equal digest, equal image)."""
    if wheel_dir.exists():
        # A stale zt_relay wheel of the same version would shadow the fresh one.
        shutil.rmtree(wheel_dir)
    wheel_dir.mkdir(parents=True)
    _run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(wheel_dir),
         "-c", str(LOCK_FILE), f"{REPO}[operator]"],
        stdout=sys.stderr,
        cwd=REPO,
    )
    return wheel_dir


def ensure_docker() -> None:
    """Start Debian's dockerd if it is installed but not running (a fresh CI machine)."""
    from e2e.cluster import docker

    with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the tag
        docker.up()


_built: set[str] = set()


@dataclasses.dataclass(frozen=True)
class Pin:
    """This process's build of a tag, under a Docker tag of its own: the tag itself is shared
    by every checkout on the machine, and another one may rebuild it before this session's
    import (which then imports ``source`` under the shared tag: e2e.cluster.image_import)."""

    source: str
    image_id: str


_pins: dict[str, Pin] = {}
PIN_MARK = "-pin-"
"""``<tag>-pin-<process_identity>``: a pin's tag; removed when its process exits (or, killed, by
the next build on the machine that can tell: one in the same pid namespace)."""


def process_identity(pid: int) -> str | None:
    """``<pid namespace inode>-<pid>-<start time>`` of a live process (None: gone). A pid alone
    names another process once reused, and means nothing to a process of another pid namespace
    (a container using the same dockerd), which would take a live session's pin for a dead one."""
    from e2e.cluster import processes

    started = processes.start_time(pid)  # /proc/PID: this namespace's process PID
    return None if started is None else f"{_own_namespace()}-{pid}-{started}"


def _own_namespace() -> int:
    return os.stat("/proc/self/ns/pid").st_ino


def pinned(tag: str) -> Pin | None:
    """The pin of this process's ``build_image(tag)`` (None: not built by this process)."""
    return _pins.get(tag)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _stale(owner: str) -> bool:
    """Whether a pin's owner (its tag after PIN_MARK) is a process of this pid namespace that is
    gone; another namespace's pins are left alone. An old-style owner (a bare pid) is judged
    by the pid."""
    if owner.isdigit():
        return int(owner) != os.getpid() and not _alive(int(owner))
    parts = owner.split("-")
    if len(parts) != 3 or not all(p.isdigit() for p in parts) or int(parts[0]) != _own_namespace():
        return False
    return process_identity(int(parts[1])) != owner


def _drop_stale_pins(tag: str) -> None:
    """Remove the pins of processes gone without their exit (killed): the images they hold
    are hundreds of MB each."""
    listed = subprocess.run(["docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}}", tag.rpartition(":")[0]],
                            capture_output=True, text=True, env=DOCKER_ENV)
    for name in listed.stdout.split():
        if name.startswith(tag + PIN_MARK) and _stale(name.removeprefix(tag + PIN_MARK)):
            subprocess.run(["docker", "rmi", name], capture_output=True, env=DOCKER_ENV)


def _pin(tag: str) -> None:
    """Pin the image now under ``tag``: called under the build lock, right after this tree's
    build (or its check that the image is built from this tree's inputs), so it is this tree's."""
    from e2e.cluster import image_import

    image_id = image_import.docker_image_id(tag)
    if image_id is None:
        raise RuntimeError(f"Docker has no image {tag!r} right after its build or check")
    source = f"{tag}{PIN_MARK}{process_identity(os.getpid())}"
    _run(["docker", "tag", image_id, source], stdout=subprocess.DEVNULL, env=DOCKER_ENV)
    _pins[tag] = Pin(source, image_id)


def unpin_all() -> None:
    """Remove this process's pins (at exit): an image no tag names any more goes with it."""
    while _pins:
        _, pin = _pins.popitem()
        subprocess.run(["docker", "rmi", pin.source], capture_output=True, env=DOCKER_ENV)


atexit.register(unpin_all)

INPUTS_LABEL = "org.zt-relay.inputs"
"""Image label holding `inputs_digest()`: an image whose label matches is not rebuilt."""
INPUT_PATHS = ("relay", "operator", "pyproject.toml", "Dockerfile", ".dockerignore", ".ci/requirements.lock")


def _input_files() -> list[str]:
    """The files the image is made from (tracked or new, not ignored), repo-relative."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", *INPUT_PATHS],
        cwd=REPO, capture_output=True, text=True,
    )
    if listed.returncode == 0:
        return sorted(set(listed.stdout.split()))
    # Not a git checkout: every file under the input paths.
    found = []
    for entry in INPUT_PATHS:
        path = REPO / entry
        found += [str(p.relative_to(REPO)) for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file()]
    return sorted(found)


def inputs_digest(base: str) -> str:
    """A digest of everything the image is built from: the base tag, the sources, the
    dependency pins, the Dockerfile. Equal digest, equal image: no rebuild."""
    digest = hashlib.sha256(base.encode())
    for rel in _input_files():
        path = REPO / rel
        if path.is_file() and "__pycache__" not in rel:
            digest.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def image_label(tag: str, label: str) -> str | None:
    proc = subprocess.run(
        ["docker", "image", "inspect", "--format", f'{{{{index .Config.Labels "{label}"}}}}', tag],
        capture_output=True, text=True, env=DOCKER_ENV,
    )
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def build_image(tag: str = IMAGE, give_up=None) -> str:
    """Build base (cached), wheels and the image; return the image tag.

    Skipped when the image under `tag` was built from the same inputs (its INPUTS_LABEL
    equals `inputs_digest`), so every session tests the current source and an unchanged
    source costs no build; checked at most once per tag and process. The image is also
    pinned for this process (``pinned``): the tag is shared by every checkout on the machine.
    ``give_up()``, asked while another build holds the lock, ends the wait (image_import.GaveUp).
    """
    if tag in _built:
        return tag
    with _build_lock(give_up):
        # Again under the lock: another thread of this process (the session's prefetch, its
        # first test) may have built it while this one waited; that build and its pin stand,
        # even if another checkout has rebuilt the shared tag since.
        if tag in _built:
            return tag
        return _build_image(tag)


def _build_lock_timeout(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise SystemExit(f"ZT_RELAY_BUILD_LOCK_TIMEOUT={text!r}: not a number of seconds above 0 (default 1800)")
    return seconds


BUILD_LOCK_TIMEOUT = _build_lock_timeout(os.environ.get("ZT_RELAY_BUILD_LOCK_TIMEOUT", "1800"))
"""Seconds a build waits for another one's lock: far above a cold build (base, wheels and
image), so that only a hung one (its docker stuck) makes the waiters fail, naming it."""

BUILD_LOCK_POLL = 0.2  # flock(2) has no timeout: a waiter retries a non-blocking lock this often


@contextlib.contextmanager
def _build_lock(give_up=None):
    """One build on the machine at a time (xdist workers, `.ci/run`'s two parts): the others
    wait, then find the image built from their inputs; two at once clash in `docker image prune`
    ("a prune operation is already running") and in build/wheels. The holder writes its pid
    and command into the lock file, for a waiter that gives up to name it."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    path = CACHE_DIR / "build.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)  # no truncation: the holder's note stays
    try:
        deadline = time.monotonic() + BUILD_LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if give_up is not None and give_up():
                    from e2e.cluster import image_import

                    raise image_import.GaveUp() from None
                if time.monotonic() >= deadline:
                    holder = path.read_text().strip() or "a process that left no note"
                    raise TimeoutError(
                        f"the image build lock {path} is still held after {BUILD_LOCK_TIMEOUT:.0f} s, by {holder}: "
                        "a hung build? (stop it, or raise ZT_RELAY_BUILD_LOCK_TIMEOUT)"
                    ) from None
                time.sleep(BUILD_LOCK_POLL)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} ({' '.join(sys.argv)[:200]}), since {time.strftime('%H:%M:%S')}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def _build_image(tag: str) -> str:
    ensure_docker()
    base = build_base()
    digest = inputs_digest(base)
    _drop_stale_pins(tag)
    if image_label(tag, INPUTS_LABEL) == digest:
        _log(f"{tag} was built from these inputs ({digest}): reusing it")
        _pin(tag)
        _built.add(tag)
        return tag
    build_wheels()
    _run(
        ["docker", "build", "--build-arg", f"BASE_IMAGE={base}", "--label", f"{INPUTS_LABEL}={digest}", "--tag", tag, str(REPO)],
        stdout=sys.stderr,
        env=DOCKER_ENV,
    )
    # Each build leaves the untagged builder stage and the previous, now untagged, image
    # behind (hundreds of MB each): prune those two kinds of ours, nothing else.
    for label in ("org.zt-relay.stage=builder", "org.opencontainers.image.title=zt-relay"):
        _run(
            ["docker", "image", "prune", "--force", "--filter", f"label={label}"],
            stdout=subprocess.DEVNULL,
            env=DOCKER_ENV,
        )
    _pin(tag)
    _built.add(tag)
    return tag


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.images", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["build", "base", "tag"])
    parser.add_argument("--tag", default=IMAGE, help=f"image tag to build (default {IMAGE})")
    args = parser.parse_args(argv)
    if args.command == "tag":
        print(args.tag)
    elif args.command == "base":
        ensure_docker()
        print(build_base())
    else:
        print(build_image(args.tag))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
