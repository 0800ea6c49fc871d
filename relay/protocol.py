"""The ZeroTier TCP tunnel wire format, without I/O.

A client that cannot use UDP opens TCP to the relay and sends records that look like TLS
application data::

    17 03 03 LEN_HI LEN_LO payload[LEN]

The first record of a current client (1.2 and later) is the *hello*: a 4-byte payload with
the client's version (major, minor, revision as 16 bits). Every later payload is an
addressed ZeroTier packet::

    04 | IPv4 (4) | port (2) | packet        or        06 | IPv6 (16) | port (2) | packet

and the relay frames each UDP datagram it receives back the same way, with the sender's
address. Older clients send no hello and bare packets (no address): see ``Tunnel._on_legacy_packet``.

Everything here is pure: ``RecordReader`` only buffers and calls back, the encoders return
bytes. The server feeds it from ``data_received``; tests feed it arbitrary splits.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable

RECORD_TYPE = b"\x17\x03\x03"
HEADER_SIZE = 5
HELLO_SIZE = 4
ADDR_IPV4 = 4
ADDR_IPV6 = 6
#: Payload bytes taken by the address prefix, by address type.
ADDR_PREFIX_SIZE = {ADDR_IPV4: 7, ADDR_IPV6: 19}
#: The record length field is 16 bits.
MAX_RECORD_PAYLOAD = 0xFFFF
#: Default bound on one record's payload. ZeroTier packets are at most a few KiB (its
#: physical MTU is about 1.4 KiB), so 16 KiB leaves room without letting a client make the
#: relay buffer 64 KiB per tunnel.
DEFAULT_MAX_RECORD_PAYLOAD = 16384

_LEN = struct.Struct(">H")


class ProtocolError(Exception):
    """The peer broke the framing; the tunnel must be closed.

    ``reason`` is a short, stable label used for logs and the close-reason metric.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


#: Called once per complete record with the buffer holding it and the payload's bounds:
#: ``data[start:end]`` is the payload.
RecordCallback = Callable[[bytes, int, int], None]


class RecordReader:
    """Reassembles records from a byte stream and hands each payload to ``on_record``.

    Several records per ``feed`` and records split across feeds are both normal. The
    callback always gets an immutable ``bytes`` buffer, so it can slice hashable keys and
    packets straight out of it. A partial record accumulates in a bytearray and is turned
    into bytes once, when it completes: every byte is copied at most twice, so a client
    trickling a record byte by byte costs linear time, not quadratic.

    The reader owns its memory bound: a length field above ``max_payload`` raises before
    any of that payload is buffered. ``on_record`` may be replaced between records (the
    tunnel swaps its hello handler for the packet handler).
    """

    __slots__ = ("_pending", "_needed", "max_payload", "on_record")

    def __init__(self, on_record: RecordCallback, max_payload: int = DEFAULT_MAX_RECORD_PAYLOAD) -> None:
        if not 0 < max_payload <= MAX_RECORD_PAYLOAD:
            raise ValueError(f"max_payload must be 1..{MAX_RECORD_PAYLOAD}, got {max_payload}")
        self._pending: bytearray | None = None
        self._needed = 0  # bytes _pending must reach before a record can complete
        self.max_payload = max_payload
        self.on_record = on_record

    @property
    def buffered(self) -> int:
        """Bytes held from an incomplete record."""
        return len(self._pending) if self._pending is not None else 0

    def feed(self, data: bytes) -> None:
        """Consumes ``data``, calling ``on_record`` for every record it completes.

        Raises ``ProtocolError`` on a header that isn't ``17 03 03`` or a length above the
        bound; records before the bad one have been delivered.
        """
        pending = self._pending
        if pending is not None:
            pending += data
            if len(pending) < self._needed:
                return
            data = bytes(pending)
            self._pending = None
        size = len(data)
        pos = 0
        needed = HEADER_SIZE
        # Every complete record in this buffer, then keep the tail once.
        while size - pos >= HEADER_SIZE:
            if data[pos] != 0x17 or data[pos + 1] != 0x03 or data[pos + 2] != 0x03:
                raise ProtocolError("bad_record_header", f"expected 17 03 03, got {data[pos:pos + 3].hex(' ')}")
            length = (data[pos + 3] << 8) | data[pos + 4]
            if length > self.max_payload:
                raise ProtocolError("record_too_large", f"record of {length} bytes exceeds {self.max_payload}")
            end = pos + HEADER_SIZE + length
            if end > size:
                needed = HEADER_SIZE + length
                break
            self.on_record(data, pos + HEADER_SIZE, end)
            pos = end
        if pos < size:
            self._pending = bytearray(memoryview(data)[pos:])
            self._needed = needed


def encode_record(payload: bytes) -> bytes:
    """Wraps one payload in a record header."""
    if len(payload) > MAX_RECORD_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes does not fit a record")
    return RECORD_TYPE + _LEN.pack(len(payload)) + payload


def encode_hello(major: int, minor: int, revision: int) -> bytes:
    """The 9-byte hello a current client sends first."""
    return encode_record(bytes((major, minor)) + _LEN.pack(revision))


def decode_hello(payload: bytes) -> str:
    """The client version carried by a hello payload, as ``major.minor.revision``."""
    if len(payload) != HELLO_SIZE:
        raise ProtocolError("bad_hello", f"hello payload must be {HELLO_SIZE} bytes, got {len(payload)}")
    return f"{payload[0]}.{payload[1]}.{(payload[2] << 8) | payload[3]}"


def encode_address(host: str, port: int) -> bytes:
    """The address prefix (``04 ip port`` or ``06 ip port``) for a host and port."""
    ip = ipaddress.ip_address(host)
    kind = ADDR_IPV4 if ip.version == 4 else ADDR_IPV6
    return bytes((kind,)) + ip.packed + _LEN.pack(port)


def encode_packet(host: str, port: int, packet: bytes) -> bytes:
    """A whole addressed record: what a client sends and what the relay replies."""
    return encode_record(encode_address(host, port) + packet)


def decode_address(payload: bytes | memoryview) -> tuple[str, int, int]:
    """Splits an addressed payload into ``(host, port, offset of the packet)``."""
    if not payload:
        raise ProtocolError("bad_address_type", "empty payload")
    kind = payload[0]
    prefix = ADDR_PREFIX_SIZE.get(kind)
    if prefix is None:
        raise ProtocolError("bad_address_type", f"unknown address type {kind}")
    if len(payload) < prefix:
        raise ProtocolError("bad_address_type", f"payload of {len(payload)} bytes is shorter than its address")
    raw = bytes(payload[1:prefix - 2])
    host = str(ipaddress.IPv4Address(raw) if kind == ADDR_IPV4 else ipaddress.IPv6Address(raw))
    port = (payload[prefix - 2] << 8) | payload[prefix - 1]
    return host, port, prefix
