"""Every way an API call can fail becomes a KubeError with a reason, never an escape."""

from __future__ import annotations

import json
import socket

import pytest
import urllib3
from kubernetes.client.rest import ApiException

from zt_operator import kube


def api_exception(status: int, message: str = "boom") -> ApiException:
    exc = ApiException(status=status, reason="Reason")
    exc.body = json.dumps({"message": message})
    return exc


@pytest.mark.parametrize("exc, reason", [
    (api_exception(429, "too many requests"), "TooManyRequests"),
    (api_exception(500), "APIServerError"),
    (api_exception(503), "APIServerError"),
    (api_exception(500, 'Internal error occurred: failed calling webhook "deny.example.com": failed to call webhook: '
                        'Post "https://deny.example.svc:443/validate?timeout=10s": dial tcp 10.96.0.9:443: connect: '
                        'connection refused'), "WebhookFailed"),
    (api_exception(403, "forbidden"), "Forbidden"),
    (api_exception(409), "Conflict"),
    (api_exception(422), "Invalid"),
    (urllib3.exceptions.MaxRetryError(None, "/apis", urllib3.exceptions.NewConnectionError(None, "refused")), "Unreachable"),
    (urllib3.exceptions.ProtocolError("Connection aborted.", ConnectionResetError(104, "reset")), "Unreachable"),
    (urllib3.exceptions.ReadTimeoutError(None, "/apis", "read timed out"), "Timeout"),
    (socket.timeout("timed out"), "Timeout"),
    (ConnectionRefusedError(111, "Connection refused"), "Unreachable"),
], ids=["429", "500", "503", "500-webhook", "403", "409", "422", "refused", "reset", "read-timeout", "socket-timeout", "oserror"])
def test_a_failed_call_becomes_a_kube_error_with_its_reason(exc, reason):
    def fails():
        raise exc

    with pytest.raises(kube.KubeError) as raised:
        kube.call("applying Service edge", fails)
    assert raised.value.reason == reason
    assert str(raised.value).startswith("applying Service edge: ")


def test_the_api_servers_message_is_kept():
    def fails():
        raise api_exception(422, 'Service "edge" is invalid: spec.ports[0].port: Invalid value')

    with pytest.raises(kube.KubeError, match="spec.ports\\[0\\].port: Invalid value") as raised:
        kube.call("applying Service edge", fails)
    assert raised.value.status == 422

