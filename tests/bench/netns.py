"""Moves the benchmark into a private network namespace with only loopback up.

Why: ZeroTier's tcp-proxy binds 0.0.0.0:443 (fixed in its source) and has no destination
filter, and this machine is shared. Inside a fresh namespace nothing it or the load
generator does can reach or clash with a real interface or another engineer's port 443.
Children started afterwards inherit the namespace. Needs root (CAP_SYS_ADMIN).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct

CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
_IFREQ = struct.Struct("16sH22x")


def enter_private_netns() -> None:
    """Unshares the network namespace of this (single-threaded) process and brings lo up."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWNET) failed: {os.strerror(err)} (run as root, or pass --no-netns)")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        name, flags = _IFREQ.unpack(fcntl.ioctl(sock, SIOCGIFFLAGS, _IFREQ.pack(b"lo", 0)))
        fcntl.ioctl(sock, SIOCSIFFLAGS, _IFREQ.pack(b"lo", flags | IFF_UP))


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A currently free loopback port (racy in general; fine inside a private namespace)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
