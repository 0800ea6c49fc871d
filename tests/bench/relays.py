"""How to start each relay under test and know it is ready.

``zt-relay`` is ours, started with the destination filter opened to loopback (the echo peer
is on 127.0.0.1) and the per-IP cap raised (every tunnel comes from 127.0.0.1).
``tcp-proxy`` is ZeroTier's C++ reference. It is not part of this repository: point
``--cpp-proxy`` or ``ZT_BENCH_CPP_PROXY`` at a binary built from ZeroTierOne's
``tcp-proxy/`` with its own Makefile. Facts from its source that matter here: it always
listens on 0.0.0.0:443 (so it runs only inside the private namespace, see netns.py), has
no destination filter, relays only to ports above 1024 and packets of 16 bytes or more,
leaves Nagle on, and prints a line per packet (sent to /dev/null here, its cheapest sink).
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.bench import netns

#: Descriptors a relay may need: two per idle tunnel (TCP + UDP) at 8,000 tunnels, plus slack.
RELAY_NOFILE = 65536
CPP_PROXY_PORT = 443  # ZT_TCP_PROXY_TCP_PORT in tcp-proxy.cpp
READY_TIMEOUT = 15.0


#: CPUs the relays are pinned to (None: wherever the scheduler puts them); see run.py --pin.
RELAY_CPUS: set[int] | None = None


def _prepare_child() -> None:
    # Runs in the child between fork and exec; root may raise the hard limit.
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (RELAY_NOFILE, RELAY_NOFILE))
    except (ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if RELAY_CPUS is not None:
        os.sched_setaffinity(0, RELAY_CPUS)


@dataclass
class RunningRelay:
    name: str
    process: subprocess.Popen
    port: int
    log_path: Path | None = None
    extra: dict = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        """SIGTERM (our relay drains; drain is short because the loadgen has closed), then kill."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _wait_listening(relay: RunningRelay) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if relay.process.poll() is not None:
            log = relay.log_path.read_text()[-2000:] if relay.log_path else ""
            raise SystemExit(f"{relay.name} exited with {relay.process.returncode} before listening\n{log}")
        try:
            with socket.create_connection(("127.0.0.1", relay.port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    relay.stop()
    raise SystemExit(f"{relay.name} did not listen on {relay.target} within {READY_TIMEOUT:g} s")


def zt_relay_command() -> list[str]:
    """The console script installed next to this interpreter, else ``python -m relay``."""
    script = Path(sys.executable).with_name("zt-relay")
    if script.exists():
        return [str(script)]
    found = shutil.which("zt-relay")
    return [found] if found else [sys.executable, "-m", "relay"]


def start_zt_relay(workdir: Path, extra_args: list[str], command_prefix: list[str] | None = None) -> RunningRelay:
    port = netns.free_port()
    health = netns.free_port()
    command = [
        *(command_prefix or zt_relay_command()),
        f"127.0.0.1:{port}",
        "--health-listen", f"127.0.0.1:{health}",
        # The echo peer is on loopback, which the default filter (global unicast) refuses.
        "--allow-destination", "127.0.0.0/8",
        "--min-destination-port", "1",
        "--max-connections", "30000",
        "--max-connections-per-ip", "30000",
        "--log-level", "WARNING",
        *extra_args,
    ]
    log_path = workdir / "zt-relay.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_prepare_child)
    relay = RunningRelay("zt-relay", process, port, log_path, {"health": health, "command": command})
    _wait_listening(relay)
    return relay


def cpp_proxy_binary(option: str | None) -> Path | None:
    """The tcp-proxy binary from ``--cpp-proxy`` or ``ZT_BENCH_CPP_PROXY``, checked."""
    value = option or os.environ.get("ZT_BENCH_CPP_PROXY")
    if not value:
        return None
    path = Path(value)
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise SystemExit(f"--cpp-proxy / ZT_BENCH_CPP_PROXY: {path} is not an executable file")
    return path


def start_cpp_proxy(binary: Path, workdir: Path) -> RunningRelay:
    process = subprocess.Popen([str(binary)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, cwd=workdir, preexec_fn=_prepare_child)
    relay = RunningRelay("tcp-proxy", process, CPP_PROXY_PORT)
    _wait_listening(relay)
    return relay
