"""Flags and ZT_RELAY_* variables map onto RelayConfig; errors name the setting."""

import ipaddress
import subprocess
import sys

import pytest

from relay.cli import UsageError, parse_config
from relay.config import Endpoint


def test_positional_addresses_listen_on_ipv4_and_ipv6():
    config = parse_config(["0.0.0.0:443", "[::]:443"], {})
    assert config.listen == (Endpoint("0.0.0.0", 443), Endpoint("::", 443))


def test_defaults_are_safe_for_the_open_internet():
    config = parse_config([], {})
    assert config.listen == (Endpoint("0.0.0.0", 443),)
    assert config.min_destination_port == 1025
    assert config.allow_destination == ()
    assert config.handshake_timeout == 10 and config.idle_timeout == 300 and config.drain_timeout == 30
    assert config.health_listen == Endpoint("0.0.0.0", 9090)


def test_every_setting_reads_its_environment_variable():
    env = {
        "ZT_RELAY_LISTEN": "127.0.0.1:8443, [::1]:8443",
        "ZT_RELAY_ALLOW_DESTINATION": "10.0.0.0/8,192.168.0.0/16",
        "ZT_RELAY_IDLE_TIMEOUT": "60",
        "ZT_RELAY_PROXY_PROTOCOL": "true",
        "ZT_RELAY_HEALTH_LISTEN": "off",
        "ZT_RELAY_LEGACY_TARGET": "127.0.0.1:9993",
        "ZT_RELAY_WORKERS": "2",
    }
    config = parse_config([], env)
    assert config.listen == (Endpoint("127.0.0.1", 8443), Endpoint("::1", 8443))
    assert config.allow_destination == ("10.0.0.0/8", "192.168.0.0/16")
    assert config.idle_timeout == 60.0
    assert config.proxy_protocol is True
    assert config.health_listen is None
    assert config.legacy_target == Endpoint("127.0.0.1", 9993)
    assert config.workers == 2


def test_a_flag_wins_over_its_variable():
    config = parse_config(["--idle-timeout", "5", "--allow-destination", "10.0.0.0/8"], {"ZT_RELAY_IDLE_TIMEOUT": "60", "ZT_RELAY_ALLOW_DESTINATION": "1.0.0.0/8"})
    assert config.idle_timeout == 5.0
    assert config.allow_destination == ("10.0.0.0/8",)


@pytest.mark.parametrize("argv, env, named", [
    (["--idle-timeout", "soon"], {}, "--idle-timeout (ZT_RELAY_IDLE_TIMEOUT)"),
    (["--idle-timeout", "0"], {}, "--idle-timeout (ZT_RELAY_IDLE_TIMEOUT)"),
    ([], {"ZT_RELAY_ALLOW_DESTINATION": "10.0.0.1/8"}, "--allow-destination (ZT_RELAY_ALLOW_DESTINATION)"),
    (["localhost:443"], {}, "LISTEN (ZT_RELAY_LISTEN)"),
    (["::443"], {}, "LISTEN (ZT_RELAY_LISTEN)"),
    (["0.0.0.0:99999"], {}, "LISTEN (ZT_RELAY_LISTEN)"),
    (["--max-record-size", "10"], {}, "--max-record-size"),
    (["--log-format", "xml"], {}, "--log-format"),
    (["--workers", "2", "127.0.0.1:0"], {}, "--workers"),
    ([], {"ZT_RELAY_PROXY_PROTOCOL": "maybe"}, "--proxy-protocol (ZT_RELAY_PROXY_PROTOCOL)"),
    (["--min-destination-port", "0"], {}, "--min-destination-port"),
])
def test_invalid_settings_fail_with_a_message_naming_the_flag_and_variable(argv, env, named):
    with pytest.raises(UsageError) as err:
        parse_config(argv, env)
    assert str(err.value).startswith(named)


def test_the_console_script_exits_2_with_the_message_before_starting():
    proc = subprocess.run([sys.executable, "-m", "relay", "--handshake-timeout", "-1"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "zt-relay: error: --handshake-timeout (ZT_RELAY_HANDSHAKE_TIMEOUT): must be a positive number of seconds" in proc.stderr


NUMERIC_FLAGS = [
    "--min-destination-port", "--max-record-size", "--min-packet-size", "--handshake-timeout", "--idle-timeout",
    "--reply-window", "--max-connections", "--max-connections-per-ip", "--tunnel-rate-pps", "--tunnel-rate-bps",
    "--global-rate-pps", "--global-rate-bps", "--write-buffer-limit", "--drain-timeout", "--workers",
    "--ipv6-per-ip-prefix", "--new-destination-rate", "--sniff-timeout", "--fallback-max-connections",
    "--fallback-idle-timeout",
]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "Infinity", "NaN"])
@pytest.mark.parametrize("flag", NUMERIC_FLAGS)
def test_nan_and_infinity_are_refused_for_every_numeric_flag(flag, value):
    env_name = "ZT_RELAY_" + flag[2:].replace("-", "_").upper()
    for argv, env in (([f"{flag}={value}"], {}), ([], {env_name: value})):
        with pytest.raises(UsageError) as err:
            parse_config(argv, env)
        assert str(err.value).startswith(f"{flag} ({env_name})")


def test_an_ipv6_legacy_target_is_refused_at_start():
    with pytest.raises(UsageError) as err:
        parse_config(["--legacy-target", "[2001:db8::1]:9993"], {})
    assert str(err.value).startswith("--legacy-target (ZT_RELAY_LEGACY_TARGET)")


def test_proxy_sources_are_cidrs_and_repeatable():
    config = parse_config(["--proxy-protocol-from", "10.0.0.0/8", "--proxy-protocol-from", "fd00::/8"], {})
    assert config.proxy_protocol_from == ("10.0.0.0/8", "fd00::/8")
    assert parse_config([], {"ZT_RELAY_PROXY_PROTOCOL_FROM": "10.0.0.0/8,192.168.0.0/16"}).proxy_protocol_from == ("10.0.0.0/8", "192.168.0.0/16")
    with pytest.raises(UsageError) as err:
        parse_config(["--proxy-protocol-from", "10.0.0.1/8"], {})
    assert str(err.value).startswith("--proxy-protocol-from (ZT_RELAY_PROXY_PROTOCOL_FROM)")


def test_without_proxy_sources_only_private_and_loopback_balancers_are_trusted():
    from relay.config import RelayConfig
    trusted = RelayConfig().proxy_trusted
    assert trusted("10.1.2.3") and trusted("127.0.0.1") and trusted("192.168.1.1") and trusted("fd00::1")
    assert not trusted("198.51.100.1") and not trusted("8.8.8.8") and not trusted("2001:4860::1")


def test_own_addresses_come_from_the_flag_or_a_comma_separated_variable():
    assert parse_config(["--own-address", "198.18.0.1", "--own-address", "2001:db8::1"], {}).own_address == ("198.18.0.1", "2001:db8::1")
    assert parse_config([], {"ZT_RELAY_OWN_ADDRESS": "198.18.0.1,198.18.0.2"}).own_address == ("198.18.0.1", "198.18.0.2")
    refused = parse_config(["--own-address", "::ffff:198.18.0.3", "--own-address", "fe80::1%eth0"], {}).destination_filter()
    assert refused.verdict(ipaddress.ip_address("198.18.0.3"), 9993) == "destination_own_address"
    assert refused.verdict(ipaddress.ip_address("fe80::1"), 9993) == "destination_own_address"
    with pytest.raises(UsageError) as err:
        parse_config(["--own-address", "198.18.0.0/15"], {})
    assert str(err.value).startswith("--own-address (ZT_RELAY_OWN_ADDRESS)")


def test_the_new_destination_rate_has_a_default_and_can_be_turned_off():
    assert parse_config([], {}).new_destination_rate == 64
    assert parse_config(["--new-destination-rate", "0"], {}).new_destination_rate == 0
    with pytest.raises(UsageError):
        parse_config(["--new-destination-rate", "-1"], {})


def test_the_fallback_settings_read_flags_and_variables_and_bad_values_name_the_flag():
    env = {"ZT_RELAY_FALLBACK": "127.0.0.1:8443", "ZT_RELAY_FALLBACK_PROXY_PROTOCOL": "v2", "ZT_RELAY_SNIFF_TIMEOUT": "1.5"}
    config = parse_config([], env)
    assert (config.fallback, config.fallback_proxy_protocol, config.sniff_timeout) == (Endpoint("127.0.0.1", 8443), "v2", 1.5)
    assert parse_config(["--fallback", "site.internal:443"], {}).fallback == Endpoint("site.internal", 443)
    assert parse_config([], {}).fallback is None
    for argv, flag in ((["--fallback-proxy-protocol", "v3"], "--fallback-proxy-protocol (ZT_RELAY_FALLBACK_PROXY_PROTOCOL)"),
                       (["--fallback", "127.0.0.1"], "--fallback (ZT_RELAY_FALLBACK)"),
                       (["--fallback", "127.0.0.1:0"], "--fallback (ZT_RELAY_FALLBACK)"),
                       (["--sniff-timeout", "0"], "--sniff-timeout (ZT_RELAY_SNIFF_TIMEOUT)"),
                       (["--fallback-max-connections", "0"], "--fallback-max-connections (ZT_RELAY_FALLBACK_MAX_CONNECTIONS)")):
        with pytest.raises(UsageError) as info:
            parse_config(argv, {})
        assert str(info.value).startswith(flag), str(info.value)


@pytest.mark.parametrize("flag", ["--allow-destination", "--deny-destination", "--proxy-protocol-from"])
@pytest.mark.parametrize("cidr, ipv4", [
    ("::ffff:0:0/96", "0.0.0.0/0"),
    ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
    ("::ffff:198.18.0.1", "198.18.0.1/32"),
    ("::FFFF:c612:0/112", "198.18.0.0/16"),
], ids=["whole_block", "rfc1918", "one_address", "hex_upper"])
def test_an_ipv4_mapped_cidr_is_refused_naming_the_flag_and_its_ipv4_form(flag, cidr, ipv4):
    """A mapped range would be a dead rule (tunnels' IPv6 sockets are V6ONLY, and PROXY
    peers are compared as IPv4) or, read as IPv4, a silent widening (``::ffff:0:0/96`` is
    every IPv4 address): the operator is told what to write instead."""
    env_name = "ZT_RELAY_" + flag[2:].replace("-", "_").upper()
    for argv, env in (([flag, cidr], {}), ([], {env_name: cidr})):
        with pytest.raises(UsageError) as err:
            parse_config(argv, env)
        message = str(err.value)
        assert message.startswith(f"{flag} ({env_name})"), message
        assert "IPv4-mapped" in message and f"write {ipv4}" in message, message


@pytest.mark.parametrize("cidr", ["::/0", "::/8", "::fffe:0:0/96", "64:ff9b::/96"])
def test_ipv6_ranges_around_the_mapped_block_are_still_accepted(cidr):
    """Only ranges inside ``::ffff:0:0/96`` are mapped: a wider IPv6 rule stays an IPv6 rule."""
    assert parse_config(["--deny-destination", cidr], {}).deny_destination == (cidr,)
