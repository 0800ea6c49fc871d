"""The tests' API reader without a cluster: paths, kubeconfigs, and its one kept-alive connection."""

import base64
import dataclasses
import datetime
import http.server
import http.client
import ipaddress
import json
import os
import ssl
import threading

import subprocess

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import zt_operator
from e2e.cluster import api_reader, cgroups, components, configs, paths, processes, startup
from e2e.cluster.api_reader import ApiReader, NotFound, resource_path
from e2e.cluster.kubectl import Kubectl
from e2e.cluster.layout import Layout

LAYOUT = Layout(primary_interface="eth0")


def test_paths_of_objects_lists_and_selectors():
    assert resource_path("ztr", "r1", "ns") == "/apis/relay.zt-relay.dev/v1alpha1/namespaces/ns/zerotierrelays/r1"
    assert resource_path("pods", None, "ns", selector="app=web,tier in (a)") == (
        "/api/v1/namespaces/ns/pods?labelSelector=app%3Dweb%2Ctier+in+%28a%29")
    assert resource_path("events", None, "ns", field_selector="involvedObject.name=r") == (
        "/api/v1/namespaces/ns/events?fieldSelector=involvedObject.name%3Dr")
    assert resource_path("crd", "zerotierrelays.relay.zt-relay.dev") == (
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/zerotierrelays.relay.zt-relay.dev")
    assert resource_path("hpa", None) == "/apis/autoscaling/v2/horizontalpodautoscalers"


@pytest.mark.parametrize("call, match", [
    (lambda: resource_path("widgets", "w", "ns"), "widgets"),
    (lambda: resource_path("deployment", "web"), "namespace"),
    (lambda: resource_path("node", "n1", "ns"), "cluster-scoped"),
])
def test_a_wrong_request_is_a_key_error_naming_it(call, match):
    with pytest.raises(KeyError, match=match):  # a bug in the caller: wait_for lets it through
        call()


def test_the_crd_path_is_the_operators():
    assert api_reader.RESOURCES[zt_operator.PLURAL][0] == f"/apis/{zt_operator.GROUP}/{zt_operator.VERSION}"


def _kubeconfig(server: str, user: dict, cluster: dict | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "Config", "current-context": "c",
            "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
            "clusters": [{"name": "k", "cluster": {"server": server, **(cluster or {})}}],
            "users": [{"name": "u", "user": user}]}


@pytest.mark.parametrize("user, cluster", [
    ({"exec": {"command": "aws"}}, None),
    ({"auth-provider": {"name": "gcp"}}, None),
    ({"token": "t"}, {"proxy-url": "http://proxy:3128"}),
    ({"token": "t"}, {"tls-server-name": "api.internal"}),
], ids=["exec", "auth-provider", "proxy-url", "tls-server-name"])
def test_a_kubeconfig_only_kubectl_can_use_is_read_through_kubectl(tmp_path, user, cluster):
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump(_kubeconfig("https://198.18.0.1:6443", user, cluster)))
    reader = ApiReader.from_kubeconfig(path, ["kubectl", f"--kubeconfig={path}"])
    assert not reader.direct
    assert reader.transport.argv == ["kubectl", f"--kubeconfig={path}"]


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    """A CA-less self-signed certificate for 127.0.0.1: (cert PEM, key PEM)."""
    return _self_signed()


def _self_signed():
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM).decode(),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()).decode())


@pytest.fixture
def server(tls, tmp_path):
    """A loopback HTTPS server answering GET /ok, 404 elsewhere; it records each connection's
    requests and, when `drop_after_each` is set, closes a connection after answering (without
    saying so), as an API server closing an idle kept-alive connection does."""
    cert, key = tls
    (tmp_path / "cert.pem").write_text(cert)
    (tmp_path / "key.pem").write_text(key)
    state = {"connections": [], "drop_after_each": False, "authorization": [], "client_certs": [],
             "misbehave": None, "misbehave_fresh": False, "release": threading.Event(), "readyz_failures": 0}

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self):
            super().setup()
            self.mine = []
            state["connections"].append(self.mine)
            state["client_certs"].append(self.connection.getpeercert())

        def do_GET(self):
            self.mine.append(self.path)
            state["authorization"].append(self.headers.get("Authorization"))
            if state["misbehave"] and (len(self.mine) > 1 or state["misbehave_fresh"]):
                self.close_connection = True
                return MISBEHAVIOURS[state["misbehave"]](self, state)
            status, body = (200, b"ok") if self.path in ("/ok", "/readyz") else (404, json.dumps({"message": "no such thing"}).encode())
            if self.path == "/readyz" and state["readyz_failures"] > 0:
                state["readyz_failures"] -= 1
                status, body = 500, json.dumps({"message": "not ready"}).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            if state["drop_after_each"]:
                self.close_connection = True

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    context.verify_mode = ssl.CERT_OPTIONAL  # asks for a client certificate; our own is accepted
    context.load_verify_locations(tmp_path / "cert.pem")
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state["url"] = f"https://127.0.0.1:{httpd.server_address[1]}"
    yield state
    state["release"].set()
    httpd.shutdown()
    httpd.server_close()


# How the server fails a request instead of answering it (state["misbehave"]; on a kept
# connection's later requests only, unless state["misbehave_fresh"]).
MISBEHAVIOURS = {
    # A TLS record the client can't decrypt: an ssl.SSLError before a byte of the answer.
    "tls_garbage": lambda handler, state: os.write(handler.connection.fileno(), b"\x17\x03\x03\x00\x05hello"),
    # No answer at all while the connection stays up: a silently dead connection.
    "stall": lambda handler, state: state["release"].wait(60),
    # The status line and 2 of 10 body bytes, then the connection closes: the answer had begun.
    "cut_answer": lambda handler, state: handler.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nok"),
}


@pytest.fixture(autouse=True)
def _close_readers(monkeypatch):
    """Every reader made in a test is closed after it (an open socket left behind is an error here)."""
    made = []
    original = ApiReader.__init__

    def init(self, transport):
        original(self, transport)
        made.append(self)

    monkeypatch.setattr(ApiReader, "__init__", init)
    yield
    for reader in made:
        reader.close()


def _reader(tmp_path, server, tls, user=None) -> ApiReader:
    ca = base64.b64encode(tls[0].encode()).decode()
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(_kubeconfig(server["url"], user or {"token": "secret"},
                                               {"certificate-authority-data": ca})))
    reader = ApiReader.from_kubeconfig(path, ["kubectl-must-not-run"])
    assert reader.direct
    return reader


def test_gets_share_one_connection_and_a_404_keeps_it(tmp_path, server, tls):
    reader = _reader(tmp_path, server, tls)
    assert reader.raw("/ok") == "ok"
    with pytest.raises(NotFound, match="no such thing"):
        reader.raw("/missing")
    assert reader.raw("/ok") == "ok"
    assert server["connections"] == [["/ok", "/missing", "/ok"]]
    assert set(server["authorization"]) == {"Bearer secret"}


def test_a_kept_connection_the_server_closed_is_replaced_once(tmp_path, server, tls):
    reader = _reader(tmp_path, server, tls)
    server["drop_after_each"] = True
    assert [reader.raw("/ok") for _ in range(3)] == ["ok", "ok", "ok"]
    assert server["connections"] == [["/ok"], ["/ok"], ["/ok"]]


def test_a_kept_connection_that_fails_with_a_tls_error_before_the_answer_is_replaced_once(tmp_path, server, tls):
    """An API server closing an idle connection as we reuse it can show as an ssl.SSLError
    (an EOF in violation of the protocol), not only as a reset."""
    reader = _reader(tmp_path, server, tls)
    server["misbehave"] = "tls_garbage"
    assert [reader.raw("/ok") for _ in range(2)] == ["ok", "ok"]
    assert server["connections"] == [["/ok", "/ok"], ["/ok"]]


def test_a_kept_connection_that_never_answers_is_replaced_once_after_the_timeout(tmp_path, server, tls):
    reader = _reader(tmp_path, server, tls)
    reader.transport.timeout = 3  # the stall's cost; the fresh connection answers at once
    server["misbehave"] = "stall"
    assert [reader.raw("/ok") for _ in range(2)] == ["ok", "ok"]
    assert server["connections"] == [["/ok", "/ok"], ["/ok"]]


def test_a_kept_connection_idle_longer_than_the_bound_is_not_reused(tmp_path, server, tls):
    """The API server closes a connection idle for 90 s: one idle for IDLE_REUSE is never
    tried, so a silently dead one costs no timeout (this server would stall on it)."""
    reader = _reader(tmp_path, server, tls)
    reader.transport.timeout = 3  # were it tried, the GET would fail (or retry) after 3 s
    now = [1000.0]
    reader.transport.clock = lambda: now[0]
    assert reader.raw("/ok") == "ok"
    now[0] += api_reader.IDLE_REUSE - 1
    assert reader.raw("/ok") == "ok"  # kept: still young enough
    server["misbehave"] = "stall"
    now[0] += api_reader.IDLE_REUSE + 1
    assert reader.raw("/ok") == "ok"
    assert server["connections"] == [["/ok", "/ok"], ["/ok"]]


def test_an_answer_cut_after_its_first_byte_is_not_sent_again(tmp_path, server, tls):
    reader = _reader(tmp_path, server, tls)
    assert reader.raw("/ok") == "ok"
    server["misbehave"] = "cut_answer"
    with pytest.raises(http.client.IncompleteRead):
        reader.raw("/ok")
    assert server["connections"] == [["/ok", "/ok"]]
    server["misbehave"] = None
    assert reader.raw("/ok") == "ok"  # on a new connection
    assert server["connections"] == [["/ok", "/ok"], ["/ok"]]


def test_a_fresh_connections_tls_failure_is_reported_at_once(tmp_path, server, tls):
    reader = _reader(tmp_path, server, tls)
    server["misbehave"], server["misbehave_fresh"] = "tls_garbage", True
    with pytest.raises(ssl.SSLError, match="DECRYPTION_FAILED_OR_BAD_RECORD_MAC|bad record mac"):
        reader.raw("/ok")
    assert server["connections"] == [["/ok"]]


def test_a_server_that_is_not_there_fails_the_get_at_once(tmp_path, server, tls):
    reader = _reader(tmp_path, server, tls)
    assert reader.raw("/ok") == "ok"
    reader.transport.port = 1  # nothing listens there: the reused-connection retry must not hide it
    reader.transport.close()
    with pytest.raises(ConnectionRefusedError):
        reader.raw("/ok")


def test_a_server_certificate_the_kubeconfigs_ca_did_not_sign_is_refused(tmp_path, server, tls):
    other_ca = base64.b64encode(_self_signed()[0].encode()).decode()
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(_kubeconfig(server["url"], {"token": "secret"},
                                               {"certificate-authority-data": other_ca})))
    reader = ApiReader.from_kubeconfig(path, ["kubectl-must-not-run"])
    with pytest.raises(ssl.SSLCertVerificationError):
        reader.raw("/ok")
    assert server["authorization"] == []  # the token was never sent


def test_a_server_certificate_for_another_name_is_refused(tmp_path, server, tls):
    ca = base64.b64encode(tls[0].encode()).decode()
    path = tmp_path / "kubeconfig"
    url = server["url"].replace("127.0.0.1", "localhost")  # the certificate names 127.0.0.1 only
    path.write_text(yaml.safe_dump(_kubeconfig(url, {"token": "secret"}, {"certificate-authority-data": ca})))
    reader = ApiReader.from_kubeconfig(path, ["kubectl-must-not-run"])
    with pytest.raises(ssl.SSLCertVerificationError, match="127.0.0.1|mismatch"):
        reader.raw("/ok")
    assert server["authorization"] == []


def test_a_client_certificate_from_the_kubeconfig_is_presented(tmp_path, server, tls):
    cert, key = tls
    user = {"client-certificate-data": base64.b64encode(cert.encode()).decode(),
            "client-key-data": base64.b64encode(key.encode()).decode()}
    reader = _reader(tmp_path, server, tls, user)
    assert reader.raw("/ok") == "ok"
    assert server["client_certs"][0]["subject"] == ((("commonName", "test"),),)


def test_kubectl_api_is_made_again_when_the_kubeconfig_changes(tmp_path, server, tls):
    _reader(tmp_path, server, tls)
    kubectl = Kubectl(tmp_path / "kubeconfig")
    reader = kubectl.api
    assert kubectl.api is reader
    _reader(tmp_path, server, tls, {"token": "rotated"})
    assert kubectl.api is not reader
    assert kubectl.api.raw("/ok") == "ok"
    assert server["authorization"][-1] == "Bearer rotated"


def test_the_api_servers_readiness_poll_starts_no_process(tmp_path, server, tls, monkeypatch):
    """`up` and every API server restart poll /readyz every 0.3 s: a kubectl process each was."""
    _reader(tmp_path, server, tls)
    state = _apiserver_state(tmp_path)

    def no_process(*args, **kwargs):
        raise AssertionError(f"a process was started: {args}")

    monkeypatch.setattr(subprocess, "run", no_process)
    monkeypatch.setattr(subprocess, "Popen", no_process)
    kube_apiserver = components.get("kube-apiserver")
    try:
        assert kube_apiserver.ready(LAYOUT, state) is True
    finally:
        components.close_probe(kube_apiserver)
    assert server["connections"] == [["/readyz"]]


def _apiserver_state(tmp_path) -> configs.StatePaths:
    """A state directory whose super-admin kubeconfig is the one _reader wrote (for `server`)."""
    state = configs.StatePaths(tmp_path / "state")
    state.kubeconfigs.mkdir(parents=True)
    (tmp_path / "kubeconfig").rename(state.kubeconfig("super-admin"))
    return state


def test_the_api_servers_readiness_wait_polls_on_one_connection_closed_after_it(tmp_path, server, tls, monkeypatch):
    """`up` and every API server restart poll /readyz every 0.3 s until it answers 200: a reader
    per poll was a TLS handshake each. One reader serves the whole wait and is closed after it."""
    _reader(tmp_path, server, tls)
    state = _apiserver_state(tmp_path)
    server["readyz_failures"] = 2  # not ready for two polls
    real = components.get("kube-apiserver")
    standin = dataclasses.replace(real, command=lambda layout, state, bin_dir: ["sleep", "60"])
    monkeypatch.setitem(components.BY_NAME, "kube-apiserver", standin)
    monkeypatch.setattr(cgroups, "enter_host_argv", lambda argv: argv)
    monkeypatch.setattr(paths, "bin_dir", lambda: tmp_path)
    closed, close = [], ApiReader.close
    monkeypatch.setattr(ApiReader, "close", lambda self: (closed.append(self), close(self)))
    pid = startup.start_component(LAYOUT, state, "kube-apiserver")
    try:
        assert server["connections"] == [["/readyz", "/readyz", "/readyz"]]
        assert len(closed) == 1 and closed[0].transport.conn is None
    finally:
        assert processes.stop("kube-apiserver", state.run)
    assert not processes.alive(pid)
