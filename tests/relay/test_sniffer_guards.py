"""Guards of the sniffer (and one of the tunnel) that no test could fail.

With --proxy-protocol and --fallback, a connection whose PROXY header
never comes is refused at --sniff-timeout (fallback.Sniffer._timed_out): with that refusal
removed every relay test passed, and a silent connection from a trusted balancer held its
slot against --max-connections and the balancer's per-IP cap for good."""

from __future__ import annotations

import socket

from relay import proxy_protocol
from tests.relay.test_limit_bypass import LOOPBACK, MODES


def _how_it_ends(sock: socket.socket, timeout: float = 3) -> str:
    """What the relay does with ``sock`` within ``timeout``: closes it, resets it, answers or holds it."""
    sock.settimeout(timeout)
    try:
        return "eof" if sock.recv(1) == b"" else "data"
    except ConnectionResetError:
        return "reset"
    except socket.timeout:
        return f"still open after {timeout:g} s"


async def test_a_connection_whose_proxy_header_never_comes_is_refused_at_the_sniff_timeout(start_relay):
    relay = await start_relay(*LOOPBACK, "--proxy-protocol", "--fallback", "127.0.0.1:9", "--sniff-timeout", "0.5")
    sock = socket.create_connection(("127.0.0.1", relay.port))
    try:
        assert await relay.wait_metric("zt_relay_connections_open", lambda v: v == 1) == 1
        assert _how_it_ends(sock) in ("eof", "reset")
        samples = await relay.metrics()
        assert samples['zt_relay_connections_refused_total{reason="proxy_protocol_error"}'] == 1
        assert (samples["zt_relay_connections_open"], samples["zt_relay_client_addresses"]) == (0, 0)
    finally:
        sock.close()


async def test_a_proxy_header_longer_than_the_bound_is_refused_while_sniffing(start_relay):
    """The sniffer buffers a PROXY header up to fallback.MAX_PROXY_HEADER (536) bytes, as a
    tunnel does: a v2 header announcing 60,000 bytes of TLVs is refused once more than that
    came, not buffered to its announced end (with the bound removed every relay test passed)."""
    relay = await start_relay(*LOOPBACK, "--proxy-protocol", "--fallback", "127.0.0.1:9")
    sock = socket.create_connection(("127.0.0.1", relay.port))
    try:
        header = proxy_protocol.V2_SIGNATURE + bytes((0x21, 0x11)) + (60000).to_bytes(2, "big")
        sock.sendall(header + b"\x00" * 1000)
        assert _how_it_ends(sock) in ("eof", "reset")
        samples = await relay.metrics()
        assert samples['zt_relay_connections_refused_total{reason="proxy_protocol_error"}'] == 1
    finally:
        sock.close()


async def test_silent_connections_at_the_descriptor_ceiling_are_refused_while_sniffing(start_relay, echo):
    """At the tunnels' descriptor ceiling (RLIMIT_NOFILE 64, tunnels until one is refused), a
    connection being sniffed takes a descriptor too: each new one is refused and counted
    (file_descriptors_exhausted), not held for --sniff-timeout in the headroom that accept()
    and scrapes need (with the sniffer's check removed every relay test passed)."""
    from tests.relay.conftest import Client
    from tests.relay.test_kernel_ceilings import nofile

    relay = await start_relay(*LOOPBACK, "--fallback", "127.0.0.1:9", "--sniff-timeout", "30", preexec_fn=nofile(64))
    tunnels: list[Client] = []
    silent: list[socket.socket] = []
    name = 'zt_relay_connections_refused_total{reason="file_descriptors_exhausted"}'
    try:
        while len(tunnels) <= 64:
            client = await Client.connect(relay.port)
            client.send(echo.host, echo.port, b"t%03d" % len(tunnels) * 5)
            try:
                assert (await client.recv(timeout=2))[2] == b"t%03d" % len(tunnels) * 5
            except TimeoutError:
                assert await client.closed()
                await client.close()
                break
            tunnels.append(client)
        before = (await relay.metrics())[name]
        for _ in range(6):
            silent.append(socket.create_connection(("127.0.0.1", relay.port)))
        states = []
        for sock in silent:
            sock.settimeout(2)
            try:
                states.append("eof" if sock.recv(1) == b"" else "data")
            except ConnectionResetError:
                states.append("reset")
            except socket.timeout:
                states.append("held")
        samples = await relay.metrics()  # answered: the headroom is still there
        assert (states.count("held"), samples[name] - before) == (0, 6), (states, "".join(relay.log[-5:]))
    finally:
        for sock in silent:
            sock.close()
        for client in tunnels:
            await client.close()


@MODES
async def test_an_eof_before_the_proxy_header_ended_is_a_refusal(start_relay, mode):
    """A connection that closes inside its PROXY header is refused as proxy_protocol_error, with
    --fallback (the sniffer) as without it (with the tunnel's check removed every relay test
    passed: it was counted as a client that closed)."""
    relay = await start_relay(*LOOPBACK, *mode, "--proxy-protocol")
    sock = socket.create_connection(("127.0.0.1", relay.port))
    try:
        sock.sendall(b"PROXY TCP4 198.18.0.7")
        sock.shutdown(socket.SHUT_WR)
        name = 'zt_relay_connections_refused_total{reason="proxy_protocol_error"}'
        assert await relay.wait_metric(name, lambda v: v == 1) == 1
        assert await relay.wait_metric("zt_relay_connections_open", lambda v: v == 0) == 0
    finally:
        sock.close()
