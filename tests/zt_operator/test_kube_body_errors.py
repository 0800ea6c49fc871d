"""Review finding: a response whose body breaks off escapes as a raw exception.

Calls use ``_preload_content=False``, so ``kube.call`` returns as soon as the status line and
headers arrive; the body is read later by ``_decode`` (``response.data``), outside ``call``.
A connection cut mid-body (the API server stopping, a proxy reset) or a truncated body then
raises urllib3's ``ProtocolError`` / ``JSONDecodeError`` instead of ``KubeError``: it escapes
``reconcile.run`` (which catches only ``KubeError``), so the other children are not
reconciled, and there is no Degraded condition, no Event and no api_errors metric."""

from __future__ import annotations

import io

import pytest
import urllib3

from zt_operator import kube

BODY = b'{"kind": "Service", "metadata": {"name": "edge"}}'


class ResetMidBody(io.BytesIO):
    """A socket reset by the peer after the headers, while the body is read."""

    def read(self, *args):
        raise ConnectionResetError(104, "Connection reset by peer")


def cut_response(body: bytes) -> urllib3.HTTPResponse:
    """A 200 whose connection is reset before the body is read."""
    return urllib3.HTTPResponse(body=ResetMidBody(body), status=200, preload_content=False)


@pytest.mark.parametrize("response", [
    cut_response(BODY),
    urllib3.HTTPResponse(body=io.BytesIO(BODY[:20]), status=200, preload_content=False),
], ids=["connection-cut-mid-body", "truncated-json"])
def test_a_body_that_breaks_off_becomes_a_kube_error(monkeypatch, response):
    monkeypatch.setattr(kube, "_child_call", lambda kind, verb, *args, **kwargs: response)
    with pytest.raises(kube.KubeError):
        kube.get("Service", "relays", "edge")
