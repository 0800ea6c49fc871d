"""The pod sandbox ("pause") image, built here because no registry is reachable.

A static C program that sleeps until SIGTERM/SIGINT and reaps orphans (it is PID 1 of every
pod sandbox), packed by `archives` into a `docker save`-format archive for `ctr images
import`. No Docker needed, so `up` works before any project image exists.
"""

import subprocess
import tempfile
from pathlib import Path

from e2e.cluster import archives

PAUSE_C = r"""
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void quit(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, NULL, WNOHANG) > 0) {} }

int main(void) {
    signal(SIGTERM, quit);
    signal(SIGINT, quit);
    signal(SIGCHLD, reap);
    for (;;) pause();
}
"""


def compile_pause(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "pause.c"
        src.write_text(PAUSE_C)
        subprocess.run(["gcc", "-Os", "-static", "-s", "-o", str(out), str(src)], check=True)


def pause_spec(binary: bytes, tag: str) -> archives.ImageSpec:
    return archives.ImageSpec(tag=tag, files={"pause": (binary, 0o755)}, entrypoint=["/pause"], user="65535:65535")


def build_archive(tag: str, cache_dir: Path) -> bytes:
    """Compile once into the cache, then pack."""
    binary = cache_dir / "pause"
    if not binary.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        compile_pause(binary)
    return archives.image_archive(pause_spec(binary.read_bytes(), tag))
