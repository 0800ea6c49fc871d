"""A real website for fallback tests and benchmarks: Debian's nginx serving HTTPS on loopback.

The certificate authority and the site's certificate are made here, per run, with the
``cryptography`` package; nginx runs in the foreground from a config in a temporary
folder, on a free loopback port. Used by ``test_fallback_probes.py`` and
``tests/bench/fallback.py``.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tests import ports

SERVER_NAME = "site.test"
INDEX = b"<html><body>the site</body></html>\n"
START_TIMEOUT = 10.0


def nginx_binary() -> str | None:
    return shutil.which("nginx") or (os.access("/usr/sbin/nginx", os.X_OK) and "/usr/sbin/nginx") or None


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A test CA and a site certificate for ``site.test`` and 127.0.0.1 signed by it.

    Returns the paths of the CA certificate, the site's chain (leaf then CA) and its key.
    """
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "zt-relay test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERVER_NAME)]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(SERVER_NAME), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, chain_path, key_path = folder / "ca.pem", folder / "chain.pem", folder / "key.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    chain_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return ca_path, chain_path, key_path


def free_port() -> int:
    return ports.unused_port()  # outside the ephemeral range: see tests/ports.py


class Nginx:
    """nginx serving ``/`` (a small page) and ``/big`` (``big_size`` bytes) over HTTPS."""

    def __init__(self, folder: Path, big_size: int = 0, workers: int = 1) -> None:
        self.folder = folder
        self.big_size = big_size
        self.workers = workers
        self.port = 0
        self.ca = self.chain = self.key = None
        self.proc: subprocess.Popen | None = None

    def start(self) -> Nginx:
        binary = nginx_binary()
        if binary is None:
            raise RuntimeError("nginx is not installed (apt-get install nginx-light)")
        self.ca, self.chain, self.key = make_certificates(self.folder)
        (self.folder / "www").mkdir()
        (self.folder / "www" / "index.html").write_bytes(INDEX)
        if self.big_size:
            with open(self.folder / "www" / "big", "wb") as f:
                f.truncate(self.big_size)  # sparse zeros: content doesn't matter to TLS
        last_error = ""
        for _ in range(5):  # the free port may be taken between probing and binding
            self.port = free_port()
            (self.folder / "nginx.pid").unlink(missing_ok=True)
            conf = self.folder / "nginx.conf"
            conf.write_text(self._config())
            self.proc = subprocess.Popen(
                [binary, "-p", str(self.folder), "-c", str(conf), "-e", str(self.folder / "error.log")],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )
            if self._wait_listening():
                return self
            self.stop()
            last_error = (self.folder / "error.log").read_text(errors="replace") if (self.folder / "error.log").exists() else ""
        raise RuntimeError(f"nginx did not start:\n{last_error}")

    def _config(self) -> str:
        f = self.folder
        user = "user root;" if os.geteuid() == 0 else ""
        return f"""
{user}
daemon off;
worker_processes {self.workers};
pid {f}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {f}/body;
    proxy_temp_path {f}/proxy;
    fastcgi_temp_path {f}/fastcgi;
    uwsgi_temp_path {f}/uwsgi;
    scgi_temp_path {f}/scgi;
    types {{ text/html html; application/octet-stream bin; }}
    default_type application/octet-stream;
    sendfile on;
    server {{
        listen 127.0.0.1:{self.port} ssl http2;
        server_name {SERVER_NAME};
        ssl_certificate {self.chain};
        ssl_certificate_key {self.key};
        ssl_protocols TLSv1.2 TLSv1.3;
        root {f}/www;
        location / {{ index index.html; }}
    }}
}}
"""

    def _wait_listening(self) -> bool:
        """nginx writes its pid file once its listening sockets are bound: until then, a
        connection may reach another process that holds the port (two concurrent picks of one
        port; nginx retries a failed bind for seconds before it exits)."""
        pid_file = self.folder / "nginx.pid"
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                if pid_file.read_text().strip() != str(self.proc.pid):
                    raise OSError("nginx has not bound its port yet")
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except OSError:
                time.sleep(0.05)
        return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # nginx: fast shutdown
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
