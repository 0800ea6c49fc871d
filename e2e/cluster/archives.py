"""`docker save`-format image archives built in Python, without Docker.

`ctr images import` reads them. Used for the images the harness itself needs (the pod
sandbox "pause" image, a busybox test image), so `up` and the harness's own tests never wait
for dockerd or a registry.
"""

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ImageSpec:
    """One-layer image contents and metadata."""

    tag: str
    files: dict[str, tuple[bytes, int]]
    """Path inside the image (no leading slash) -> (content, mode)."""
    symlinks: dict[str, str] = field(default_factory=dict)
    """Path inside the image -> link target."""
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    user: str = ""
    arch: str = "amd64"


def _tar_bytes(spec_files: dict[str, tuple[bytes, int]], symlinks: dict[str, str] | None = None) -> bytes:
    """A tar with fixed metadata (mtime 0, root-owned) so equal input gives equal digests."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        dirs = sorted({"/".join(p.split("/")[:i]) for p in [*spec_files, *(symlinks or {})] for i in range(1, p.count("/") + 1)})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            tar.addfile(info)
        for name, (data, mode) in sorted(spec_files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))
        for name, target in sorted((symlinks or {}).items()):
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mode, info.mtime = tarfile.SYMTYPE, target, 0o777, 0
            tar.addfile(info)
    return buf.getvalue()


def image_archive(spec: ImageSpec) -> bytes:
    layer = _tar_bytes(spec.files, spec.symlinks)
    layer_digest = hashlib.sha256(layer).hexdigest()
    container_config: dict = {"Entrypoint": spec.entrypoint or None, "Cmd": spec.cmd or None}
    if spec.user:
        container_config["User"] = spec.user
    config = json.dumps(
        {
            "architecture": spec.arch,
            "os": "linux",
            "config": {k: v for k, v in container_config.items() if v},
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_digest}"]},
            "history": [{"created_by": "e2e.cluster.archives"}],
        },
        sort_keys=True,
    ).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [spec.tag], "Layers": [f"{layer_digest}/layer.tar"]}]).encode()
    return _tar_bytes(
        {
            "manifest.json": (manifest, 0o644),
            config_name: (config, 0o644),
            f"{layer_digest}/layer.tar": (layer, 0o644),
        }
    )
