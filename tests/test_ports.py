"""tests.ports: the fixed port a test hands a server is one no outgoing connection can take."""

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests import ports
from tests.relay import test_workers

ROOT = Path(__file__).resolve().parents[1]


def test_a_test_port_is_outside_the_ephemeral_range_and_unbound():
    low, high = ports.ephemeral_range()
    for _ in range(20):
        port = ports.unused_port()
        assert not low <= port <= high
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # nothing holds it


async def test_the_workers_tests_port_is_outside_the_ephemeral_range():
    """The --workers tests' helper (a relay bound to port 0 and stopped, before) handed out a
    port any connection beside them could take before the workers bound it."""
    low, high = ports.ephemeral_range()
    assert not low <= await test_workers.free_port() <= high


ONE_PORT_PICK = """  # another process, offered only the port this one picked
from tests import ports
ports.LOW, ports.HIGH = {port}, {port} + 1
try:
    print(ports.unused_port())
except RuntimeError as e:
    print("refused:", e)
"""


def test_a_port_picked_by_one_test_process_is_not_picked_by_another():
    """Two pytest processes (xdist workers, two clones' runs) pick from the same range: a
    pick that is only released, not reserved, can be handed to both before either binds."""
    port = ports.unused_port()
    other = subprocess.run([sys.executable, "-c", ONE_PORT_PICK.format(port=port)], capture_output=True, text=True,
                           cwd=ROOT, timeout=60, check=True).stdout
    assert other.startswith("refused:"), f"another process was handed port {port} too: {other!r}"


def test_a_port_is_not_handed_out_twice_in_one_process(monkeypatch):
    port = ports.unused_port()
    monkeypatch.setattr(ports, "LOW", port)
    monkeypatch.setattr(ports, "HIGH", port + 1)  # the one port this process holds
    with pytest.raises(RuntimeError, match="no unbound port"):
        ports.unused_port()  # nothing was bound to it: only the reservation can say no
