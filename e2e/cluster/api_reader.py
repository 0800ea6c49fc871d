"""Read-only API requests made in the test process, for the tests' polls and reads.

A `kubectl get` costs ~84 ms of CPU (a Go binary starting, reading the kubeconfig and the
discovery cache, a TLS handshake, then the request), and a warm CI run made ~680 of them, most
of them polls. Here a GET is one request on a kept-alive HTTPS connection, authenticated with the
kubeconfig's own client certificate (or token). Writes (apply, delete, scale, helm) stay kubectl
and helm: they are what users run, and the tests check them.

A kubeconfig this reader can't use directly (an exec or auth-provider plugin, a proxy, a TLS
server name: a user's own cluster under --cluster=existing) is read through `kubectl get --raw`
instead: the same paths, the same answers, a process per call.

    api = ApiReader.from_kubeconfig(path, kubectl_argv=["kubectl", "--kubeconfig=..."])
    api.get("deployment", "web", "ns")          # the object (dict); NotFound if there is none
    api.list("pods", "ns", selector="app=web")  # {"items": [...], ...}
    api.find("pdb", "web", "ns")                # the object, or None only for a 404
    api.exists("pdb", "web", "ns")              # False only for a 404
    api.raw("/metrics")                         # text of any GET path
"""

import base64
import http.client
import json
import os
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

import yaml

# plural -> (API path prefix, namespaced). The project's CRD matches zt_operator's GROUP, VERSION
# and PLURAL (a test checks it: the harness doesn't import the operator).
RESOURCES: dict[str, tuple[str, bool]] = {
    "pods": ("/api/v1", True),
    "services": ("/api/v1", True),
    "endpoints": ("/api/v1", True),
    "configmaps": ("/api/v1", True),
    "serviceaccounts": ("/api/v1", True),
    "events": ("/api/v1", True),
    "namespaces": ("/api/v1", False),
    "nodes": ("/api/v1", False),
    "deployments": ("/apis/apps/v1", True),
    "replicasets": ("/apis/apps/v1", True),
    "horizontalpodautoscalers": ("/apis/autoscaling/v2", True),
    "poddisruptionbudgets": ("/apis/policy/v1", True),
    "networkpolicies": ("/apis/networking.k8s.io/v1", True),
    "clusterroles": ("/apis/rbac.authorization.k8s.io/v1", False),
    "clusterrolebindings": ("/apis/rbac.authorization.k8s.io/v1", False),
    "customresourcedefinitions": ("/apis/apiextensions.k8s.io/v1", False),
    "zerotierrelays": ("/apis/relay.zt-relay.dev/v1alpha1", True),
}
# kubectl's singular and short names, so call sites read like the kubectl they replace.
ALIASES = {
    "pod": "pods", "po": "pods", "service": "services", "svc": "services", "endpoint": "endpoints",
    "ep": "endpoints", "configmap": "configmaps", "cm": "configmaps", "serviceaccount": "serviceaccounts",
    "sa": "serviceaccounts", "event": "events", "ev": "events", "namespace": "namespaces", "ns": "namespaces",
    "node": "nodes", "no": "nodes", "deployment": "deployments", "deploy": "deployments",
    "replicaset": "replicasets", "rs": "replicasets", "horizontalpodautoscaler": "horizontalpodautoscalers",
    "hpa": "horizontalpodautoscalers", "poddisruptionbudget": "poddisruptionbudgets", "pdb": "poddisruptionbudgets",
    "networkpolicy": "networkpolicies", "netpol": "networkpolicies",
    "clusterrole": "clusterroles", "clusterrolebinding": "clusterrolebindings",
    "customresourcedefinition": "customresourcedefinitions", "crd": "customresourcedefinitions",
    "zerotierrelay": "zerotierrelays", "ztr": "zerotierrelays",
}


def resource_path(kind: str, name: str | None = None, namespace: str | None = None, *,
                  selector: str | None = None, field_selector: str | None = None) -> str:
    """The GET path of an object (`name`) or a list. An unknown kind is a KeyError (a bug in the
    caller: wait_for lets it through at once), as is a namespace missing or given where it can't be."""
    plural = ALIASES.get(kind, kind)
    if plural not in RESOURCES:
        raise KeyError(f"api_reader knows no resource {kind!r}; add it to RESOURCES (known: {', '.join(RESOURCES)})")
    prefix, namespaced = RESOURCES[plural]
    if namespaced and namespace is None and name is not None:
        raise KeyError(f"{kind} {name!r} is namespaced: give its namespace")
    if not namespaced and namespace is not None:
        raise KeyError(f"{kind} is cluster-scoped: no namespace")
    path = prefix + (f"/namespaces/{_segment(namespace)}" if namespace is not None else "") + f"/{plural}"
    if name is not None:
        path += f"/{_segment(name)}"
    query = {k: v for k, v in (("labelSelector", selector), ("fieldSelector", field_selector)) if v}
    return path + ("?" + urllib.parse.urlencode(query) if query else "")


def _segment(value: str) -> str:
    return urllib.parse.quote(value, safe="")


class ApiError(RuntimeError):
    """The API server answered a GET with an error status (or kubectl --raw failed)."""

    def __init__(self, path: str, status: int | None, message: str) -> None:
        super().__init__(f"GET {path}: {status or 'failed'}: {message}")
        self.path, self.status = path, status


class NotFound(ApiError):
    pass


class ApiReader:
    """GETs on one kept-alive HTTPS connection (or through `kubectl get --raw`, see the module doc).

    Thread-safe (one request at a time). A request that fails for any reason closes the
    connection; the next one opens a new one. A kept connection is reused only while young
    (IDLE_REUSE), and a GET on it that fails before a byte of the answer is sent once more
    on a fresh connection.
    """

    def __init__(self, transport: "_Https | _KubectlRaw") -> None:
        self.transport = transport

    @classmethod
    def from_kubeconfig(cls, kubeconfig: Path | str, kubectl_argv: Sequence[str], timeout: float = 30) -> "ApiReader":
        config = yaml.safe_load(Path(kubeconfig).read_text()) or {}
        https = _Https.from_config(config, Path(kubeconfig).parent, timeout)
        return cls(https if https is not None else _KubectlRaw(list(kubectl_argv), timeout))

    @property
    def direct(self) -> bool:
        """True when requests go straight to the API server (no kubectl process)."""
        return isinstance(self.transport, _Https)

    def raw(self, path: str, timeout: float | None = None) -> str:
        return self.transport.get(path, timeout)

    def get(self, kind: str, name: str, namespace: str | None = None, timeout: float | None = None) -> dict:
        return json.loads(self.raw(resource_path(kind, name, namespace), timeout))

    def list(self, kind: str, namespace: str | None = None, *, selector: str | None = None,
             field_selector: str | None = None, timeout: float | None = None) -> dict:
        path = resource_path(kind, None, namespace, selector=selector, field_selector=field_selector)
        return json.loads(self.raw(path, timeout))

    def find(self, kind: str, name: str, namespace: str | None = None, timeout: float | None = None) -> dict | None:
        """The object, or None for a 404 only: any other failure raises (a poll keeps polling, naming it)."""
        try:
            return self.get(kind, name, namespace, timeout)
        except NotFound:
            return None

    def exists(self, kind: str, name: str, namespace: str | None = None, timeout: float | None = None) -> bool:
        return self.find(kind, name, namespace, timeout) is not None

    def close(self) -> None:
        self.transport.close()


IDLE_REUSE = 30.0
"""Seconds a kept connection may have been idle and still be reused. kube-apiserver closes one
idle for 90 s (its http.Server IdleTimeout), and a connection that died silently (no reset)
would block a GET for the whole timeout: a third of that closing time is kept, no more."""


class _Unanswered(Exception):
    """A GET that failed before a byte of its answer came (`cause`): safe to send again."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(repr(cause))
        self.cause = cause


class _Response(http.client.HTTPResponse):
    def begin(self) -> None:
        # Wait for the first byte on its own: a failure or an EOF before it is _Unanswered
        # (a reset, a TLS error, a timeout), one after it is the answer's.
        try:
            first = self.fp.peek(1)
        except OSError as error:
            raise _Unanswered(error) from error
        if not first:
            raise _Unanswered(http.client.RemoteDisconnected("Remote end closed connection without response"))
        super().begin()


class _Https:
    def __init__(self, host: str, port: int, context: ssl.SSLContext, headers: dict[str, str], timeout: float) -> None:
        self.host, self.port, self.context, self.headers, self.timeout = host, port, context, headers, timeout
        self.lock = threading.Lock()
        self.conn: http.client.HTTPSConnection | None = None
        self.connections = 0  # opened so far (the tests check the connection is kept)
        self.clock = time.monotonic
        self.idle_since = 0.0  # when the kept connection's last answer ended

    @classmethod
    def from_config(cls, config: dict, base: Path, timeout: float) -> "_Https | None":
        """None when the kubeconfig needs what only kubectl does (plugins, proxies, server names)."""
        try:
            context_name = config["current-context"]
            context = _named(config["contexts"], context_name)["context"]
            cluster = _named(config["clusters"], context["cluster"])["cluster"]
            user = _named(config.get("users") or [], context["user"])["user"] if context.get("user") else {}
        except (KeyError, TypeError, StopIteration):
            return None
        server = urllib.parse.urlsplit(cluster.get("server", ""))
        plain = {"client-certificate", "client-certificate-data", "client-key", "client-key-data", "token"}
        if (server.scheme != "https" or server.path.strip("/") or not server.hostname or set(user) - plain
                or cluster.get("tls-server-name") or cluster.get("proxy-url") or _proxied(server.hostname)):
            return None
        ssl_context = ssl.create_default_context()
        if cluster.get("insecure-skip-tls-verify"):
            ssl_context.check_hostname = False
            ssl_context.verify_mode = ssl.CERT_NONE
        else:
            ca = _pem(cluster, "certificate-authority", base)
            if ca is not None:
                ssl_context = ssl.create_default_context(cadata=ca)
        cert, key = _pem(user, "client-certificate", base), _pem(user, "client-key", base)
        if cert is not None and key is not None:
            # load_cert_chain reads files only: a private directory, removed at once.
            with tempfile.TemporaryDirectory() as tmp:
                cert_file, key_file = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
                for path, text in ((cert_file, cert), (key_file, key)):
                    path.touch(mode=0o600)
                    path.write_text(text)
                ssl_context.load_cert_chain(cert_file, key_file)
        headers = {"Accept": "application/json"}
        if user.get("token"):
            headers["Authorization"] = f"Bearer {user['token']}"
        return cls(server.hostname, server.port or 443, ssl_context, headers, timeout)

    def get(self, path: str, timeout: float | None = None) -> str:
        with self.lock:
            if self.conn is not None and self.clock() - self.idle_since > IDLE_REUSE:
                self._close()
            reused = self.conn is not None
            try:
                return self._request(path, timeout)
            except _Unanswered as failure:
                if not reused:
                    raise failure.cause from None  # a fresh connection's failure is the answer
                # The server may have closed or lost the kept connection as we reused it (a
                # reset, a TLS error, no answer in time): the GET goes once more on a new one.
                stale = failure.cause
            try:
                return self._request(path, timeout)
            except _Unanswered as failure:
                raise failure.cause from stale

    def _request(self, path: str, timeout: float | None) -> str:
        """One GET; any failure but an error status closes the connection (the next GET opens one)."""
        try:
            return self._get(path, timeout)
        except ApiError:
            raise
        except BaseException:
            self._close()
            raise

    def _get(self, path: str, timeout: float | None) -> str:
        if self.conn is None:
            self.conn = http.client.HTTPSConnection(self.host, self.port, context=self.context, timeout=self.timeout)
            self.conn.response_class = _Response
            self.connections += 1
        self.conn.timeout = timeout or self.timeout
        if self.conn.sock is not None:
            self.conn.sock.settimeout(self.conn.timeout)
        try:
            self.conn.request("GET", path, headers=self.headers)
        except OSError as error:  # connecting, the TLS handshake, sending
            raise _Unanswered(error) from error
        response = self.conn.getresponse()
        body = response.read().decode()
        self.idle_since = self.clock()
        if response.will_close:
            self._close()
        if response.status == 200:
            return body
        raise (NotFound if response.status == 404 else ApiError)(path, response.status, _message(body))

    def _close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def close(self) -> None:
        with self.lock:
            self._close()


class _KubectlRaw:
    def __init__(self, argv: list[str], timeout: float) -> None:
        self.argv, self.timeout = argv, timeout

    def get(self, path: str, timeout: float | None = None) -> str:
        proc = subprocess.run([*self.argv, "get", "--raw", path], text=True, capture_output=True,
                              timeout=timeout or self.timeout)
        if proc.returncode == 0:
            return proc.stdout
        message = proc.stderr.strip()
        raise (NotFound if "(NotFound)" in message else ApiError)(path, None, message)

    def close(self) -> None:
        pass


def _named(entries: list[dict], name: str) -> dict:
    return next(entry for entry in entries if entry.get("name") == name)


def _pem(section: dict, key: str, base: Path) -> str | None:
    if section.get(f"{key}-data"):
        return base64.b64decode(section[f"{key}-data"]).decode()
    if section.get(key):
        return (base / os.path.expanduser(section[key])).read_text()
    return None


def _proxied(host: str) -> bool:
    """kubectl (Go's net/http) would send this through an HTTPS proxy from the environment."""
    if host in ("127.0.0.1", "::1", "localhost"):
        return False
    return bool(os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy"))


def _message(body: str) -> str:
    """The API server's Status message, else the body's start."""
    try:
        return json.loads(body).get("message") or body[:200]
    except (ValueError, AttributeError):
        return body[:200]
