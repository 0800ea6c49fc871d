"""PROXY protocol v1 and v2 headers (HAProxy's spec), without I/O.

Behind a load balancer that terminates TCP, the relay would otherwise see the balancer's
address: per-IP limits and logs need the client's. With ``--proxy-protocol`` every
connection must start with a header; one without is refused rather than trusted.
"""

from __future__ import annotations

import ipaddress
from typing import NamedTuple

from relay import stats
from relay.protocol import ProtocolError

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
V1_MAX = 107  # the spec's bound on a v1 line, CRLF included
_V2_FIXED = 16
_V2_ADDRESS_SIZES = {0x11: 12, 0x12: 12, 0x21: 36, 0x22: 36}  # TCP/UDP over IPv4/IPv6
REASON = stats.PROXY_HEADER

Address = tuple[str, int]


class Header(NamedTuple):
    """A parsed header: the client (``source``) and the address it reached
    (``destination``, e.g. the balancer's public port), both None for v1 ``UNKNOWN`` and
    v2 ``LOCAL`` (health checks of the balancer itself: "use the socket's addresses")."""

    source: Address | None
    destination: Address | None
    length: int


def parse(buf: bytes) -> tuple[Address | None, int] | None:
    """Parses a header at the start of ``buf``.

    Returns None if more bytes are needed, else ``(client address, header length)``; the
    address is None for v1 ``UNKNOWN`` and v2 ``LOCAL`` (health checks of the balancer
    itself), meaning "use the socket's peer". Raises ``ProtocolError`` on anything else.
    """
    header = parse_header(buf)
    return None if header is None else (header.source, header.length)


def parse_header(buf: bytes) -> Header | None:
    """As ``parse``, with the destination too (``Header``)."""
    if buf[:1] == b"\r":
        return _parse_v2(buf)
    if buf[:1] == b"P":
        return _parse_v1(buf)
    if buf:
        raise ProtocolError(REASON, "connection did not start with a PROXY protocol header")
    return None


def _parse_v1(buf: bytes) -> Header | None:
    if not V1_PREFIX.startswith(buf[:len(V1_PREFIX)]):
        raise ProtocolError(REASON, "bad PROXY v1 signature")
    end = buf.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(buf) >= V1_MAX:
            raise ProtocolError(REASON, "PROXY v1 line longer than 107 bytes")
        return None
    line = buf[:end]
    if not line.isascii():
        raise ProtocolError(REASON, f"PROXY v1 line is not ASCII: {line!r}")
    parts = line.decode("ascii").split(" ")
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        return Header(None, None, end + 2)
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProtocolError(REASON, f"malformed PROXY v1 line {line!r}")
    version = 4 if parts[1] == "TCP4" else 6
    src, dst = _v1_address(parts[2], parts[4], version, line), _v1_address(parts[3], parts[5], version, line)
    return Header(src, dst, end + 2)


def _v1_address(host: str, port_text: str, version: int, line: bytes) -> Address:
    """One address of a v1 line, strictly: an address of the line's family without a zone
    ID, and a decimal port (digits only, no sign or leading zero, 0..65535)."""
    if "%" in host or not port_text.isdigit() or len(port_text) > 5 or (port_text[0] == "0" and port_text != "0"):
        raise ProtocolError(REASON, f"bad address in PROXY v1 line {line!r}")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ProtocolError(REASON, f"bad address in PROXY v1 line {line!r}") from None
    port = int(port_text)
    if ip.version != version or port > 65535:
        raise ProtocolError(REASON, f"bad address in PROXY v1 line {line!r}")
    return _normal(ip), port


def _normal(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """The address as a limiter and a log should see it: IPv4-mapped IPv6 as IPv4."""
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _parse_v2(buf: bytes) -> Header | None:
    if not V2_SIGNATURE.startswith(buf[:len(V2_SIGNATURE)]):
        raise ProtocolError(REASON, "bad PROXY v2 signature")
    if len(buf) < _V2_FIXED:
        return None
    ver_cmd, family = buf[12], buf[13]
    length = (buf[14] << 8) | buf[15]
    if ver_cmd >> 4 != 2:
        raise ProtocolError(REASON, f"PROXY v2 header with version {ver_cmd >> 4}")
    total = _V2_FIXED + length
    if len(buf) < total:
        return None
    command = ver_cmd & 0x0F
    if command == 0:  # LOCAL
        return Header(None, None, total)
    if command != 1:
        raise ProtocolError(REASON, f"PROXY v2 unknown command {command}")
    size = _V2_ADDRESS_SIZES.get(family)
    if size is None:
        return Header(None, None, total)  # AF_UNSPEC or unix sockets: no usable client address
    if length < size:
        raise ProtocolError(REASON, "PROXY v2 address block too short")
    body = buf[_V2_FIXED:_V2_FIXED + size]
    if size == 12:
        ip, dip, port, dport = ipaddress.IPv4Address(body[0:4]), ipaddress.IPv4Address(body[4:8]), body[8:10], body[10:12]
    else:
        ip, dip, port, dport = ipaddress.IPv6Address(body[0:16]), ipaddress.IPv6Address(body[16:32]), body[32:34], body[34:36]
    return Header((_normal(ip), int.from_bytes(port, "big")), (_normal(dip), int.from_bytes(dport, "big")), total)


def encode_v1(src: Address, dst: Address) -> bytes:
    """A v1 header (for tests and clients)."""
    proto = "TCP6" if ":" in src[0] else "TCP4"
    return f"PROXY {proto} {src[0]} {dst[0]} {src[1]} {dst[1]}\r\n".encode()


def encode_v2(src: Address, dst: Address) -> bytes:
    """A v2 PROXY command header over TCP (for tests and clients)."""
    s, d = ipaddress.ip_address(src[0]), ipaddress.ip_address(dst[0])
    family = 0x11 if s.version == 4 else 0x21
    body = s.packed + d.packed + src[1].to_bytes(2, "big") + dst[1].to_bytes(2, "big")
    return V2_SIGNATURE + bytes((0x21, family)) + len(body).to_bytes(2, "big") + body
