"""The first-bytes classifier: ZeroTier hello, legacy record, or the fallback backend."""

import os

import pytest
from hypothesis import given, strategies as st

from relay import protocol, sniff

HELLO = protocol.encode_hello(1, 14, 2)
LEGACY_RECORD = protocol.encode_record(b"\x00" * 300)  # a pre-1.2 client's bare packet (length 01 2c)
CLIENT_HELLO = bytes.fromhex("16030100f8010000f40303") + os.urandom(32)
OTHERS = {
    "tls_client_hello": CLIENT_HELLO,
    "http_get": b"GET / HTTP/1.1\r\nHost: example\r\n\r\n",
    "http2_preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "ssh": b"SSH-2.0-OpenSSH_9.2\r\n",
    "tls_alert": bytes.fromhex("15030300020228"),
    "app_data_wrong_version": bytes.fromhex("1703010004") + b"\x01\x0e\x00\x02",
}


def decide(stream: bytes, legacy: bool = False) -> tuple[str, int]:
    """Feeds ``stream`` one byte at a time; the verdict and how many bytes it needed."""
    for n in range(len(stream) + 1):
        verdict = sniff.classify(stream[:n], legacy)
        if verdict != sniff.NEED_DATA:
            return verdict, n
    return sniff.classify(stream, legacy, eof=True), len(stream)


@pytest.mark.parametrize("legacy", [False, True], ids=["plain", "legacy"])
def test_a_hello_is_zerotier_after_exactly_five_bytes(legacy):
    assert decide(HELLO, legacy) == (sniff.ZEROTIER, 5)
    assert sniff.classify(HELLO, legacy) == sniff.ZEROTIER


def test_a_record_of_another_length_is_legacy_only_with_a_legacy_target():
    assert decide(LEGACY_RECORD, legacy=True) == (sniff.LEGACY, 4)
    assert decide(protocol.encode_record(b"\x00" * 5), legacy=True) == (sniff.LEGACY, 5)
    assert decide(LEGACY_RECORD, legacy=False) == (sniff.FALLBACK, 4)
    assert decide(protocol.encode_record(b"\x00" * 5), legacy=False) == (sniff.FALLBACK, 5)


@pytest.mark.parametrize("legacy", [False, True], ids=["plain", "legacy"])
@pytest.mark.parametrize("name", sorted(OTHERS))
def test_anything_else_goes_to_the_backend_at_the_first_byte_that_rules_zerotier_out(name, legacy):
    data = OTHERS[name]
    verdict, needed = decide(data, legacy)
    assert verdict == sniff.FALLBACK
    first_mismatch = next(i for i in range(5) if data[i] != sniff.HELLO_HEADER[i]) + 1
    assert needed == (3 if name == "app_data_wrong_version" else first_mismatch)


def test_nothing_yet_needs_data_and_an_empty_or_cut_header_at_eof_goes_to_the_backend():
    assert sniff.classify(b"") == sniff.NEED_DATA
    assert sniff.classify(b"", eof=True) == sniff.FALLBACK
    for n in range(5):
        assert sniff.classify(HELLO[:n]) == sniff.NEED_DATA
        assert sniff.classify(HELLO[:n], eof=True) == sniff.FALLBACK
        assert sniff.classify(HELLO[:n], legacy=True, eof=True) == sniff.FALLBACK


@given(st.binary(min_size=5, max_size=64), st.booleans())
def test_only_the_first_five_bytes_matter(data, legacy):
    assert sniff.classify(data, legacy) == sniff.classify(data[:5], legacy) != sniff.NEED_DATA


@given(st.binary(min_size=5, max_size=16), st.booleans())
def test_zerotier_is_exactly_the_hello_header(data, legacy):
    verdict = sniff.classify(data, legacy)
    assert (verdict == sniff.ZEROTIER) == (data[:5] == sniff.HELLO_HEADER)
    assert (verdict == sniff.LEGACY) == (legacy and data[:3] == protocol.RECORD_TYPE and data[:5] != sniff.HELLO_HEADER)


@given(st.integers(0, 255).filter(lambda b: b != sniff.RECORD_FIRST), st.binary(max_size=8), st.booleans(), st.booleans())
def test_any_other_first_byte_goes_to_the_backend_whatever_follows(first, rest, legacy, eof):
    """The sniffer decides on ``RECORD_FIRST`` alone before calling ``classify`` (fallback.py)."""
    assert sniff.classify(bytes([first]) + rest, legacy, eof) == sniff.FALLBACK
    assert sniff.classify(bytes([sniff.RECORD_FIRST]), legacy) == sniff.NEED_DATA
