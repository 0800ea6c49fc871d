"""Which boot a trace comes from.

The state dir lives in /var/lib and survives a reboot; nothing else of ours does (processes,
rules, links, sysctls). So "our cluster ran" must be decided by evidence of THIS boot: the
boot id `up` wrote into the state dir, our firewall jumps (never persistent), or our kube-proxy
alive. A state dir alone proves nothing: after a reboot, another cluster (k3s, minikube) may
own the KUBE-* chains and the sysctls.
"""

from pathlib import Path

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> str:
    return BOOT_ID.read_text().strip()


def record_file(state_root: Path) -> Path:
    return state_root / "boot_id"


def mark(state_root: Path) -> None:
    """Called by `up` before it changes anything on the machine."""
    record_file(state_root).write_text(boot_id() + "\n")


def recorded_this_boot(state_root: Path) -> bool:
    try:
        return record_file(state_root).read_text().strip() == boot_id()
    except OSError:
        return False


def ours_ran_this_boot(state_root: Path, run_dir: Path) -> bool:
    from e2e.cluster import firewall, processes  # noqa: PLC0415 - keep this module import-light

    return (
        recorded_this_boot(state_root)
        or bool(firewall.present(firewall.ours))
        or processes.running_pid("kube-proxy", run_dir) is not None
    )
