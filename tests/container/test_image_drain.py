"""`docker stop` drains: readiness turns 503, live tunnels keep relaying, then exit 0."""

from __future__ import annotations

import subprocess
import time

import pytest

from e2e import images

pytestmark = pytest.mark.docker

DRAIN_TIMEOUT = 25  # seconds; the test ends the tunnel long before
STOP_TIMEOUT = 40  # docker's SIGKILL deadline, beyond the drain timeout


def test_docker_stop_keeps_tunnels_relaying_then_exits_zero_once_they_close(run_relay, udp_echo, tunnel_client):
    relay = run_relay(f"ZT_RELAY_DRAIN_TIMEOUT={DRAIN_TIMEOUT}")
    client = tunnel_client(relay.relay_port)
    client.send(*udp_echo, b"a" * 32)
    assert client.receive()[2] == b"echo:" + b"a" * 32

    started = time.monotonic()
    stop = subprocess.Popen(
        ["docker", "stop", "--time", str(STOP_TIMEOUT), relay.name],
        stdout=subprocess.DEVNULL, env=images.DOCKER_ENV,
    )
    try:
        while relay.health("/readyz")[0] != 503:
            assert time.monotonic() - started < 5, "readyz did not turn 503 within 5 s of SIGTERM"
            time.sleep(0.1)
        client.send(*udp_echo, b"b" * 32)
        assert client.receive()[2] == b"echo:" + b"b" * 32
        assert stop.poll() is None, "the relay exited while a tunnel was open"

        client.close()
        assert stop.wait(timeout=STOP_TIMEOUT + 10) == 0
    finally:
        if stop.poll() is None:
            stop.kill()

    state = relay.inspect()["State"]
    assert state["ExitCode"] == 0, relay.logs()
    assert not state["OOMKilled"]
    assert time.monotonic() - started < DRAIN_TIMEOUT, "exit waited for the drain timeout, not the last tunnel"
