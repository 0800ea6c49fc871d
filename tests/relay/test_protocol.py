"""The record codec: reassembly at every split point, bounds, and the address format."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay import protocol
from relay.protocol import ProtocolError, RecordReader


def collect(max_payload: int = protocol.DEFAULT_MAX_RECORD_PAYLOAD):
    records: list[bytes] = []
    reader = RecordReader(lambda view, start, end: records.append(view[start:end]), max_payload)
    return reader, records


HELLO = protocol.encode_hello(1, 14, 2)
PACKET = protocol.encode_packet("203.0.113.7", 9993, b"\x01" * 40)


def test_hello_is_nine_bytes_with_the_version():
    assert HELLO == bytes([0x17, 3, 3, 0, 4, 1, 14, 0, 2])
    assert protocol.decode_hello(HELLO[5:]) == "1.14.2"


def test_a_packet_record_carries_type_address_port_and_packet():
    assert PACKET[:5] == bytes([0x17, 3, 3, 0, 47])
    assert PACKET[5:12] == bytes([4, 203, 0, 113, 7, 0x27, 0x09])
    assert protocol.decode_address(PACKET[5:]) == ("203.0.113.7", 9993, 7)


def test_an_ipv6_address_takes_nineteen_bytes():
    payload = protocol.encode_address("2001:db8::1", 9993) + b"p" * 20
    assert payload[0] == 6 and len(payload) == 19 + 20
    assert protocol.decode_address(payload) == ("2001:db8::1", 9993, 19)


def test_several_records_in_one_read_are_all_delivered():
    reader, records = collect()
    reader.feed(HELLO + PACKET + PACKET)
    assert records == [HELLO[5:], PACKET[5:], PACKET[5:]]
    assert reader.buffered == 0


def test_records_fed_one_byte_at_a_time_are_reassembled():
    reader, records = collect()
    stream = HELLO + PACKET + PACKET
    for i in range(len(stream)):
        reader.feed(stream[i:i + 1])
    assert records == [HELLO[5:], PACKET[5:], PACKET[5:]]
    assert reader.buffered == 0


@pytest.mark.parametrize("cut", range(1, len(PACKET)), ids=lambda c: f"cut{c}")
def test_a_record_split_at_any_point_is_delivered_once_complete(cut):
    reader, records = collect()
    reader.feed(PACKET[:cut])
    assert records == []
    reader.feed(PACKET[cut:] + HELLO)
    assert records == [PACKET[5:], HELLO[5:]]


def test_a_header_that_is_not_tls_application_data_is_a_protocol_error():
    reader, records = collect()
    with pytest.raises(ProtocolError) as err:
        reader.feed(HELLO + b"\x16\x03\x01\x00\x04abcd")
    assert err.value.reason == "bad_record_header"
    assert records == [HELLO[5:]]  # what came before the bad record was delivered


def test_an_oversize_length_fails_before_its_payload_is_buffered():
    reader, _ = collect(max_payload=100)
    with pytest.raises(ProtocolError) as err:
        reader.feed(b"\x17\x03\x03\x00\x65")  # 101, only the header sent
    assert err.value.reason == "record_too_large"


def test_an_empty_record_is_delivered_as_an_empty_payload():
    reader, records = collect()
    reader.feed(b"\x17\x03\x03\x00\x00")
    assert records == [b""]


def test_the_callback_may_be_replaced_between_records():
    seen = []
    reader = RecordReader(lambda v, s, e: None)

    def first(view, start, end):
        seen.append(("first", end - start))
        reader.on_record = lambda v, s, e: seen.append(("then", e - s))

    reader.on_record = first
    reader.feed(HELLO + PACKET)
    assert seen == [("first", 4), ("then", len(PACKET) - 5)]


@pytest.mark.parametrize("payload, reason", [
    (b"", "bad_address_type"),
    (b"\x05" + bytes(10), "bad_address_type"),
    (b"\x04\x01\x02", "bad_address_type"),
])
def test_malformed_addresses_are_rejected_with_a_reason(payload, reason):
    with pytest.raises(ProtocolError) as err:
        protocol.decode_address(payload)
    assert err.value.reason == reason


def test_hello_of_the_wrong_size_is_rejected():
    with pytest.raises(ProtocolError):
        protocol.decode_hello(b"\x01\x02\x03")


def test_max_payload_must_fit_the_length_field():
    with pytest.raises(ValueError):
        RecordReader(lambda v, s, e: None, 70000)


payloads = st.lists(st.binary(max_size=300), max_size=20)


@settings(max_examples=300, deadline=None)
@given(payloads=payloads, cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30))
def test_any_split_of_a_valid_stream_yields_exactly_the_records_sent(payloads, cuts):
    stream = b"".join(protocol.encode_record(p) for p in payloads)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    reader, records = collect()
    for a, b in zip(points, points[1:]):
        reader.feed(stream[a:b])
    assert records == payloads
    assert reader.buffered == 0


@settings(max_examples=300, deadline=None)
@given(chunks=st.lists(st.binary(max_size=200), max_size=20))
def test_arbitrary_bytes_never_crash_the_reader(chunks):
    reader, records = collect(max_payload=1000)
    try:
        for chunk in chunks:
            reader.feed(chunk)
    except ProtocolError as exc:
        assert exc.reason in ("bad_record_header", "record_too_large")
    # whatever was delivered was whole records within the bound
    assert all(len(r) <= 1000 for r in records)
    assert reader.buffered < protocol.HEADER_SIZE + 1000


def test_the_callback_gets_immutable_bytes_even_for_split_records():
    kinds = []
    reader = RecordReader(lambda data, s, e: kinds.append(type(data)))
    reader.feed(PACKET[:10])
    reader.feed(PACKET[10:] + PACKET)
    assert kinds == [bytes, bytes]


def test_a_partial_record_is_not_parsed_again_until_it_can_complete():
    reader, records = collect()
    reader.feed(PACKET[:6])
    assert reader._needed == len(PACKET)  # header seen: waits for the whole record
    for i in range(6, len(PACKET) - 1):
        reader.feed(PACKET[i:i + 1])
    assert records == [] and reader.buffered == len(PACKET) - 1
    reader.feed(PACKET[-1:])
    assert records == [PACKET[5:]] and reader.buffered == 0
