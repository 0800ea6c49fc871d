"""A fixed port for a test process that must be told one (a relay's --workers bind it each,
with SO_REUSEPORT; a server started with its port as an argument).

Picked below the kernel's ephemeral range: a port bound to 0 and released comes from that
range, and any process's next outgoing connection (another test's, beside it under xdist or
the cluster part) may get it as its local port before the server binds it, which then fails
(EADDRINUSE: a relay worker dies, the test sees one worker). Below the range only another
explicit bind can take it, and the random pick makes two such tests meet about once in 8,000.
"""

import random
import socket
from pathlib import Path

LOW, HIGH = 12000, 20000  # none of the cluster's fixed ports (e2e.cluster.ports) is in here


def ephemeral_range() -> tuple[int, int]:
    low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    return int(low), int(high)


def unused_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing is bound to now, outside the ephemeral range."""
    low, high = ephemeral_range()
    candidates = [p for p in range(LOW, HIGH) if not low <= p <= high]
    if not candidates:
        raise RuntimeError(f"the ephemeral range {low}-{high} covers {LOW}-{HIGH}: set net.ipv4.ip_local_port_range")
    pick = random.SystemRandom()
    for _ in range(200):
        port = pick.choice(candidates)
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no unbound port in {LOW}-{HIGH} after 200 tries")
