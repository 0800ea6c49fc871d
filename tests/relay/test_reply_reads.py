"""How many ``recvfrom`` calls a tunnel's replies cost: one per reply in ping-pong (a request
and its answer), not one more failing probe every other round trip; a backlog is still read
in growing batches. Counted on the real UDP socket, in process, no timing."""

import select
import socket

from relay import protocol
from relay.config import RelayConfig
from relay.server import Relay
from relay.tunnel import Tunnel
from tests.relay.test_hostile_packets import FakeTransport


class Transport(FakeTransport):
    def write(self, data):
        self.written.append(data)


class CountingSocket:
    """The tunnel's UDP socket, counting ``recvfrom`` calls and the ones that found nothing."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reads = self.empty = 0

    def recvfrom(self, size):
        self.reads += 1
        try:
            return self.sock.recvfrom(size)
        except BlockingIOError:
            self.empty += 1
            raise

    def __getattr__(self, name):
        return getattr(self.sock, name)


def tunnel_with_peer():
    relay = Relay(RelayConfig(allow_destination=("127.0.0.0/8",), min_destination_port=1, health_listen=None))
    tunnel = Tunnel(relay)
    tunnel.connection_made(Transport(2001))
    tunnel.data_received(protocol.encode_hello(1, 14, 2))
    tunnel.udp4 = CountingSocket(tunnel.udp4)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.settimeout(5)
    return tunnel, peer


def replies(tunnel: Tunnel) -> int:
    records: list[bytes] = []
    protocol.RecordReader(lambda data, start, end: records.append(data[start:end])).feed(b"".join(tunnel.transport.written))
    return len(records)


def wait_readable(tunnel: Tunnel) -> None:
    assert select.select([tunnel.udp4.sock], [], [], 5)[0], "no reply arrived"


async def test_a_ping_pong_reply_costs_one_recvfrom_and_no_failing_probe():
    tunnel, peer = tunnel_with_peer()
    try:
        for i in range(20):
            tunnel.data_received(protocol.encode_packet("127.0.0.1", peer.getsockname()[1], b"%02d" % i * 10))
            data, addr = peer.recvfrom(100)
            peer.sendto(data, addr)
            wait_readable(tunnel)
            tunnel._on_udp4_readable()  # what the loop's reader calls
        assert len(tunnel.transport.written) == 20
        assert (tunnel.udp4.reads, tunnel.udp4.empty) == (20, 0)
    finally:
        tunnel.connection_lost(None)
        peer.close()


async def test_a_backlog_of_replies_is_still_read_in_growing_batches():
    tunnel, peer = tunnel_with_peer()
    try:
        tunnel.data_received(protocol.encode_packet("127.0.0.1", peer.getsockname()[1], b"q" * 20))
        _, addr = peer.recvfrom(100)
        for i in range(30):  # many answers to one packet
            peer.sendto(b"%02d" % i * 10, addr)
        wakeups = 0
        while replies(tunnel) < 30:
            wait_readable(tunnel)
            tunnel._on_udp4_readable()
            wakeups += 1
        # 1, 1, 2, 4, 8, 16 datagrams: a burst stuck at one would take 30 wakeups.
        assert wakeups <= 6, wakeups
    finally:
        tunnel.connection_lost(None)
        peer.close()
