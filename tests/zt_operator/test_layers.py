"""The pure modules stay pure: no Kubernetes client, no Kopf, no event loop."""

from __future__ import annotations

import subprocess
import sys

PURE = ("zt_operator.builders", "zt_operator.validation", "zt_operator.status", "zt_operator.settings", "zt_operator.cli")
FORBIDDEN = ("kubernetes", "kopf", "aiohttp", "asyncio", "zt_operator.kube", "zt_operator.handlers")


def test_pure_modules_import_no_client_framework_or_io_module():
    # A fresh interpreter: this test process has long imported everything.
    code = (
        f"import sys; import {', '.join(PURE)}; "
        f"print(sorted(m for m in {FORBIDDEN!r} if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"
