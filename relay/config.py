"""The relay's settings: one dataclass, validated once at start.

``cli.py`` maps flags and ``ZT_RELAY_*`` variables onto it. Defaults are safe for a relay
on the open internet; each field says why it has its default.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import json
import math
from dataclasses import dataclass

from relay import backend_pool, filters, limits, protocol

#: Where PROXY headers are trusted when ``--proxy-protocol-from`` is not given.
DEFAULT_PROXY_SOURCES = ("127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "::1/128", "fc00::/7")


class ConfigError(ValueError):
    """A setting is invalid; ``setting`` names the field (the CLI maps it to its flag)."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(message)
        self.setting = setting


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class RelayConfig:
    listen: tuple[Endpoint, ...] = (Endpoint("0.0.0.0", 443),)
    """TCP addresses to accept tunnels on. 443 because restrictive networks let it through."""

    health_listen: Endpoint | None = Endpoint("0.0.0.0", 9090)
    """Where ``/healthz``, ``/readyz`` and ``/metrics`` are served; None turns it off."""

    allow_destination: tuple[str, ...] = ()
    """CIDR ranges added to the global unicast default (private planets, tests)."""

    deny_destination: tuple[str, ...] = ()
    """CIDR ranges refused even if allowed; deny always wins."""

    own_address: tuple[str, ...] = ()
    """Addresses refused as destinations besides the relay's own interface addresses
    (found at start): the node's addresses and the load balancer's, which are not on the
    pod's interfaces. Refused even inside an allowed range."""

    new_destination_rate: int = 64
    """New destinations (not sent to within the reply window) one tunnel may add per
    second, with a burst of 8 seconds' worth; 0 means unlimited. A ZeroTier node's largest
    burst is a multicast fan-out (32 recipients, ZeroTier's default multicast limit) to
    peers advertising up to 8 paths each (ZT_PUSH_DIRECT_PATHS_MAX_PER_SCOPE_AND_FAMILY),
    plus its roots: about 260; everything else re-uses destinations already in the
    window. A scanner wants thousands."""

    min_destination_port: int = filters.DEFAULT_MIN_PORT
    """Lowest UDP port a tunnel may send to. 1025 as ZeroTier's own proxy: ZeroTier never
    needs a privileged port, amplification attacks usually do."""

    max_record_size: int = protocol.DEFAULT_MAX_RECORD_PAYLOAD
    """Largest record payload in bytes, address prefix included; a larger one closes the
    tunnel. Bounds the per-tunnel reassembly buffer."""

    min_packet_size: int = 16
    """Smallest ZeroTier packet in bytes (ZeroTier's minimum fragment); smaller is dropped."""

    handshake_timeout: float = 10.0
    """Seconds a new connection has to complete its first record, so half-open
    connections can't pin file descriptors."""

    idle_timeout: float = 300.0
    """Seconds without traffic either way before a tunnel is closed (ZeroTier's proxy: 300)."""

    reply_window: float = 120.0
    """Seconds a destination stays allowed to send replies after the tunnel last sent to
    it (a stateful-firewall rule: unsolicited datagrams are dropped). Enforced with two
    generations, so an entry lives between one and two windows."""

    max_connections: int = 20000
    """Concurrent TCP connections per process; more are refused at accept."""

    max_connections_per_ip: int = 64
    """Concurrent connections from one client address; one NAT rarely hides more nodes."""

    tunnel_rate_pps: float = 0.0
    """Packets per second one tunnel may send to UDP (token bucket, burst one second);
    0 means unlimited."""

    tunnel_rate_bps: float = 0.0
    """Bytes per second one tunnel may send to UDP; 0 means unlimited."""

    global_rate_pps: float = 0.0
    """Packets per second all tunnels of the process may send to UDP; 0 means unlimited."""

    global_rate_bps: float = 0.0
    """Bytes per second all tunnels of the process may send to UDP; 0 means unlimited."""

    write_buffer_limit: int = 256 * 1024
    """Bytes queued toward one slow client before further UDP replies are dropped, so a
    client that doesn't read can't grow the relay's memory."""

    proxy_protocol: bool = False
    """Expect a PROXY protocol v1 or v2 header on every connection (behind a load
    balancer that doesn't preserve client addresses). Connections without one are closed."""

    proxy_protocol_from: tuple[str, ...] = ()
    """CIDR ranges whose PROXY headers are trusted (the load balancers). Empty means
    ``DEFAULT_PROXY_SOURCES``: loopback and private ranges, where a balancer in front of a
    pod connects from, never a client on the internet. A connection from anywhere else is
    refused, so a client reaching the port directly can't claim an address."""

    ipv6_per_ip_prefix: int = limits.DEFAULT_IPV6_PREFIX
    """IPv6 clients count against ``max_connections_per_ip`` by this prefix length (a /64
    is one subscriber's; any address in it is theirs to use)."""

    legacy_target: Endpoint | None = None
    """Where packets of pre-1.2 clients (no hello, no addresses) go; None closes them."""

    fallback: Endpoint | None = None
    """Where connections that aren't ZeroTier go, byte for byte (a website or ingress on
    the same port); None closes them as before. The host may be a DNS name, refreshed every
    10 s in the background (``fallback.DNS_CACHE_SECONDS``, ``backend_name.py``): visitors
    never wait for a lookup once it has an address. See ``fallback.py``."""

    fallback_proxy_protocol: str = "off"
    """``v1`` or ``v2``: start each backend connection with a PROXY header carrying the
    real client address (the one from ``proxy_protocol`` when that is on); ``off``."""

    sniff_timeout: float = 3.0
    """With ``fallback``: seconds a new connection may stay silent before it is handed to
    the backend, so protocols where the server speaks first see its greeting."""

    fallback_max_connections: int = 10000
    """Concurrent connections to the backend per process, apart from the tunnels' cap."""

    fallback_max_connections_per_ip: int = 0
    """Share of ``fallback_max_connections`` one client address (IPv6: prefix) keeps when
    the cap is reached: an address may use free slots beyond it, but when a connection
    from an address under its share finds the cap reached, the idlest connection of the
    address holding the most beyond its share is closed for it. 0: as
    ``max_connections_per_ip``."""

    fallback_idle_timeout: float = 300.0
    """Seconds without bytes either way before a connection to the backend is closed."""

    fallback_preconnect: int = 0
    """Connections to the backend each process keeps open and unwritten, so a site connection
    takes one instead of dialing (``preconnect.py``: at most 2 s old, checked before use,
    refilled while the site has visitors). 0 (the default): dial per connection; to a backend
    on the same host the pool measured no faster and cost ~10 % more relay CPU per connection."""

    max_memory: int | None = None
    """Bytes of memory the pod may use before new tunnels are refused (``memory_pressure``,
    from 90 % of it on, and whenever the room left can't hold one more tunnel's worst case:
    ``server.SHARE_FLOOR_RECORDS``), so that the kernel never OOM-kills it with every tunnel. None:
    the cgroup's memory limit when there is one; 0: no budget. See ``memory.py``."""

    shutdown_delay: float = 5.0
    """Seconds the listeners keep accepting after SIGTERM while /readyz already fails, so
    load balancers and kube-proxy stop sending before the port closes (closing earlier
    refuses or resets connections still routed here). The drain starts after it."""

    drain_timeout: float = 30.0
    """Seconds live tunnels keep relaying after the shutdown delay before the process exits."""

    workers: int = 1
    """Processes sharing the listen ports with SO_REUSEPORT, one per core to use."""

    log_format: str = "text"
    """``text`` for people, ``json`` for log pipelines."""

    log_level: str = "INFO"

    def __post_init__(self) -> None:
        _validate(self)

    def proxy_trusted(self, host: str) -> bool:
        """True if a PROXY header from ``host`` (the immediate peer) may be believed."""
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip.version == n.version and ip in n for n in _networks(self.proxy_protocol_from or DEFAULT_PROXY_SOURCES))

    def destination_filter(self, own: tuple[str, ...] = ()) -> filters.DestinationFilter:
        """The filter, refusing ``own_address`` and ``own`` (the interface addresses)."""
        return filters.DestinationFilter.from_cidrs(self.allow_destination, self.deny_destination, self.min_destination_port, tuple(_plain(a) for a in (*self.own_address, *own)))

    def replace(self, **changes: object) -> RelayConfig:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        """The settings as JSON, for a worker process to rebuild with ``from_json``."""
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> RelayConfig:
        """Rebuilds what ``to_json`` wrote: lists become tuples, objects Endpoints."""
        def value(v: object) -> object:
            if isinstance(v, list):
                return tuple(value(x) for x in v)
            if isinstance(v, dict):
                return Endpoint(**v)
            return v
        return cls(**{k: value(v) for k, v in json.loads(text).items()})


def parse_endpoint(text: str, setting: str) -> Endpoint:
    """Parses ``HOST:PORT`` or ``[IPV6]:PORT`` into an Endpoint."""
    text = text.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ConfigError(setting, f"{text!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ConfigError(setting, f"{text!r}: put IPv6 addresses in brackets, e.g. [::]:443")
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(setting, f"{text!r}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ConfigError(setting, f"{text!r}: port must be 0..65535")
    return Endpoint(host, port)


def _plain(host: str) -> str:
    """An address as a destination is compared: IPv4-mapped as IPv4, without a zone ID."""
    ip = ipaddress.ip_address(host.split("%", 1)[0])
    return str(ip.ipv4_mapped if ip.version == 6 and ip.ipv4_mapped is not None else ip)


@functools.lru_cache(maxsize=8)
def _networks(cidrs: tuple[str, ...]) -> tuple[filters.IPNetwork, ...]:
    return tuple(filters.parse_cidr(c) for c in cidrs)


_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "ki": 1 << 10, "mi": 1 << 20, "gi": 1 << 30}


def parse_bytes(text: str, setting: str) -> int:
    """``268435456``, ``256Mi`` or ``1G`` (Kubernetes quantities) as bytes."""
    raw = text.strip()
    digits = raw.rstrip("kKmMgGiI")
    unit = raw[len(digits):].lower()
    if unit not in _UNITS or not digits.isdigit():
        raise ConfigError(setting, f"{text!r} is not a number of bytes (e.g. 268435456, 256Mi, 1G)")
    return int(digits) * _UNITS[unit]


def _validate(c: RelayConfig) -> None:
    for field in dataclasses.fields(c):
        value = getattr(c, field.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(field.name, f"{value!r} is not a finite number")
    if not c.listen:
        raise ConfigError("listen", "at least one listen address is required")
    for ep in c.listen:
        _check_ip(ep.host, "listen")
        if c.workers > 1 and ep.port == 0:
            raise ConfigError("workers", f"several workers need fixed listen ports, {ep} has port 0")
    if c.health_listen is not None:
        _check_ip(c.health_listen.host, "health_listen")
    for name in ("allow_destination", "deny_destination", "proxy_protocol_from"):
        for cidr in getattr(c, name):
            try:
                net = filters.parse_cidr(cidr)
            except ValueError as exc:
                raise ConfigError(name, str(exc)) from None
            _refuse_mapped(net, cidr, name)
    for host in c.own_address:
        _check_ip(host, "own_address")
    if c.new_destination_rate < 0:
        raise ConfigError("new_destination_rate", "must be 0 (unlimited) or more")
    if not 1 <= c.min_destination_port <= 65535:
        raise ConfigError("min_destination_port", "must be 1..65535")
    if not 16 + 19 <= c.max_record_size <= protocol.MAX_RECORD_PAYLOAD:
        raise ConfigError("max_record_size", f"must be 35..{protocol.MAX_RECORD_PAYLOAD} bytes")
    if not 1 <= c.min_packet_size <= c.max_record_size - 19:
        raise ConfigError("min_packet_size", "must be at least 1 and leave room in max_record_size")
    for name in ("handshake_timeout", "idle_timeout", "reply_window"):
        if not getattr(c, name) > 0:
            raise ConfigError(name, "must be a positive number of seconds")
    if c.max_memory is not None and c.max_memory < 0:
        raise ConfigError("max_memory", "must be 0 (no budget) or more bytes")
    for name in ("drain_timeout", "shutdown_delay"):
        if not getattr(c, name) >= 0:
            raise ConfigError(name, "must be 0 or more seconds")
    for name in ("max_connections", "max_connections_per_ip", "workers", "write_buffer_limit"):
        if getattr(c, name) < 1:
            raise ConfigError(name, "must be at least 1")
    for name in ("tunnel_rate_pps", "tunnel_rate_bps", "global_rate_pps", "global_rate_bps"):
        if getattr(c, name) < 0:
            raise ConfigError(name, "must be 0 (unlimited) or more")
    if c.legacy_target is not None:
        _check_ip(c.legacy_target.host, "legacy_target")
        if c.legacy_target.port == 0:
            raise ConfigError("legacy_target", "port must not be 0")
        if ":" in c.legacy_target.host:
            # pre-1.2 clients only ever spoke IPv4; the tunnel's legacy socket is IPv4
            raise ConfigError("legacy_target", "must be an IPv4 address (pre-1.2 clients are IPv4-only)")
    if not 1 <= c.ipv6_per_ip_prefix <= 128:
        raise ConfigError("ipv6_per_ip_prefix", "must be 1..128")
    if c.fallback is not None and c.fallback.port == 0:
        raise ConfigError("fallback", "port must not be 0")
    if c.fallback_proxy_protocol not in ("off", "v1", "v2"):
        raise ConfigError("fallback_proxy_protocol", f"must be v1, v2 or off, got {c.fallback_proxy_protocol!r}")
    for name in ("sniff_timeout", "fallback_idle_timeout"):
        if not getattr(c, name) > 0:
            raise ConfigError(name, "must be a positive number of seconds")
    if c.fallback_max_connections < 1:
        raise ConfigError("fallback_max_connections", "must be at least 1")
    if not 0 <= c.fallback_preconnect <= backend_pool.MAX_SIZE:
        raise ConfigError("fallback_preconnect", f"must be 0 (off) to {backend_pool.MAX_SIZE} connections")
    if c.fallback_max_connections_per_ip < 0:
        raise ConfigError("fallback_max_connections_per_ip", "must be 0 (as --max-connections-per-ip) or more")
    if c.log_format not in ("text", "json"):
        raise ConfigError("log_format", f"must be text or json, got {c.log_format!r}")
    if c.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError("log_level", f"unknown level {c.log_level!r}")


_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def _refuse_mapped(net: filters.IPNetwork, text: str, setting: str) -> None:
    """An IPv4-mapped range is refused rather than guessed at: taken literally it is a dead
    rule (tunnels' IPv6 sockets are V6ONLY; PROXY peers and IPv4 records are compared as
    IPv4, so a mapped deny denies nothing), read as IPv4 it may widen silently
    (``::ffff:0:0/96`` is every IPv4 address). The CRD's CEL refuses them too."""
    if net.version == 6 and net.subnet_of(_MAPPED):
        ipv4 = ipaddress.IPv4Network((int(net.network_address) & 0xFFFFFFFF, net.prefixlen - 96))
        raise ConfigError(setting, f"{text!r} is an IPv4-mapped range; the relay matches IPv4 as IPv4: write {ipv4}")


def _check_ip(host: str, setting: str) -> None:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(setting, f"{host!r} is not an IP address") from None

