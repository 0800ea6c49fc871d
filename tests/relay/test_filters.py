"""The destination filter: global unicast by default, allow/deny ranges, the port rule."""

import ipaddress

import pytest

from relay import filters
from relay.filters import DestinationFilter

DEFAULT = DestinationFilter()
ip = ipaddress.ip_address

REFUSED_BY_DEFAULT = [
    "127.0.0.1", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1", "100.64.0.1",
    "169.254.169.254", "169.254.1.1", "0.0.0.0", "224.0.0.1", "239.255.255.250",
    "255.255.255.255", "240.0.0.1", "192.0.2.1", "198.51.100.1", "203.0.113.1", "198.18.0.1",
    "192.0.0.8", "::1", "::", "fe80::1", "fc00::1", "fd12:3456::1", "ff02::1", "2001:db8::1",
    "::ffff:10.0.0.1", "::ffff:8.8.8.8", "64:ff9b::a00:1", "2002:a00:1::1", "2001::1", "3fff::1",
]
ALLOWED_BY_DEFAULT = ["8.8.8.8", "1.1.1.1", "84.17.53.155", "2606:4700::1111", "2a00:1450::1"]


@pytest.mark.parametrize("address", REFUSED_BY_DEFAULT)
def test_non_global_destinations_are_refused_by_default(address):
    assert DEFAULT.verdict(ip(address), 9993) == filters.NOT_GLOBAL


@pytest.mark.parametrize("address", ALLOWED_BY_DEFAULT)
def test_global_unicast_destinations_are_allowed(address):
    assert DEFAULT.verdict(ip(address), 9993) is None


@pytest.mark.parametrize("port, verdict", [(1, filters.LOW_PORT), (443, filters.LOW_PORT), (1024, filters.LOW_PORT), (1025, None), (65535, None)])
def test_privileged_ports_are_refused(port, verdict):
    assert DEFAULT.verdict(ip("8.8.8.8"), port) == verdict


def test_an_allowed_range_opens_private_addresses():
    f = DestinationFilter.from_cidrs(allow=["10.0.0.0/8"])
    assert f.verdict(ip("10.9.9.9"), 9993) is None
    assert f.verdict(ip("192.168.1.1"), 9993) == filters.NOT_GLOBAL


def test_deny_wins_over_allow_and_over_the_default():
    f = DestinationFilter.from_cidrs(allow=["10.0.0.0/8"], deny=["10.1.0.0/16", "8.8.8.0/24"])
    assert f.verdict(ip("10.1.2.3"), 9993) == filters.DENIED
    assert f.verdict(ip("10.2.2.3"), 9993) is None
    assert f.verdict(ip("8.8.8.8"), 9993) == filters.DENIED


def test_the_port_rule_applies_to_allowed_ranges_too():
    f = DestinationFilter.from_cidrs(allow=["127.0.0.0/8"])
    assert f.verdict(ip("127.0.0.1"), 80) == filters.LOW_PORT
    assert DestinationFilter.from_cidrs(allow=["127.0.0.0/8"], min_port=1).verdict(ip("127.0.0.1"), 80) is None


def test_ipv6_ranges_can_be_allowed():
    f = DestinationFilter.from_cidrs(allow=["::1/128"])
    assert f.verdict(ip("::1"), 9993) is None


@pytest.mark.parametrize("text", ["10.0.0.1/8", "banana", "10.0.0.0/33"])
def test_bad_cidrs_are_reported_with_the_text(text):
    with pytest.raises(ValueError, match=text.split("/")[0]):
        DestinationFilter.from_cidrs(allow=[text])


# -- the compiled filter: the same verdicts as the rules, as integer ranges ---------------

from hypothesis import given, settings, strategies as st  # noqa: E402

CUSTOM = DestinationFilter.from_cidrs(allow=["10.0.0.0/8", "127.0.0.0/8", "fd00::/8"], deny=["10.1.0.0/16", "8.8.8.0/24", "2606:4700::/32"], min_port=1)
FILTERS = {"default": DEFAULT, "custom": CUSTOM}


def boundary_addresses(f: DestinationFilter, version: int):
    """Every rule's first and last address and their neighbours: where a range table errs."""
    networks = [n for n in (*f.allow, *f.deny, *filters.NON_GLOBAL_V4, *filters.NON_GLOBAL_V6, filters.GLOBAL_UNICAST_V6) if n.version == version]
    top = (1 << (32 if version == 4 else 128)) - 1
    for n in networks:
        for value in (int(n.network_address) - 1, int(n.network_address), int(n.broadcast_address), int(n.broadcast_address) + 1):
            if 0 <= value <= top:
                yield ipaddress.ip_address(value) if version == 4 else ipaddress.IPv6Address(value)


@pytest.mark.parametrize("name", FILTERS)
def test_the_compiled_filter_agrees_with_the_rules_at_every_range_boundary(name):
    f = FILTERS[name]
    compiled = f.compile()
    port = (9993).to_bytes(2, "big")
    for address in boundary_addresses(f, 4):
        assert compiled.verdict_for_prefix(b"\x04" + address.packed + port) == f.verdict(address, 9993), address
    for address in boundary_addresses(f, 6):
        assert compiled.verdict_for_prefix(b"\x06" + address.packed + port) == f.verdict(address, 9993), address


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(sorted(FILTERS)), st.integers(0, 2**32 - 1), st.integers(0, 2**128 - 1), st.integers(0, 65535))
def test_the_compiled_filter_agrees_with_the_rules_for_any_address_and_port(name, v4, v6, port):
    f = FILTERS[name]
    compiled = f.compile()
    a4, a6 = ipaddress.IPv4Address(v4), ipaddress.IPv6Address(v6)
    port_bytes = port.to_bytes(2, "big")
    assert compiled.verdict_for_prefix(b"\x04" + a4.packed + port_bytes) == f.verdict(a4, port)
    assert compiled.verdict_for_prefix(b"\x06" + a6.packed + port_bytes) == f.verdict(a6, port)


def test_the_compiled_filter_is_a_few_ranges():
    compiled = DEFAULT.compile()
    assert compiled.v4_starts == sorted(compiled.v4_starts) and compiled.v4_starts[0] == 0
    assert len(compiled.v4_starts) < 40 and len(compiled.v6_starts) < 40
