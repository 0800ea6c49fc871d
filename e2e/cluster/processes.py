"""Start and stop the cluster's host processes, each with a pid file and a log file.

A pid is only signalled if its /proc cmdline still starts with the binary we started, so a
stale pid file can never hit an unrelated process that reused the number.
"""

import os
import select
import signal
import time
from pathlib import Path


def start(
    name: str, argv: list[str], run_dir: Path, log_dir: Path, env: dict[str, str] | None = None, program: str | None = None
) -> int:
    """Start `argv` detached (own session), logging to `<log_dir>/<name>.log`; returns the pid.

    `program` is what /proc/PID/cmdline[0] shows once started, if `argv` is a wrapper that
    execs it (default: argv[0]).

    posix_spawn rather than Popen: the processes outlive this call (and the Python process
    that may call `up` from a pytest fixture), so there is no Popen object to wait on. It
    keeps no inherited descriptor but its stdio (`_inherited_descriptors`).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    log = os.open(log_dir / f"{name}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    devnull = os.open(os.devnull, os.O_RDONLY)
    try:
        stdio = [(os.POSIX_SPAWN_DUP2, devnull, 0), (os.POSIX_SPAWN_DUP2, log, 1), (os.POSIX_SPAWN_DUP2, log, 2)]
        pid = os.posix_spawnp(
            argv[0],
            argv,
            dict(os.environ if env is None else env),
            file_actions=stdio + [(os.POSIX_SPAWN_CLOSE, fd) for fd in _inherited_descriptors()],
            setsid=True,
        )
    finally:
        os.close(log)
        os.close(devnull)
    # argv[0] as given is what /proc/PID/cmdline shows once the program has exec'd.
    (run_dir / f"{name}.pid").write_text(f"{pid}\n{program or argv[0]}\n")
    return pid


def _inherited_descriptors() -> list[int]:
    """This process's inheritable descriptors above stdio: what it got from its parent (Python
    opens its own non-inheritable), e.g. `flock LOCK python -m e2e.cluster up`'s lock, which a
    daemon keeping it would hold until `down`."""
    fds = []
    for entry in os.listdir("/proc/self/fd"):
        fd = int(entry)
        try:
            if fd > 2 and os.get_inheritable(fd):
                fds.append(fd)
        except OSError:
            pass  # the descriptor listdir itself used, closed since
    return fds


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except (FileNotFoundError, ProcessLookupError):
        return []


def alive(pid: int) -> bool:
    return bool(_cmdline(pid)) and not _is_zombie(pid)


def _stat(pid: int) -> list[str]:
    """/proc/<pid>/stat's fields after the command name (state, ppid, ...); [] if it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return []


def start_time(pid: int) -> str | None:
    """When the process started (stat's field 22, clock ticks since boot): with the pid, it
    names one process, not whichever reuses the number; None if it is gone."""
    fields = _stat(pid)
    return fields[19] if len(fields) > 19 else None


def _is_zombie(pid: int) -> bool:
    fields = _stat(pid)
    return not fields or fields[0] == "Z"


def comm(pid: int) -> str | None:
    """The kernel's name of the process (its executable's base name, 15 characters at most)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except (FileNotFoundError, ProcessLookupError):
        return None


def _parent(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else None


def _netns(pid: int | str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


def others_named(program: str, own_pid: int | None, candidates: list[int] | None = None) -> list[int]:
    """Live processes named `program` in this network namespace that are neither `own_pid` nor
    its children (a Go program forks a copy of itself before it execs a command)."""
    here = _netns("self")
    if candidates is None:
        candidates = _pids()
    found = []
    for pid in candidates:
        if pid == own_pid or comm(pid) != program or _is_zombie(pid):
            continue
        if own_pid is not None and _parent(pid) == own_pid:
            continue
        if _netns(pid) is None or _netns(pid) != here:
            continue
        found.append(pid)
    return sorted(found)


def running_pid(name: str, run_dir: Path) -> int | None:
    """The pid of process `name` if it is alive and still the program we started."""
    pidfile = run_dir / f"{name}.pid"
    try:
        pid_text, program = pidfile.read_text().splitlines()[:2]
    except (FileNotFoundError, ValueError):
        return None
    pid = int(pid_text)
    cmd = _cmdline(pid)
    if not cmd or cmd[0] != program or _is_zombie(pid):
        return None
    return pid


def stop(name: str, run_dir: Path, timeout: float = 15) -> bool:
    """SIGTERM, wait up to `timeout` seconds, then SIGKILL. Removes the pid file. False if it
    had to be killed (it did not exit on SIGTERM in time)."""
    pid = running_pid(name, run_dir)
    exited = kill_and_wait(pid, timeout) if pid is not None else True
    (run_dir / f"{name}.pid").unlink(missing_ok=True)
    return exited


def kill_and_wait(pid: int, timeout: float) -> bool:
    """SIGTERM, then SIGKILL after `timeout` seconds; False if it took the SIGKILL."""
    return pid not in kill_all_and_wait([pid], timeout)


def kill_all_and_wait(pids, timeout: float) -> set[int]:
    """SIGTERM every one at once, wait for their exits together (pidfds: woken by the exit
    itself, no polling), SIGKILL what is left after `timeout` seconds and wait up to 5 s more.
    Returns the pids that took the SIGKILL. A pidfd also pins the process: a signal can never
    reach another that reused the number."""
    fds: dict[int, int] = {}
    try:
        for pid in pids:
            try:
                fds[pid] = os.pidfd_open(pid)
                signal.pidfd_send_signal(fds[pid], signal.SIGTERM)
            except ProcessLookupError:
                continue
        left = _wait_exits(fds, timeout)
        for pid in left:
            try:
                signal.pidfd_send_signal(fds[pid], signal.SIGKILL)
            except ProcessLookupError:
                pass
        _wait_exits({pid: fds[pid] for pid in left}, 5)
        return left
    finally:
        for pid, fd in fds.items():
            os.close(fd)
            _reap(pid)


def _wait_exits(fds: dict[int, int], timeout: float) -> set[int]:
    """Wait until every process (pid -> pidfd) has exited or `timeout` passes; the pids left."""
    left = {fd: pid for pid, fd in fds.items()}
    poller = select.poll()
    for fd in left:
        poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + timeout
    while left:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        for fd, _ in poller.poll(remaining * 1000):
            poller.unregister(fd)
            left.pop(fd)
    return set(left.values())


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


CLUSTER_PROGRAMS = frozenset({
    "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "coredns",
    "metrics-server", "registry", "containerd", "containerd-shim", "containerd-shim-runc-v1", "containerd-shim-runc-v2",
})
"""What a cluster of ours runs on the host (the lb-controller is `python -m e2e.cluster.lb`)."""


def _under(value: str, root: str) -> bool:
    root = root.rstrip("/")
    return value == root or value.startswith(root + "/")


def is_cluster_process(argv: list[str], root: str) -> bool:
    """A process of a cluster whose state is under `root` (pure): one of the cluster's own
    programs (or our LB stand-in), with an argument that is a path under `root` (`-address
    <root>/run/containerd/containerd.sock`, `--config=<root>/configs/...`). Never a program
    that merely mentions the path (`tail -f <root>/logs/kubelet.log`, `kubectl
    --kubeconfig=<root>/admin.kubeconfig`), nor one under a sibling (`<root>-old/`)."""
    if not argv or not argv[0]:
        return False
    ours = Path(argv[0]).name in CLUSTER_PROGRAMS or "e2e.cluster.lb" in argv[1:3]
    return ours and any(_under(arg.split("=", 1)[-1], root) for arg in argv[1:])


def cluster_pids(root: str) -> list[int]:
    """Processes of a cluster whose state is under `root` (`is_cluster_process`)."""
    return [pid for pid in _pids() if is_cluster_process(_cmdline(pid), root)]


def pids_rooted_under(root: str) -> list[int]:
    """Processes whose root filesystem lives under `root` (containers of a containerd whose
    state is there: their "/" mount names a snapshot directory under it)."""
    found = []
    for pid in _pids():
        try:
            lines = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
        except OSError:
            continue
        if any(line.split()[4] == "/" and root in line for line in lines if len(line.split()) > 4):
            found.append(pid)
    return found


def _pids() -> list[int]:
    """Every process's pid but this one's."""
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit() and int(entry.name) != os.getpid()]
