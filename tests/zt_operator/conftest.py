"""Shared data for the operator's unit tests: relay bodies as the API server returns them."""

from __future__ import annotations

import copy
from typing import Any

import pytest

RELAY_UID = "0c8f5a52-6f59-4d39-9a53-9c1f6b1d2e01"
IMAGE = "zt-relay:9.9.9"


def relay_body(spec: dict[str, Any] | None = None, name: str = "edge", namespace: str = "relays", **status: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "relay.zt-relay.dev/v1alpha1",
        "kind": "ZeroTierRelay",
        "metadata": {"name": name, "namespace": namespace, "uid": RELAY_UID, "generation": 3},
        "spec": copy.deepcopy(spec or {}),
    }
    if status:
        body["status"] = status
    return body


@pytest.fixture
def body():
    return relay_body
