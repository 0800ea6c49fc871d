"""Which service a new connection is for, from at most its first 5 bytes (no I/O).

With ``--fallback``, one port serves ZeroTier clients and a website: the relay reads the
first record header and decides once per connection, before any tunnel exists.

- ``17 03 03 00 04`` is a ZeroTier hello header: every current client (1.2 and later)
  starts with it, so it is a tunnel.
- With ``--legacy-target``, any other ``17 03 03`` record is a pre-1.2 client (bare
  packets, no hello): a tunnel too.
- Everything else goes to the backend, byte for byte: a TLS ClientHello (``16 03``), an
  HTTP method, an HTTP/2 preface, noise.

The decision is taken at the first byte that rules ZeroTier out, so a browser's
ClientHello is passed on as soon as its first byte arrives. A real TLS 1.2/1.3 client never
opens with application data (``17``), so sites lose nothing; the reverse holds too: what
the relay takes for ZeroTier is exactly what it took before fallback existed.
"""

from __future__ import annotations

from relay import protocol

#: Verdicts.
NEED_DATA = "need_data"
ZEROTIER = "zerotier"
LEGACY = "legacy"
FALLBACK = "fallback"

#: The header of a current client's first record: type and version, then length 4.
HELLO_HEADER = protocol.RECORD_TYPE + protocol.HELLO_SIZE.to_bytes(2, "big")
#: Bytes that can matter; anything after them is never looked at.
SNIFF_SIZE = len(HELLO_HEADER)
#: The first byte of every record of ours: any other first byte goes to the backend, whatever
#: follows (``classify``'s first test; the sniffer makes it inline, before a visitor's dial).
RECORD_FIRST = protocol.RECORD_TYPE[0]


def classify(head: bytes, legacy: bool = False, eof: bool = False) -> str:
    """The verdict for the first bytes of a connection.

    ``head`` holds what the client has sent so far (only its first ``SNIFF_SIZE`` bytes are
    read). ``legacy`` is whether ``--legacy-target`` is set. ``eof`` means the client sent
    no more and never will (EOF, or the sniff timeout passed): an undecided prefix then goes
    to the backend, since no ZeroTier client stops inside its first header. Returns
    ``NEED_DATA`` only while the bytes so far could still be either.
    """
    n = min(len(head), SNIFF_SIZE)
    for i in range(min(n, len(protocol.RECORD_TYPE))):
        if head[i] != HELLO_HEADER[i]:
            return FALLBACK
    if n >= 3 and legacy:
        # Any record type header is a client of ours; only the length tells which kind.
        if n >= 4 and head[3] != 0:
            return LEGACY
        if n == 5:
            return ZEROTIER if head[4] == protocol.HELLO_SIZE else LEGACY
    else:
        for i in range(3, n):
            if head[i] != HELLO_HEADER[i]:
                return FALLBACK
        if n == SNIFF_SIZE:
            return ZEROTIER
    return FALLBACK if eof else NEED_DATA
