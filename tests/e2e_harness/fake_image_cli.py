"""A fake `docker` and `ctr` on PATH, sharing one JSON store ($ZTR_FAKE_STORE): just enough
of both for e2e.images' build and e2e.cluster.image_import's save and import, so a test can
see which image (by id) ends up under which name in the "cluster".

Docker: images by id, each with its tags and labels. A build makes a new id and moves its
tag there (the old image is left untagged, as Docker does); prune removes untagged images.
An archive (`docker save`) is JSON: the image id and the names it was saved under.
containerd (`ctr`): names -> {"id": Docker id, "labels": {...}}.

Run as `python fake_image_cli.py docker|ctr ARGS` (the wrappers `install` writes)."""

from __future__ import annotations

import fcntl
import json
import os
import sys
from pathlib import Path


def install(bin_dir: Path, store: Path) -> None:
    """Write `docker` and `ctr` wrappers into ``bin_dir`` (put it first on PATH, and set
    ZTR_FAKE_STORE to ``store``)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    store.write_text(json.dumps({"docker": {}, "ctr": {}, "next": 1}))
    for name in ("docker", "ctr"):
        wrapper = bin_dir / name
        wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} -S {Path(__file__).resolve()} {name} "$@"\n')
        wrapper.chmod(0o755)


def load(store: Path) -> dict:
    return json.loads(store.read_text())


def docker_ref(name: str) -> str:
    """containerd's name of a short Docker reference (as `ctr images import` names it)."""
    return name if "/" in name and "." in name.split("/")[0] else f"docker.io/{name if '/' in name else 'library/' + name}"


def tagged(state: dict, ref: str) -> str | None:
    """The id of Docker image ``ref`` (a tag or an id)."""
    for image_id, image in state["docker"].items():
        if ref in (image_id, image_id.removeprefix("sha256:")) or ref in image["tags"]:
            return image_id
    return None


def _untag(state: dict, tag: str) -> None:
    for image in state["docker"].values():
        if tag in image["tags"]:
            image["tags"].remove(tag)


def _option(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


def docker(state: dict, args: list[str], stdin: str = "") -> int:
    if args[:2] == ["image", "inspect"]:
        ref = args[-1]
        image_id = tagged(state, ref)
        if image_id is None:
            print(f"Error: No such image: {ref}", file=sys.stderr)
            return 1
        fmt = _option(args, "--format") or ""
        if ".Id" in fmt:
            print(image_id)
        elif "Labels" in fmt:
            label = fmt.split('"')[1]
            print(state["docker"][image_id]["labels"].get(label, ""))
        else:
            print(json.dumps([{"Id": image_id}]))
        return 0
    if args[0] == "build":
        image_id = f"sha256:{state['next']:064x}"
        state["next"] += 1
        labels = dict(label.split("=", 1) for label in args[1:] if "=" in label and args[args.index(label) - 1] == "--label")
        labels.setdefault("org.opencontainers.image.title", "zt-relay")
        tag = _option(args, "--tag")
        _untag(state, tag)
        state["docker"][image_id] = {"tags": [tag], "labels": labels}
        return 0
    if args[:2] == ["image", "prune"]:
        for image_id in [i for i, image in state["docker"].items() if not image["tags"]]:
            del state["docker"][image_id]
        return 0
    if args[0] == "tag":
        image_id = tagged(state, args[1])
        if image_id is None:
            print(f"Error response from daemon: No such image: {args[1]}", file=sys.stderr)
            return 1
        _untag(state, args[2])
        state["docker"][image_id]["tags"].append(args[2])
        return 0
    if args[0] in ("rmi",) or args[:2] == ["image", "rm"]:
        status = 0
        for ref in args[1:] if args[0] == "rmi" else args[2:]:
            if ref.startswith("-"):
                continue
            image_id = tagged(state, ref)
            if image_id is None:
                print(f"Error: No such image: {ref}", file=sys.stderr)
                status = 1
                continue
            image = state["docker"][image_id]
            if ref in image["tags"]:
                image["tags"].remove(ref)
            if not image["tags"] or ref in (image_id, image_id.removeprefix("sha256:")):
                del state["docker"][image_id]
            print(f"Untagged: {ref}")
        return status
    if args[:2] == ["image", "ls"] or args[0] == "images":
        fmt = _option(args, "--format") or ""
        wanted = [a for a in args[1:] if not a.startswith("-") and a != fmt and a != "ls"]
        for image_id, image in state["docker"].items():
            for tag in image["tags"]:
                repository, _, version = tag.rpartition(":")
                if wanted and repository not in wanted:
                    continue
                print(fmt.replace("{{.Repository}}", repository).replace("{{.Tag}}", version)
                      .replace("{{.ID}}", image_id.removeprefix("sha256:")[:12]))
        return 0
    if args[0] == "save":
        out = _option(args, "-o")
        names = [a for a in args[1:] if not a.startswith("-") and a != out]
        ids = {tagged(state, name) for name in names}
        if None in ids or len(ids) != 1:
            print(f"Error response from daemon: reference does not exist: {names}", file=sys.stderr)
            return 1
        archive = json.dumps({"id": ids.pop(), "repo_tags": [n for n in names if not n.startswith("sha256:")]})
        if out:
            Path(out).write_text(archive)
        else:
            sys.stdout.write(archive)
        return 0
    if args[0] == "info":
        return 0
    if args[0] == "exec" and args[2] == "ctr":  # a kind node's containerd: the one "ctr" store here
        return ctr(state, args[3:], stdin)
    print(f"fake docker: unknown command {args}", file=sys.stderr)
    return 2


def ctr(state: dict, args: list[str], stdin: str = "") -> int:
    while args and args[0] in ("--address", "--namespace"):
        args = args[2:]
    images = state["ctr"]
    if args == ["version"]:
        return 0
    if args[:2] == ["images", "import"]:
        archive = json.loads(stdin)
        for name in archive["repo_tags"]:
            images[docker_ref(name)] = {"id": archive["id"], "labels": {}}
        return 0
    if args[:2] == ["images", "ls"]:
        quiet = "-q" in args
        if not quiet:
            print("REF TYPE DIGEST SIZE PLATFORMS LABELS")
        for name, image in images.items():
            labels = ",".join(f"{k}={v}" for k, v in image["labels"].items()) or "-"
            print(name if quiet else f"{name} application/vnd.docker.distribution.manifest.v2+json "
                                     f"{image['id']} 1.0MiB linux/amd64 {labels}")
        return 0
    if args[:2] == ["images", "label"]:
        key, _, value = args[3].partition("=")
        images[args[2]]["labels"][key] = value
        return 0
    if args[:2] == ["images", "tag"]:
        rest = [a for a in args[2:] if a != "--force"]
        if rest[0] not in images:
            print(f"ctr: image {rest[0]!r}: not found", file=sys.stderr)
            return 1
        for target in rest[1:]:
            if target in images and "--force" not in args:
                print(f"ctr: image {target!r}: already exists", file=sys.stderr)
                return 1
            images[target] = {"id": images[rest[0]]["id"], "labels": {}}
        return 0
    if args[:2] in (["images", "rm"], ["images", "remove"], ["images", "delete"]):
        for name in args[2:]:
            images.pop(name, None)
        return 0
    print(f"fake ctr: unknown command {args}", file=sys.stderr)
    return 2


def main() -> int:
    store = Path(os.environ["ZTR_FAKE_STORE"])
    # The archive is read before the store's lock: the `docker save` writing it needs the lock too.
    stdin = sys.stdin.read() if (sys.argv[1] == "ctr" or sys.argv[2] == "exec") and "import" in sys.argv else ""
    with open(store.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = load(store)
        if sys.argv[1] == "docker":
            status = docker(state, sys.argv[2:], stdin)
        else:
            status = ctr(state, sys.argv[2:], stdin)
        store.write_text(json.dumps(state))
    return status


if __name__ == "__main__":
    raise SystemExit(main())
