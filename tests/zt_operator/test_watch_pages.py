"""The watches' own LISTs come in pages too (issue 14, fleet scale).

Before a watch starts, and after every watch restart that needs it, Kopf LISTs the kind.
Its default chunk size is None: one answer holding every relay, or every Deployment of
5,000 relays, in one response of several megabytes, while the operator's relist asked for
pages of 500. Both must ask for the same pages."""

from __future__ import annotations

from tests.zt_operator.test_reconnect import configured
from zt_operator import kube


async def test_kopfs_watch_lists_ask_for_pages_of_the_relists_size(monkeypatch):
    settings = await configured(monkeypatch)
    assert settings.watching.chunk_size == kube.PAGE_SIZE
