"""Which UDP destinations a tunnel may send to.

An open relay is a UDP cannon: without a filter any client could make it spray the
relay's own network (cloud metadata at 169.254.169.254, the pod network, localhost) or
amplify traffic at privileged services. The default is what a ZeroTier node legitimately
needs: global unicast addresses on unprivileged ports (ZeroTier's own proxy also refuses
ports up to 1024).

The relay's own addresses (its interfaces, and ``--own-address``: the node's, the load
balancer's) are refused before any other rule, so that no allowed range can open them.

Precedence, documented in the README: ``--deny-destination`` always wins, then
``--allow-destination``, then the built-in list of non-global ranges below. The port rule
applies to every address, allowed ranges included.

``DestinationFilter.verdict`` is pure and states the rules; ``compile()`` turns them into
sorted integer ranges per family (``CompiledFilter``), so a verdict the tunnels have not
cached costs one ``bisect`` over a few dozen integers instead of a walk over network
objects: a client spraying distinct addresses makes the relay do little work per packet.
"""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Ranges that are never global unicast (IANA special-purpose registries).
NON_GLOBAL_V4 = tuple(ipaddress.IPv4Network(n) for n in (
    "0.0.0.0/8",        # "this network"
    "10.0.0.0/8",       # RFC 1918
    "100.64.0.0/10",    # CGNAT (RFC 6598)
    "127.0.0.0/8",      # loopback
    "169.254.0.0/16",   # link-local, cloud metadata
    "172.16.0.0/12",    # RFC 1918
    "192.0.0.0/24",     # IETF protocol assignments
    "192.0.2.0/24",     # TEST-NET-1 (documentation)
    "192.88.99.0/24",   # deprecated 6to4 relay anycast
    "192.168.0.0/16",   # RFC 1918
    "198.18.0.0/15",    # benchmarking
    "198.51.100.0/24",  # TEST-NET-2
    "203.0.113.0/24",   # TEST-NET-3
    "224.0.0.0/4",      # multicast
    "240.0.0.0/4",      # reserved, and the limited broadcast address
))
#: IPv6 is global only inside 2000::/3, minus the special blocks in it. Forms that embed
#: an IPv4 address (mapped, NAT64, 6to4, Teredo) are refused so they can't bypass the
#: IPv4 rules.
GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")
NON_GLOBAL_V6 = tuple(ipaddress.IPv6Network(n) for n in (
    "::/128", "::1/128",  # unspecified, loopback (outside 2000::/3; listed for clarity)
    "::ffff:0:0/96",      # IPv4-mapped
    "64:ff9b::/96", "64:ff9b:1::/48",  # NAT64
    "2001::/23",          # IETF protocol assignments, Teredo among them
    "2001:db8::/32",      # documentation
    "2002::/16",          # 6to4
    "3fff::/20",          # documentation (RFC 9637)
    "fc00::/7",           # unique local
    "fe80::/10",          # link-local
    "ff00::/8",           # multicast
))

DEFAULT_MIN_PORT = 1025

# Drop reasons (metric label values).
DENIED = "destination_denied"
NOT_GLOBAL = "destination_not_global"
LOW_PORT = "destination_port"
OWN_ADDRESS = "destination_own_address"


@dataclass(frozen=True)
class DestinationFilter:
    """Decides whether a tunnel may send to ``(ip, port)``."""

    allow: tuple[IPNetwork, ...] = ()
    deny: tuple[IPNetwork, ...] = ()
    min_port: int = DEFAULT_MIN_PORT
    #: the relay's own addresses (interfaces, node, load balancer): refused before anything
    own: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_cidrs(cls, allow: Iterable[str] = (), deny: Iterable[str] = (), min_port: int = DEFAULT_MIN_PORT, own: Iterable[str] = ()) -> DestinationFilter:
        """Builds a filter from CIDR strings; raises ``ValueError`` naming a bad one."""
        return cls(tuple(parse_cidr(c) for c in allow), tuple(parse_cidr(c) for c in deny), min_port, tuple(parse_cidr(c) for c in own))

    def compile(self) -> CompiledFilter:
        """The same verdicts as ``verdict``, as sorted integer ranges (see ``CompiledFilter``)."""
        return CompiledFilter(
            _ranges(self, ipaddress.IPv4Address, 32, (*self.own, *self.allow, *self.deny, *NON_GLOBAL_V4)),
            _ranges(self, ipaddress.IPv6Address, 128, (*self.own, *self.allow, *self.deny, *NON_GLOBAL_V6, GLOBAL_UNICAST_V6)),
            self.min_port,
        )

    def verdict(self, ip: IPAddress, port: int) -> str | None:
        """``None`` if allowed, else the drop reason."""
        if port < self.min_port:
            return LOW_PORT
        if _within(ip, self.own):
            return OWN_ADDRESS
        if _within(ip, self.deny):
            return DENIED
        if _within(ip, self.allow):
            return None
        if is_global_unicast(ip):
            return None
        return NOT_GLOBAL


class CompiledFilter:
    """``DestinationFilter`` as sorted, non-overlapping integer ranges, one list per family.

    ``starts[i]`` is the first address of range ``i``; the range runs to ``starts[i + 1] - 1``
    and has the verdict ``verdicts[i]`` (None for allowed, else the drop reason). Built by
    asking ``DestinationFilter.verdict`` for the first address of every elementary range
    between the rule boundaries, so the two can't disagree.
    """

    __slots__ = ("v4_starts", "v4_verdicts", "v6_starts", "v6_verdicts", "min_port")

    def __init__(self, v4: tuple[list[int], list[str | None]], v6: tuple[list[int], list[str | None]], min_port: int) -> None:
        self.v4_starts, self.v4_verdicts = v4
        self.v6_starts, self.v6_verdicts = v6
        self.min_port = min_port

    def verdict_for_prefix(self, key: bytes) -> str | None:
        """The verdict for a record's raw address prefix, ``04 ip port`` (7 bytes) or
        ``06 ip port`` (19 bytes): one call, integer operations and one bisect."""
        if len(key) == 7:
            if (key[5] << 8 | key[6]) < self.min_port:
                return LOW_PORT
            return self.v4_verdicts[bisect.bisect_right(self.v4_starts, int.from_bytes(key[1:5], "big")) - 1]
        if (key[17] << 8 | key[18]) < self.min_port:
            return LOW_PORT
        return self.v6_verdicts[bisect.bisect_right(self.v6_starts, int.from_bytes(key[1:17], "big")) - 1]



def _ranges(rules: DestinationFilter, address, bits: int, networks) -> tuple[list[int], list[str | None]]:
    bounds = {0}
    for net in networks:
        if net.max_prefixlen == bits:
            bounds.add(int(net.network_address))
            end = int(net.broadcast_address) + 1
            if end < 1 << bits:
                bounds.add(end)
    starts: list[int] = []
    verdicts: list[str | None] = []
    for start in sorted(bounds):
        verdict = rules.verdict(address(start), rules.min_port)
        if verdicts and verdicts[-1] == verdict:
            continue  # same as the range before: merge
        starts.append(start)
        verdicts.append(verdict)
    return starts, verdicts


def is_global_unicast(ip: IPAddress) -> bool:
    """True if ``ip`` is a public unicast address that a ZeroTier peer could have."""
    if ip.version == 4:
        return not _within(ip, NON_GLOBAL_V4)
    return ip in GLOBAL_UNICAST_V6 and not _within(ip, NON_GLOBAL_V6)


def parse_cidr(text: str) -> IPNetwork:
    """Parses ``10.0.0.0/8`` or a bare address; host bits must be zero."""
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a CIDR range ({exc})") from None


def _within(ip: IPAddress, networks: tuple[IPNetwork, ...]) -> bool:
    return any(ip.version == n.version and ip in n for n in networks)
