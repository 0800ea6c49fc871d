"""A prober can't tell the relay from the website behind it.

Each probe runs against real nginx (Debian's package, HTTPS with a CA made in the test)
directly, and through ``zt-relay --fallback`` to that nginx, at the same time; the two
observations must be equal. What is compared, exactly (timing is not):

- ``tls13``: a TLS 1.3 handshake verified against the test CA for ``site.test`` (so the
  backend's real certificate is checked), then ``GET /`` over it. Compared: the TLS version,
  the cipher, the ALPN protocol, the DER bytes of the peer certificate, the full decrypted
  HTTP response bytes, and how the connection ended. TLS records themselves differ on
  every connection (server random, key shares), so their ciphertext is not compared.
- ``http11_get``, ``http2_preface``, ``random64``: the raw bytes sent as they are
  (plaintext HTTP/1.1, the HTTP/2 prior-knowledge preface, 64 random bytes, the same bytes
  for both targets), then every byte received until the server closes, and how it closed
  (EOF or reset).
- ``empty_10s``: connect, send nothing for 10 s: the bytes received (none expected) and
  whether the server closed within those 10 s.
- ``half_closed``: connect, shut down our sending side at once: the bytes received and how
  it ended.

In the raw HTTP responses the value of the ``Date`` header is masked: it is the only byte
that depends on when the probe ran. Nothing else is normalised.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import ssl
import time

import pytest

from relay import backend_pool
from tests.relay.nginx_site import INDEX, SERVER_NAME, Nginx, nginx_binary

pytestmark = pytest.mark.skipif(nginx_binary() is None, reason="needs nginx: apt-get install nginx-light (python -m e2e.cluster deps)")

RANDOM64 = os.urandom(64)
HTTP11_GET = f"GET / HTTP/1.1\r\nHost: {SERVER_NAME}\r\nConnection: close\r\n\r\n".encode()
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000")  # + empty SETTINGS
HOLD = 10.0
_DATE = re.compile(rb"\r\nDate: [^\r]*\r\n")


def _mask_date(data: bytes) -> bytes:
    return _DATE.sub(b"\r\nDate: <masked>\r\n", data)


def _read_until_closed(sock: socket.socket, timeout: float = 10.0) -> tuple[bytes, str]:
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        return data, "reset"
    except TimeoutError:
        return data, "open"
    return data, "eof"


def probe_raw(port: int, payload: bytes) -> tuple[bytes, str]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(payload)
        data, ending = _read_until_closed(sock)
    return _mask_date(data), ending


def probe_empty(port: int) -> tuple[bytes, str]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        return _read_until_closed(sock, HOLD)


def probe_half_closed(port: int) -> tuple[bytes, str]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.shutdown(socket.SHUT_WR)
        return _read_until_closed(sock)


def probe_tls13(port: int, ca: str) -> dict:
    context = ssl.create_default_context(cafile=ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.set_alpn_protocols(["http/1.1"])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=SERVER_NAME) as tls:
            tls.sendall(HTTP11_GET)
            body = b""
            ending = "eof"
            try:
                while chunk := tls.recv(65536):
                    body += chunk
            except (ssl.SSLEOFError, ConnectionResetError):
                ending = "unclean"
            return {
                "version": tls.version(), "cipher": tls.cipher(), "alpn": tls.selected_alpn_protocol(),
                "certificate": tls.getpeercert(binary_form=True), "response": _mask_date(body), "ending": ending,
            }


@pytest.fixture
def nginx(tmp_path):
    site = Nginx(tmp_path).start()
    yield site
    site.stop()


TAKEN = "zt_relay_fallback_preconnect_taken_total"


@pytest.fixture(params=[0, 2], ids=["dialed", "preconnected"])
async def site_and_relay(nginx, start_relay, request):
    """The relay dialing nginx per connection, or (``--fallback-preconnect 2``) sending the
    probe on a connection its pool opened before the probe came (``both`` checks which)."""
    return nginx, await fallback_relay(start_relay, nginx, request.param)


async def fallback_relay(start_relay, nginx, preconnect: int):
    relay = await start_relay("--fallback", f"127.0.0.1:{nginx.port}", "--fallback-preconnect", str(preconnect))
    relay.pooled = bool(preconnect)
    return relay


async def both(probe, site, relay, *args, pooled: bool = True):
    """The probe against nginx and through the relay, concurrently. Preconnected: two visits
    at once first (the pool starts cold; a lone visit owes it nothing, the other one connection),
    and the probe must go on the pooled connection (``pooled``), or must not (a probe that
    waits past its age)."""
    if relay.pooled:
        await asyncio.gather(*(asyncio.to_thread(probe_raw, relay.port, HTTP11_GET) for _ in range(2)))
        assert await relay.wait_metric("zt_relay_fallback_preconnected", lambda v: v == 1) == 1, "the pool never filled"
        taken, filled = (await relay.metrics())[TAKEN], time.monotonic()
    results = await asyncio.gather(asyncio.to_thread(probe, site.port, *args), asyncio.to_thread(probe, relay.port, *args))
    if relay.pooled:
        now = (await relay.metrics())[TAKEN]
        if pooled and now == taken and time.monotonic() - filled > backend_pool.MAX_AGE:
            pytest.skip(f"the machine stalled past the pooled connection's age ({backend_pool.MAX_AGE:g} s)")
        assert now == taken + pooled, f"the probe went on {'a dial' if pooled else 'a pooled connection'}"
    return results


async def test_a_verified_tls13_handshake_and_get_see_the_same_certificate_and_page(site_and_relay):
    site, relay = site_and_relay
    direct, relayed = await both(probe_tls13, site, relay, str(site.ca))
    assert direct["version"] == "TLSv1.3"
    assert direct["response"].startswith(b"HTTP/1.1 200 OK\r\n") and direct["response"].endswith(INDEX)
    assert relayed == direct


@pytest.mark.parametrize("payload", [HTTP11_GET, HTTP2_PREFACE, RANDOM64], ids=["http11_get", "http2_preface", "random64"])
async def test_plaintext_probes_get_the_same_bytes_and_the_same_ending(site_and_relay, payload):
    site, relay = site_and_relay
    direct, relayed = await both(probe_raw, site, relay, payload)
    assert direct[1] != "open"  # nginx answered and closed: the comparison has content
    assert relayed == direct


async def test_an_empty_connection_held_10_s_looks_the_same(nginx, start_relay):
    """Both of site_and_relay's relays (dialing, preconnected) at once: one 10 s hold for the
    test, not two back to back on one pytest-xdist worker."""
    relays = [await fallback_relay(start_relay, nginx, preconnect) for preconnect in (0, 2)]
    # pooled=False: sent on after 10 s, when the pooled connection has aged out.
    results = await asyncio.gather(*(both(probe_empty, nginx, relay, pooled=False) for relay in relays))
    for direct, relayed in results:
        assert relayed == direct == (b"", "open")


async def test_a_connection_half_closed_at_once_looks_the_same(site_and_relay):
    site, relay = site_and_relay
    direct, relayed = await both(probe_half_closed, site, relay)
    assert relayed == direct
