"""The LB stand-in (`python -m e2e.cluster.lb`) stops at once on SIGTERM and still gives its
addresses back: `down` waits for it before it stops the API server, and it sat in its watch
until the watch's 5 s timeout ran out (5 s of every `down`, so of the down/up test and of
`.ci/run`'s end)."""

from __future__ import annotations

import http.server
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import pytest

from tests.ports import unused_port

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def api(tmp_path):
    """A plain-HTTP API server on loopback: an empty Service list, and a watch that stays open
    and silent until its timeoutSeconds (as a real one without events)."""
    requests: list[str] = []
    done = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):  # noqa: N802 - http.server's name
            requests.append(self.path)
            if "watch=" in self.path:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self.wfile.flush()
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                done.wait(float(query["timeoutSeconds"][0]))  # silent, then ended as the server does
                self.wfile.write(b"0\r\n\r\n")
                return
            body = json.dumps({"kind": "ServiceList", "apiVersion": "v1", "metadata": {"resourceVersion": "7"},
                               "items": []}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    port = unused_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
    }))
    yield kubeconfig, requests
    done.set()
    server.shutdown()
    server.server_close()
    thread.join()


def test_sigterm_stops_the_lb_standin_at_once_and_it_still_gives_its_addresses_back(api):
    kubeconfig, requests = api
    proc = subprocess.Popen([sys.executable, "-m", "e2e.cluster.lb", "--kubeconfig", str(kubeconfig),
                             "--pool", "10.250.0.0/29"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while not any("watch=" in path for path in requests):  # in its watch
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() is not None else "no watch"
            time.sleep(0.02)
        lists = sum("watch=" not in path for path in requests)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out
    assert took < 2, f"took {took:.1f} s to stop (its watch's timeout is 5 s)\n{out}"
    assert sum("watch=" not in path for path in requests) == lists + 1, requests  # the release's list
