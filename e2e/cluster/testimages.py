"""A busybox image for the harness's own tests, from Debian's busybox-static, without Docker.

Gives pods a shell, `httpd`, `nc` and `nslookup` (not `wget`: static glibc cannot load NSS
modules, so it crashes resolving anything) so workload, Service and safety tests need no
registry and no project image.
"""

import shutil
from pathlib import Path

from e2e.cluster import archives

BUSYBOX_TAG = "zt-relay-e2e/busybox:1"
APPLETS = ("sh", "nslookup", "ls", "cat", "echo", "sleep", "httpd", "nc", "hostname", "env", "mkdir", "id", "ip", "ps", "true", "tftp", "timeout", "printf")


def busybox_spec(binary: bytes, tag: str = BUSYBOX_TAG) -> archives.ImageSpec:
    return archives.ImageSpec(
        tag=tag,
        files={"bin/busybox": (binary, 0o755), "tmp/.keep": (b"", 0o644)},
        symlinks={f"bin/{applet}": "busybox" for applet in APPLETS},
        cmd=["/bin/sh"],
        # A numeric non-root user, as the project's own pods use.
        user="10001:10001",
    )


def busybox_archive(tag: str = BUSYBOX_TAG) -> bytes:
    found = shutil.which("busybox")
    if found is None:
        raise RuntimeError("busybox not found; run `python -m e2e.cluster deps` (package busybox-static)")
    return archives.image_archive(busybox_spec(Path(found).read_bytes(), tag))
