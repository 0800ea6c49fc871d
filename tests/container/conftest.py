"""Fixtures for tests that run the project image under a real Docker daemon.

The fixture builds the image once per session (``e2e.images.build_image``), so the tests
never run an image left over from older source. Without a Docker daemon the tests skip locally but
fail under CI=true: CI must never pass by skipping the image.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from e2e import images

RELAY_PORT = 8443
HEALTH_PORT = 9090
STARTUP_DEADLINE = 30.0  # seconds for the container's health server to answer
HELLO = b"\x01\x0c\x00\x05"  # client version 1.12.5


def docker(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, check=check, timeout=timeout,
        env=images.DOCKER_ENV,
    )


@pytest.fixture(scope="session")
def image() -> str:
    """The project image's tag, built if absent; starts dockerd if it is installed but down."""
    from e2e.cluster import docker as dockerd

    if not dockerd.running():
        if shutil.which("dockerd") and os.geteuid() == 0:
            dockerd.up()
        else:
            reason = "no Docker daemon: install docker.io (`python -m e2e.cluster deps`) and run as root"
            if os.environ.get("CI"):
                pytest.fail(reason)
            pytest.skip(reason)
    # Always (once per session): an image left from an older run would test old code. Its
    # pin, not the tag: another checkout on the machine may rebuild the tag meanwhile.
    return images.pinned(images.build_image()).source


@pytest.fixture(scope="session")
def bridge_gateway(image: str) -> tuple[str, str]:
    """(gateway IP, subnet) of Docker's default bridge: a host address containers reach."""
    config = json.loads(docker("network", "inspect", "bridge").stdout)[0]["IPAM"]["Config"][0]
    # Docker omits Gateway when it picked the default: the subnet's first address.
    gateway = config.get("Gateway") or str(ipaddress.ip_network(config["Subnet"])[1])
    return gateway, config["Subnet"]


@dataclass
class RelayContainer:
    name: str
    relay_port: int
    health_port: int

    def health(self, path: str) -> tuple[int, str]:
        """GET a health endpoint; returns (status, body)."""
        url = f"http://127.0.0.1:{self.health_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def inspect(self) -> dict:
        return json.loads(docker("inspect", self.name).stdout)[0]

    def logs(self) -> str:
        result = docker("logs", self.name, check=False)
        return result.stdout + result.stderr


def _published_port(name: str, port: int) -> int:
    # `docker port` prints e.g. "127.0.0.1:49153"
    return int(docker("port", name, f"{port}/tcp").stdout.split()[0].rsplit(":", 1)[1])


@pytest.fixture
def run_relay(image: str, bridge_gateway: tuple[str, str], request) -> Iterator:
    """Starts hardened relay containers (read-only root, no capabilities), waits for health.

    The relay may send UDP to Docker's bridge subnet, where the tests' UDP peers listen on
    the host side; by default it only sends to global unicast addresses.
    """
    started: list[RelayContainer] = []

    def run(*extra_env: str) -> RelayContainer:
        name = f"zt-relay-test-{os.getpid()}-{len(started)}-{request.node.name[:40]}".replace("[", "-").replace("]", "")
        env = [f"ZT_RELAY_ALLOW_DESTINATION={bridge_gateway[1]}", *extra_env]
        docker(
            "run", "--detach", "--name", name,
            "--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            "--publish", f"127.0.0.1::{RELAY_PORT}", "--publish", f"127.0.0.1::{HEALTH_PORT}",
            *(arg for e in env for arg in ("--env", e)),
            image,
        )
        container = RelayContainer(name, _published_port(name, RELAY_PORT), _published_port(name, HEALTH_PORT))
        started.append(container)
        deadline = time.monotonic() + STARTUP_DEADLINE
        while True:
            try:
                if container.health("/readyz")[0] == 200:
                    return container
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"relay not ready in {STARTUP_DEADLINE} s:\n{container.logs()}")
            time.sleep(0.2)

    yield run
    for container in started:
        docker("rm", "--force", container.name, check=False)


@pytest.fixture
def udp_echo(bridge_gateway: tuple[str, str]) -> Iterator[tuple[str, int]]:
    """A UDP peer on the bridge gateway that sends every datagram back, prefixed b'echo:'."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((bridge_gateway[0], 0))
    sock.settimeout(0.1)
    stop = False

    def serve() -> None:
        while not stop:
            try:
                data, peer = sock.recvfrom(65535)
            except TimeoutError:
                continue
            sock.sendto(b"echo:" + data, peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield sock.getsockname()
    stop = True
    thread.join()
    sock.close()


def record(payload: bytes) -> bytes:
    """One TLS-like record, as a ZeroTier client sends it."""
    return b"\x17\x03\x03" + struct.pack(">H", len(payload)) + payload


def addressed(host: str, port: int, packet: bytes) -> bytes:
    return b"\x04" + socket.inet_aton(host) + struct.pack(">H", port) + packet


class TunnelClient:
    """A blocking framed client: hello first, then addressed packets."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(record(HELLO))

    def send(self, host: str, port: int, packet: bytes) -> None:
        self.sock.sendall(record(addressed(host, port, packet)))

    def receive(self) -> tuple[str, int, bytes]:
        """The next framed datagram: (sender IP, sender port, packet)."""
        header = self._exactly(5)
        assert header[:3] == b"\x17\x03\x03", header
        payload = self._exactly(struct.unpack(">H", header[3:])[0])
        assert payload[0] == 4, payload
        return socket.inet_ntoa(payload[1:5]), struct.unpack(">H", payload[5:7])[0], payload[7:]

    def _exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError(f"relay closed the tunnel after {len(data)} of {n} bytes")
            data += chunk
        return data

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def tunnel_client() -> Iterator:
    clients: list[TunnelClient] = []

    def connect(port: int) -> TunnelClient:
        clients.append(TunnelClient(port))
        return clients[-1]

    yield connect
    for client in clients:
        client.close()
