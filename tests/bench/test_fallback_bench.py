"""`python -m tests.bench.fallback` itself: a handshake-only run (--downloads 0) reports."""

from __future__ import annotations

import pytest

from tests.bench import fallback
from tests.relay import nginx_site

pytestmark = pytest.mark.skipif(nginx_site.nginx_binary() is None, reason="nginx is not installed (apt-get install nginx-light)")


def test_a_run_without_downloads_reports_the_handshakes_and_no_download(capsys):
    """--downloads 0 (handshakes only, as the A/Bs of the time to the first handshake run it)
    ended in statistics.median of no download before printing anything."""
    assert fallback.main(["--handshakes", "3", "--downloads", "0", "--size-mb", "1"]) == 0
    out = capsys.readouterr().out
    assert "relay - direct p50:" in out and "CPU per handshake:" in out, out
    assert "HTTPS download" not in out and "machine load average:" in out, out
