"""`up` waits until each component serves, and notices one that dies while it waits."""

import http.server
import ssl
import subprocess
import threading

import pytest

from e2e.cluster import cgroups, components, paths, startup
from e2e.cluster.components import Component
from e2e.cluster.configs import StatePaths
from e2e.cluster.layout import Layout
from tests.ports import unused_port


@pytest.fixture
def https_livez(tmp_path):
    """A self-signed HTTPS server on loopback answering /livez (200) like metrics-server."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=metrics-server",
         "-days", "1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            self.send_response(200 if self.path == "/livez" else 404)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    port = unused_port()
    server = http.server.HTTPServer(("127.0.0.1", port), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield port
    server.shutdown()
    server.server_close()
    thread.join()


def test_metrics_server_is_ready_once_it_serves_livez_over_its_self_signed_tls(https_livez):
    """Without a probe, `up` went on as soon as metrics-server's pid existed, and a
    metrics-server that exited just after (a flag it rejects) went unnoticed until a test asked
    for metrics."""
    probe = components.get("metrics-server").ready
    assert probe is not None
    assert probe(Layout(primary_interface="eth0", node_ip="127.0.0.1", metrics_server_port=https_livez), None)


def test_metrics_server_is_not_ready_while_nothing_serves_its_port():
    probe = components.get("metrics-server").ready
    layout = Layout(primary_interface="eth0", node_ip="127.0.0.1", metrics_server_port=unused_port())
    with pytest.raises(OSError):
        probe(layout, None)


def test_a_component_that_exits_while_up_waits_for_it_to_be_ready_fails_up_with_its_log(tmp_path, monkeypatch):
    """It exits only once the ready wait has begun (its probe's first call lets it go): `up`
    says so with its log's tail instead of waiting out the ready timeout."""
    go = tmp_path / "go"
    dying = Component(
        "dying",
        lambda layout, state, bin_dir: ["sh", "-c", f'while [ ! -e "{go}" ]; do sleep 0.05; done; echo "bad flag: boom"; exit 1'],
        lambda layout, state: go.touch(),
    )
    monkeypatch.setitem(components.BY_NAME, "dying", dying)
    monkeypatch.setattr(cgroups, "enter_host_argv", lambda argv: argv)
    monkeypatch.setattr(paths, "bin_dir", lambda: tmp_path)
    state = StatePaths(tmp_path / "state")
    with pytest.raises(SystemExit, match="bad flag: boom"):
        startup.start_component(Layout(primary_interface="eth0"), state, "dying", ready_timeout=120)


def test_kube_proxys_first_sync_is_asked_on_the_layouts_healthz_port(monkeypatch):
    """`up` waited for kube-proxy's first sync asking its readiness with no layout
    (`ready(None, None)`) once its healthz port became a Layout field: an AttributeError, and
    every `up` failed."""
    asked = []
    monkeypatch.setattr(components, "_http_ok", lambda url: asked.append(url) or True)
    monkeypatch.setattr(startup, "_kube_forward_jump", lambda binary: True)
    layout = Layout(primary_interface="eth0")
    assert startup._kube_proxy_synced(layout)
    assert asked == [f"http://127.0.0.1:{layout.kube_proxy_healthz_port}/healthz"]
