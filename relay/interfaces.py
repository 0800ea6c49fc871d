"""The relay's own interface addresses, read from the kernel's tables (Linux ``/proc``).

A tunnel must not be able to send to the relay itself: its health port, its other tunnels'
UDP sockets, whatever else listens in the pod. Loopback is refused by the destination
filter's built-in list already (unless an operator allows it), so it is left out here;
every other local address is refused even inside an allowed range.
"""

from __future__ import annotations

import ipaddress
import logging

log = logging.getLogger("zt_relay")

FIB_TRIE = "/proc/net/fib_trie"
IF_INET6 = "/proc/net/if_inet6"


def local_addresses() -> set[str]:
    """Every non-loopback address of this network namespace's interfaces (empty, with a
    warning, where the tables can't be read)."""
    found: set[str] = set()
    for path, parse in ((FIB_TRIE, parse_fib_trie), (IF_INET6, parse_if_inet6)):
        try:
            with open(path) as f:
                found |= parse(f.read())
        except OSError as exc:
            log.warning("cannot read %s to find the relay's own addresses: %s", path, exc)
    return found


def parse_fib_trie(text: str) -> set[str]:
    """IPv4 addresses the kernel delivers locally: ``|-- ADDR`` followed by
    ``/32 host LOCAL`` (wider local routes are loopback's 127/8)."""
    found = set()
    last = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("|-- "):
            last = stripped[4:]
        elif last is not None and stripped.startswith("/32 host LOCAL"):
            ip = ipaddress.IPv4Address(last)
            if not ip.is_loopback:
                found.add(str(ip))
    return found


def parse_if_inet6(text: str) -> set[str]:
    """IPv6 interface addresses: the first column, 32 hex digits."""
    found = set()
    for line in text.splitlines():
        fields = line.split()
        if fields and len(fields[0]) == 32:
            ip = ipaddress.IPv6Address(int(fields[0], 16))
            if not ip.is_loopback:
                found.add(str(ip))
    return found
