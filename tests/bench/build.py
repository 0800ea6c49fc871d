"""Compiles ``loadgen.c`` (and ``forward.c``) into a per-user cache, keyed by the source's hash.

The binary is never committed; any checkout rebuilds it on first use in about a second.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

SOURCE = Path(__file__).with_name("loadgen.c")
#: The C reference forwarder of ``fallback.py --c-reference``.
FORWARD_SOURCE = Path(__file__).with_name("forward.c")
#: No -Werror: a newer compiler's new warning must not stop a benchmark run.
CFLAGS = ["-O2", "-Wall", "-Wextra"]


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/zt-relay-bench`` (default ``~/.cache/zt-relay-bench``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "zt-relay-bench"


def loadgen_binary() -> Path:
    """Returns the path of a loadgen built from the current source, building it if needed."""
    return _binary(SOURCE, "loadgen", ["-lpthread"])


def forward_binary() -> Path:
    """Returns the path of the C reference forwarder, building it if needed."""
    return _binary(FORWARD_SOURCE, "forward", [])


def _binary(path: Path, name: str, libs: list[str]) -> Path:
    source = path.read_bytes()
    digest = hashlib.sha256(source + " ".join(CFLAGS).encode()).hexdigest()[:16]
    target = cache_dir() / f"{name}-{digest}"
    if target.exists():
        return target
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not cc:
        raise SystemExit(f"the benchmark needs a C compiler (gcc or cc on PATH, or CC=...) to build {path.name}")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".tmp")
    subprocess.run([cc, *CFLAGS, "-o", str(partial), str(path), *libs], check=True)
    partial.rename(target)  # atomic: a concurrent run never sees a half-written binary
    return target
