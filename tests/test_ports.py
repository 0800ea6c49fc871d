"""tests.ports: the fixed port a test hands a server is one no outgoing connection can take."""

import socket

from tests import ports
from tests.relay import test_workers


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
