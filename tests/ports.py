"""A fixed port for a test process that must be told one (a relay's --workers bind it each,
with SO_REUSEPORT; a server started with its port as an argument).

Picked below the kernel's ephemeral range: a port bound to 0 and released comes from that
range, and any process's next outgoing connection (another test's, beside it under xdist or
the cluster part) may get it as its local port before the server binds it, which then fails
(EADDRINUSE: a relay worker dies, the test sees one worker).

A pick is reserved, not only found unbound: a lock file per port (``flock``, under
``LOCK_DIR``, shared by every test process on the machine) is held until the picking process
exits, so two pytest processes (xdist workers, two clones' runs) or two tests in one process
never get the same port between the pick and the server's bind. Processes that do not take
these locks can still bind it: ``foreign_listeners`` lets a server started on a pick check
that it did not silently share it (SO_REUSEPORT lets any same-user socket join).
"""

import contextlib
import fcntl
import os
import random
import socket
from pathlib import Path

LOW, HIGH = 12000, 20000  # none of the cluster's fixed ports (e2e.cluster.ports) is in here
LOCK_DIR = Path(os.environ.get("ZT_TEST_PORT_LOCKS", "/tmp/zt-relay-test-ports"))

_held: dict[int, int] = {}  # port -> the descriptor holding its lock, until this process exits


def ephemeral_range() -> tuple[int, int]:
    low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    return int(low), int(high)


def unused_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host`, outside the ephemeral range, that nothing is bound to now and
    that no other test (in any process taking these locks) is handed until this one exits."""
    low, high = ephemeral_range()
    candidates = [p for p in range(LOW, HIGH) if not low <= p <= high and p not in _held]
    if not candidates:
        raise RuntimeError(f"no unbound port in {LOW}-{HIGH} outside the ephemeral range {low}-{high} "
                           "(set net.ipv4.ip_local_port_range, or fewer picks)")
    _lock_dir()
    pick = random.SystemRandom()
    for port in pick.sample(candidates, min(200, len(candidates))):
        if not _reserve(port):
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue  # bound by a process that takes no lock: keep the lock, it's no use to anyone
            return port
    raise RuntimeError(f"no unbound port in {LOW}-{HIGH} after {min(200, len(candidates))} tries")


def _lock_dir() -> None:
    if not LOCK_DIR.is_dir():
        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(PermissionError):  # another user made it meanwhile
            LOCK_DIR.chmod(0o1777)  # every user's test processes share it, as /tmp (umask aside)
    if not os.access(LOCK_DIR, os.W_OK | os.X_OK):
        raise RuntimeError(f"the test port lock directory {LOCK_DIR} is not this user's to write (another user made it "
                           "and it is not mode 1777): `chmod 1777` it, or set ZT_TEST_PORT_LOCKS to another directory")


def _reserve(port: int) -> bool:
    _lock_dir()
    try:
        fd = _open_lock(LOCK_DIR / f"{port}.lock")
    except PermissionError:
        return False  # another user's file this process may not open: that port is not for us
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    _held[port] = fd
    return True


def _open_lock(path: Path) -> int:
    """Read-only (flock needs no write access). An existing file is opened without O_CREAT:
    with fs.protected_regular (systemd's default) O_CREAT on another user's file in a sticky
    directory is refused even to root. A new one is made every user's whatever the umask."""
    while True:
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            pass
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            continue  # another process made it meanwhile: open theirs
        os.fchmod(fd, 0o644)
        return fd


def foreign_listeners(port: int, root_pid: int) -> list[str]:
    """TCP listeners on `port` (IPv4 and IPv6, this network namespace) held by no process in
    `root_pid`'s tree, as "pid N (command)"; a socket whose holder is gone is left out."""
    inodes = {inode for name in ("tcp", "tcp6") for inode in _listening_inodes(Path("/proc/net") / name, port)}
    if not inodes:
        return []
    holders: dict[str, set[int]] = {}
    parents: dict[int, int] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        pid = int(proc.name)
        try:
            parents[pid] = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    holders.setdefault(target[8:-1], set()).add(pid)
        except (FileNotFoundError, ProcessLookupError, PermissionError, NotADirectoryError):
            continue  # gone meanwhile (or not ours to read: its sockets count as unknown)
    tree = {root_pid}
    while grown := {pid for pid, parent in parents.items() if parent in tree} - tree:
        tree |= grown
    foreign = sorted(pid for pids in holders.values() if not pids & tree for pid in pids)
    return [f"pid {pid} ({_command(pid)})" for pid in foreign]


def _listening_inodes(table: Path, port: int) -> set[str]:
    found = set()
    for line in table.read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
            found.add(fields[9])
    return found


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()[:120]
    except OSError:
        return "gone"
