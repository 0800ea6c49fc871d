"""Token buckets and the connection limiter, with time passed in."""

from relay import stats
from relay.limits import ConnectionLimiter, RateLimit, TokenBucket


def test_a_bucket_starts_full_and_refills_at_its_rate():
    bucket = TokenBucket(10, now=0.0)
    assert sum(bucket.take(1) for _ in range(15)) == 10
    bucket.refill(0.5)
    assert sum(bucket.take(1) for _ in range(15)) == 5


def test_a_bucket_never_holds_more_than_one_second():
    bucket = TokenBucket(10, now=0.0)
    bucket.refill(100.0)
    assert bucket.tokens == 10


def test_rate_limit_checks_packets_and_bytes_together():
    limit = RateLimit(pps=100, bps=1000, now=0.0)
    assert limit.allow(600)
    assert not limit.allow(600)  # bytes exhausted, packets left
    assert limit.packets.tokens == 99  # a refused packet takes no packet token
    assert limit.allow(400)


def test_a_zero_rate_is_unlimited():
    limit = RateLimit(0, 0, now=0.0)
    assert all(limit.allow(10**6) for _ in range(1000))


def test_the_limiter_caps_connections_per_address_and_in_total():
    limiter = ConnectionLimiter(max_total=3, max_per_ip=2)
    assert limiter.acquire("a") is None
    assert limiter.acquire("a") is None
    assert limiter.acquire("a") == stats.MAX_CONNECTIONS_PER_IP
    assert limiter.acquire("b") is None
    assert limiter.acquire("c") == stats.MAX_CONNECTIONS
    limiter.release("a")
    assert limiter.acquire("c") is None


def test_released_addresses_leave_no_entry_behind():
    limiter = ConnectionLimiter(10, 10)
    limiter.acquire("a")
    limiter.release("a")
    assert limiter.per_ip == {} and limiter.total == 0


def test_a_packet_rate_below_one_still_allows_one_packet_then_refills():
    limit = RateLimit(pps=0.5, bps=0, now=0.0)
    assert limit.allow(100)
    assert not limit.allow(100)
    limit.refill(1.0)
    assert not limit.allow(100)
    limit.refill(2.0)
    assert limit.allow(100)


def test_a_byte_rate_below_one_packet_lets_a_packet_through_when_full_and_keeps_the_average():
    limit = RateLimit(pps=0, bps=100, now=0.0)
    assert limit.allow(1400)
    assert not limit.allow(1)
    limit.refill(10.0)
    assert not limit.allow(1400)  # in debt by 1,300 bytes, 1,000 refilled
    limit.refill(14.0)
    assert limit.allow(1400)


def test_limiter_keys_normalise_mapped_addresses_and_group_ipv6_by_prefix():
    from relay.limits import client_key
    assert client_key("198.51.100.7", 64) == "198.51.100.7"
    assert client_key("::ffff:198.51.100.7", 64) == "198.51.100.7"
    assert client_key("2001:db8::1", 64) == client_key("2001:db8::ffff:1", 64) == "2001:db8::/64"
    assert client_key("2001:db8:0:1::1", 64) == "2001:db8:0:1::/64"
    assert client_key("2001:db8::1", 128) == "2001:db8::1"
    assert client_key("fe80::1%eth0", 64) == "fe80::/64"


def test_limiter_keys_are_parsed_once_per_address_and_the_cache_stays_bounded(monkeypatch):
    """Every connection needs its key (admission, the fallback's per-IP share): an address
    is parsed once, not per connection; an address sprayer can't grow the cache."""
    from relay import limits
    parsed = []
    parse = limits._parse_key
    monkeypatch.setattr(limits, "_parse_key", lambda host, prefix: parsed.append(host) or parse(host, prefix))
    monkeypatch.setattr(limits, "_keys", {})
    assert limits.client_key("198.51.100.9", 64) == limits.client_key("198.51.100.9", 64) == "198.51.100.9"
    assert limits.client_key("2001:db8::9", 64) == "2001:db8::/64"
    assert limits.client_key("2001:db8::9", 128) == "2001:db8::9"  # the prefix is part of the key
    assert parsed == ["198.51.100.9", "2001:db8::9", "2001:db8::9"]
    for i in range(limits.MAX_CACHED_KEYS + 10):
        limits.client_key(f"2001:db8::{i:x}", 64)
    assert len(limits._keys) <= limits.MAX_CACHED_KEYS
