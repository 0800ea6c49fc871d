"""files/helm_test.py (the `helm test` pod's check) against a real relay and a fake one."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests import ports
from tests.chart.conftest import CHART

SCRIPT = CHART / "files" / "helm_test.py"


def _load():
    spec = importlib.util.spec_from_file_location("helm_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


helm_test = _load()


def _free_port() -> int:
    return ports.unused_port()  # outside the ephemeral range: see tests/ports.py


@contextlib.contextmanager
def running_relay(port: int):
    """A real zt-relay process on loopback:`port` (health server off), started once it logs
    that it listens there (after its bind): a connection that the port takes proves only that
    someone listens, maybe a process that got the port first while the relay failed its bind."""
    # No shutdown delay: the teardown's SIGTERM needn't wait the default 5 s.
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "zt-relay"), f"127.0.0.1:{port}", "--health-listen", "off"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "ZT_RELAY_LOG_LEVEL": "INFO", "ZT_RELAY_SHUTDOWN_DELAY": "0"},
    )
    log: list[str] = []
    decided = threading.Event()  # it listens, or its log ended (it exited)

    def read() -> None:  # drains stderr for the whole run: a full pipe would stall the relay
        for line in proc.stderr:
            log.append(line)
            if f"relay listening on 127.0.0.1:{port}" in line:
                decided.set()
        decided.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        if not decided.wait(15):
            raise RuntimeError("relay did not log that it listens within 15 s:\n" + "".join(log))
        if proc.poll() is not None or not any("relay listening on" in line for line in log):
            proc.wait(timeout=10)
            reader.join(timeout=10)
            raise RuntimeError(f"relay exited ({proc.returncode}) during start:\n" + "".join(log))
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        reader.join(timeout=10)
        proc.stderr.close()


@pytest.fixture
def relay_port():
    with running_relay(_free_port()) as port:
        yield port


@pytest.fixture
def silent_listener_port():
    """A TCP server that accepts and never answers nor closes: not a relay."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def test_a_real_relay_passes_the_check(relay_port, capsys):
    helm_test.check_relay("127.0.0.1", relay_port, time.monotonic() + 20)
    assert "accepts a hello and rejects a bad record" in capsys.readouterr().out


def test_a_port_another_process_took_after_the_pick_is_not_mistaken_for_the_relays():
    """The relay counted as started once its port took a connection: a listener that got the
    port first (a process that takes no pick lock) answered, while the relay had failed its
    bind and exited, and the check then ran against the stranger."""
    with socket.socket() as stranger:
        stranger.bind(("127.0.0.1", _free_port()))
        stranger.listen()
        with pytest.raises(RuntimeError, match="relay exited"):
            with running_relay(stranger.getsockname()[1]):
                pass


def test_a_listener_that_ignores_bad_records_fails_the_check(silent_listener_port):
    with pytest.raises(SystemExit, match="FAIL: relay 127.0.0.1"):
        helm_test.check_relay("127.0.0.1", silent_listener_port, time.monotonic() + 2, answer_timeout=1)


def test_the_relay_service_is_the_reported_one_or_the_relays_name():
    assert helm_test.relay_service({"metadata": {"name": "edge"}}) == "edge"
    assert helm_test.relay_service({"metadata": {"name": "edge"}, "status": {"service": "edge-lb"}}) == "edge-lb"


def test_records_are_tls_application_data_with_a_length():
    assert helm_test.record(b"abc") == b"\x17\x03\x03\x00\x03abc"


def test_each_relay_is_checked_on_its_own_service_port():
    assert helm_test.relay_port({"metadata": {"name": "edge"}, "spec": {"service": {"port": 8443}}}) == 8443
    assert helm_test.relay_port({"metadata": {"name": "edge"}, "spec": {}}) == 443


def ready(generation=2, observed=2, degraded=("False", "AsExpected")):
    return {"metadata": {"name": "edge", "generation": generation},
            "status": {"observedGeneration": observed, "conditions": [
                {"type": "Degraded", "status": degraded[0], "reason": degraded[1], "message": "m"}]}}


def test_a_relay_the_operator_has_not_reconciled_fails_the_check():
    assert helm_test.reconcile_problem(ready()) is None
    assert "no status" in helm_test.reconcile_problem({"metadata": {"name": "edge", "generation": 1}})
    assert "generation 3" in helm_test.reconcile_problem(ready(generation=3, observed=2))
    assert "Forbidden" in helm_test.reconcile_problem(ready(degraded=("True", "Forbidden")))
    # A relay whose pods are still coming is reconciled; only operator failures count.
    assert helm_test.reconcile_problem(ready(degraded=("True", "ReplicasUnavailable"))) is None
