"""`helm test` for zt-relay: the operator is healthy and every relay speaks the protocol.

Runs in the project image with the standard library only. Settings come from the
environment (set by templates/tests/test-relays.yaml):

- ``OPERATOR_HEALTH_URL``: the operator's /healthz behind its Service;
- ``NAMESPACE``: where to look for ZeroTierRelays (the release namespace);
- ``TIMEOUT``: seconds to wait for the operator and for relays to be reconciled.

Each relay is checked on its own Service port (``spec.service.port``), and fails the test
if the operator has not reconciled it (no status, an old ``observedGeneration``, or
``Degraded`` for a reason the operator causes: an API failure, RBAC, a name conflict).

A relay passes if it keeps a tunnel open after a valid hello and closes it on a record
that is not TLS-like application data: a plain TCP listener would do neither.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import struct
import sys
import time
import urllib.error
import urllib.request

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
HELLO = b"\x01\x0c\x00\x05"  # client version 1.12.5
BAD_RECORD = b"\x16\x03\x01\x00\x01\x00"  # a TLS handshake record: never valid here
API_GROUP_VERSION = os.environ.get("RELAY_API", "relay.zt-relay.dev/v1alpha1")


def record(payload: bytes) -> bytes:
    return b"\x17\x03\x03" + struct.pack(">H", len(payload)) + payload


def relay_service(relay: dict) -> str:
    """The Service fronting a relay: status.service if the operator reports it, else its name."""
    return (relay.get("status") or {}).get("service") or relay["metadata"]["name"]


OPERATOR_FAILURES = ("Forbidden", "Unauthorized", "Unreachable", "Timeout", "TooManyRequests",
                     "APIServerError", "APIError", "ApplyFailed", "Conflict", "InvalidSpec", "Invalid")
"""Degraded reasons that mean the operator could not do its job (not pods still starting)."""


def relay_port(relay: dict) -> int:
    """The relay Service's tunnel port: ``spec.service.port`` (the CRD's default 443)."""
    return int(((relay.get("spec") or {}).get("service") or {}).get("port") or 443)


def reconcile_problem(relay: dict) -> str | None:
    """Why the operator has not reconciled ``relay``, or None when it has."""
    name = relay["metadata"]["name"]
    status = relay.get("status")
    if not status:
        return f"relay {name}: no status (is the operator running and allowed to write it?)"
    generation = relay["metadata"].get("generation")
    if status.get("observedGeneration") != generation:
        return f"relay {name}: generation {generation} not reconciled (status shows {status.get('observedGeneration')})"
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Degraded" and condition.get("status") == "True" and condition.get("reason") in OPERATOR_FAILURES:
            return f"relay {name}: Degraded {condition['reason']}: {condition.get('message')}"
    return None


def wait_for_operator(url: str, deadline: float) -> None:
    last = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    print(f"ok: operator healthy at {url}")
                    return
        except (OSError, urllib.error.URLError) as exc:
            last = str(exc)
        time.sleep(max(0.0, min(2.0, deadline - time.monotonic())))  # never past the deadline
    raise SystemExit(f"FAIL: operator at {url} not healthy: {last}")


def list_relays(namespace: str) -> list[dict]:
    host = os.environ["KUBERNETES_SERVICE_HOST"]
    port = os.environ["KUBERNETES_SERVICE_PORT"]
    with open(f"{SA_DIR}/token") as token:
        headers = {"Authorization": f"Bearer {token.read().strip()}"}
    url = f"https://{host}:{port}/apis/{API_GROUP_VERSION}/namespaces/{namespace}/zerotierrelays"
    context = ssl.create_default_context(cafile=f"{SA_DIR}/ca.crt")
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=10, context=context) as response:
        return json.load(response)["items"]


def check_relay(host: str, port: int, deadline: float, answer_timeout: float = 10.0) -> None:
    """Passes (prints "ok") or exits with FAIL; retries until ``deadline`` (monotonic)."""
    last = ""
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=5) as sock:
                sock.sendall(record(HELLO))
                sock.settimeout(1.0)
                try:
                    if sock.recv(1) == b"":
                        raise ConnectionError("closed the tunnel after a valid hello")
                except TimeoutError:
                    pass  # still open: the hello was accepted
                sock.settimeout(answer_timeout)
                sock.sendall(BAD_RECORD)
                if sock.recv(1) != b"":
                    raise ConnectionError("answered a bad record instead of closing")
                print(f"ok: relay {host}:{port} accepts a hello and rejects a bad record")
                return
        except OSError as exc:
            last = str(exc)
        time.sleep(max(0.0, min(2.0, deadline - time.monotonic())))  # never past the deadline
    raise SystemExit(f"FAIL: relay {host}:{port}: {last}")


def main() -> None:
    deadline = time.monotonic() + float(os.environ.get("TIMEOUT", "120"))
    namespace = os.environ["NAMESPACE"]
    wait_for_operator(os.environ["OPERATOR_HEALTH_URL"], deadline)
    relays = list_relays(namespace)
    if not relays:
        print(f"note: no ZeroTierRelay in namespace {namespace}; only the operator was checked")
    while True:
        problems = [p for p in map(reconcile_problem, relays) if p]
        if not problems:
            break
        if time.monotonic() >= deadline:
            raise SystemExit("FAIL: " + "; ".join(problems))
        time.sleep(2)
        relays = list_relays(namespace)
    for relay in relays:
        print(f"ok: relay {relay['metadata']['name']} reconciled (generation {relay['metadata'].get('generation')})")
        check_relay(f"{relay_service(relay)}.{namespace}.svc", relay_port(relay), deadline)
    print("all checks passed")


if __name__ == "__main__":
    sys.exit(main())
