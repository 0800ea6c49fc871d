"""PROXY protocol v1/v2 parsing."""

import ipaddress

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from relay import proxy_protocol
from relay.protocol import ProtocolError

SRC, DST = ("198.51.100.7", 40000), ("10.0.0.1", 443)


@pytest.mark.parametrize("encode", [proxy_protocol.encode_v1, proxy_protocol.encode_v2], ids=["v1", "v2"])
def test_a_header_yields_the_client_address_and_its_length(encode):
    header = encode(SRC, DST)
    assert proxy_protocol.parse(header + b"rest") == (SRC, len(header))


@pytest.mark.parametrize("encode", [proxy_protocol.encode_v1, proxy_protocol.encode_v2], ids=["v1", "v2"])
@pytest.mark.parametrize("src,dst", [(SRC, DST), (("2001:db8::7", 1234), ("2001:db8::1", 8443))], ids=["ipv4", "ipv6"])
def test_the_header_keeps_the_destination_the_client_reached(encode, src, dst):
    header = encode(src, dst)
    assert proxy_protocol.parse_header(header + b"rest") == (src, dst, len(header))


def test_a_header_without_addresses_has_no_destination_either():
    assert proxy_protocol.parse_header(b"PROXY UNKNOWN\r\n") == (None, None, 15)


@pytest.mark.parametrize("encode", [proxy_protocol.encode_v1, proxy_protocol.encode_v2], ids=["v1", "v2"])
def test_ipv6_clients_are_parsed(encode):
    src = ("2001:db8::7", 1234)
    assert proxy_protocol.parse(encode(src, ("2001:db8::1", 443)))[0] == src


@pytest.mark.parametrize("encode", [proxy_protocol.encode_v1, proxy_protocol.encode_v2], ids=["v1", "v2"])
def test_a_partial_header_asks_for_more(encode):
    header = encode(SRC, DST)
    for cut in range(len(header)):
        assert proxy_protocol.parse(header[:cut]) is None


def test_v1_unknown_and_v2_local_mean_use_the_socket_address():
    assert proxy_protocol.parse(b"PROXY UNKNOWN\r\n") == (None, 15)
    local = proxy_protocol.V2_SIGNATURE + bytes((0x20, 0x00, 0, 0))
    assert proxy_protocol.parse(local) == (None, 16)


@pytest.mark.parametrize("data", [
    b"\x17\x03\x03\x00\x04abcd",
    b"GET / HTTP/1.1\r\n",
    b"PROXY TCP4 1.2.3.4\r\n",
    b"PROXY TCP4 banana 1.2.3.4 1 2\r\n",
    b"PROXY TCP6 1.2.3.4 1.2.3.4 1 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 2\r\n",
    b"PROXY " + b"x" * 120,
    proxy_protocol.V2_SIGNATURE + bytes((0x31, 0x11, 0, 12)) + bytes(12),
    b"\r\n\r\nnope",
], ids=["tls-record", "http", "v1-short", "v1-bad-ip", "v1-family-mismatch", "v1-bad-port", "v1-too-long", "v2-version-3", "v2-bad-signature"])
def test_anything_else_is_a_protocol_error(data):
    with pytest.raises(ProtocolError) as err:
        proxy_protocol.parse(data)
    assert err.value.reason == "proxy_protocol_error"


@pytest.mark.parametrize("line", [
    b"PROXY TCP4 198.51.100.7 10.0.0.1 +4000 443\r\n",
    b"PROXY TCP4 198.51.100.7 10.0.0.1 0x50 443\r\n",
    b"PROXY TCP4 198.51.100.7 10.0.0.1 4_000 443\r\n",
    b"PROXY TCP4 198.51.100.7 10.0.0.1 4000 +443\r\n",
    b"PROXY TCP4 198.51.100.7 10.0.0.1 4000 70000\r\n",
    "PROXY TCP4 198.51.100.7 10.0.0.1 ٤٠٠٠ 443\r\n".encode(),
    b"PROXY TCP4 198.51.100.7 10.0.0.1 04000 443\r\n",
    b"PROXY TCP6 fe80::1%eth0 fe80::2 4000 443\r\n",
    b"PROXY TCP6 2001:db8::1 fe80::2%1 4000 443\r\n",
    b"PROXY TCP4 198.51.100.7 banana 4000 443\r\n",
    b"PROXY TCP4 198.51.100.7  10.0.0.1 4000 443\r\n",
    b"PROXY TCP4 198.51.100.7 10.0.0.1 4000 443 \r\n",
], ids=["plus", "hex", "underscore", "plus-dst", "dst-range", "arabic-digits", "leading-zero", "zone-src", "zone-dst", "bad-dst", "double-space", "trailing-space"])
def test_v1_is_parsed_strictly(line):
    with pytest.raises(ProtocolError) as err:
        proxy_protocol.parse(line)
    assert err.value.reason == "proxy_protocol_error"


@pytest.mark.parametrize("encode", [proxy_protocol.encode_v1, proxy_protocol.encode_v2], ids=["v1", "v2"])
def test_an_ipv4_mapped_source_is_reported_as_ipv4(encode):
    assert proxy_protocol.parse(encode(("::ffff:198.51.100.7", 4000), ("::ffff:10.0.0.1", 443)))[0] == ("198.51.100.7", 4000)


addresses = st.sampled_from([("198.51.100.7", 4000), ("::ffff:198.51.100.7", 0), ("2001:db8::7", 65535), ("10.0.0.1", 443)])
headers = st.builds(
    lambda encode, src, dst: encode(src, dst if (":" in dst[0]) == (":" in src[0]) else src),
    st.sampled_from([proxy_protocol.encode_v1, proxy_protocol.encode_v2]), addresses, addresses,
)


@st.composite
def mutated_headers(draw):
    """Valid v1/v2 headers with byte-level mutations (so they get past the signature)."""
    data = bytearray(draw(headers))
    for _ in range(draw(st.integers(0, 3))):
        pos = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["set", "cut", "insert"]))
        if op == "set" and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[pos:pos + draw(st.integers(1, 4))]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=4) | st.sampled_from([b"%eth0", b"+", b"0", b" ", b"\xff"]))
    return bytes(data) + draw(st.binary(max_size=8))


@settings(max_examples=500, deadline=None)
@given(data=mutated_headers())
@example(data=proxy_protocol.V2_SIGNATURE + b"!!\x00$" + bytes(8) + b"\xff\xff\xc63d\x07" + bytes(10) + b"\xff\xff\xc63d\x07" + bytes(6))
def test_mutated_headers_parse_or_fail_with_the_reason_never_otherwise(data):
    try:
        parsed = proxy_protocol.parse(data)
    except ProtocolError as exc:
        assert exc.reason == "proxy_protocol_error"
        return
    if parsed is not None and parsed[0] is not None:
        (host, port), consumed = parsed
        ip = ipaddress.ip_address(host)
        assert "%" not in host and getattr(ip, "ipv4_mapped", None) is None and 0 <= port <= 65535
        assert 0 < consumed <= len(data)
