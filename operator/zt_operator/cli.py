"""``zt-relay-operator``: ``kopf run -m zt_operator.handlers`` with this project's defaults.

Adds ``--standalone`` (one replica with the Recreate strategy, no peering objects),
``--liveness=http://0.0.0.0:8080/healthz`` unless a liveness endpoint is given, and
``--all-namespaces`` unless namespaces are given. Other arguments pass through to
``kopf run`` (e.g. ``--namespace=relays``, ``--verbose``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

DEFAULT_LIVENESS = "http://0.0.0.0:8080/healthz"


def _given(argv: Sequence[str], *names: str) -> bool:
    return any(arg == name or arg.startswith(f"{name}=") for arg in argv for name in names)


def kopf_arguments(argv: Sequence[str]) -> list[str]:
    """The full ``kopf`` argument list for the operator's own arguments ``argv``."""
    args = ["run", "-m", "zt_operator.handlers", "--standalone"]
    if not _given(argv, "--liveness", "-L"):
        args.append(f"--liveness={DEFAULT_LIVENESS}")
    if not _given(argv, "--namespace", "-n", "--all-namespaces", "-A"):
        args.append("--all-namespaces")
    return args + list(argv)


def main(argv: Sequence[str] | None = None) -> None:
    from kopf import cli  # imported late: `--help` of a broken install still explains itself

    # Kopf names itself after the user (getpass.getuser()), which fails for the image's
    # numeric UID without a passwd entry; getuser() reads $USER first.
    os.environ.setdefault("USER", "zt-relay-operator")

    cli.main(args=kopf_arguments(sys.argv[1:] if argv is None else argv), prog_name="zt-relay-operator")
