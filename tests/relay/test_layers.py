"""The import contracts in pyproject.toml hold (sans-IO codec, pure policy, no OTel in the hot path)."""

import shutil
import subprocess
import sys
from pathlib import Path


def test_import_linter_contracts_are_kept():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    proc = subprocess.run([exe], capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[2])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout
