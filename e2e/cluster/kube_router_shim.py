"""The thin I/O around `kube_router_view`: run as `iptables-save`, `iptables-restore`, `ipset` or
`iptables` from `kube_router_bin/`, which the harness puts first on kube-router's PATH
(kube-router v2.1.0 and its go-iptables find all four with exec.LookPath). It runs the real tool
(the next one on PATH) and passes kube-router only its own state, and writes only its own state
back. `iptables` comes here only for the list of filter chains (`-t filter -S`); the sh
launcher execs the real one for every other call, without starting Python. A refusal exits
2 with the reason on stderr, which kube-router logs with the failed sync.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from e2e.cluster import kube_router_view as view

BIN_DIR = Path(__file__).resolve().parent / "kube_router_bin"
TOOLS = ("iptables-save", "iptables-restore", "ipset", "iptables")
PYTHON_ENV = "ZTR_SHIM_PYTHON"


def environment(env: dict[str, str]) -> dict[str, str]:
    """kube-router's environment: the shims first on PATH, and the Python they run with (this
    one: a real interpreter, not a PATH lookup that may be a slow pyenv shim)."""
    return {**env, "PATH": f"{BIN_DIR}{os.pathsep}{env.get('PATH', os.defpath)}", PYTHON_ENV: sys.executable}


def real_binary(tool: str, path: str | None = None) -> str:
    """`tool` on PATH, skipping this directory of shims."""
    dirs = [d for d in (path if path is not None else os.environ.get("PATH", os.defpath)).split(os.pathsep) if d]
    others = [d for d in dirs if Path(d).resolve() != BIN_DIR]
    found = shutil.which(tool, path=os.pathsep.join(others))
    if found is None:
        raise SystemExit(f"kube-router shim: no real `{tool}` on PATH beside the shims")
    return found


def _run(argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, input=stdin, capture_output=True, text=True)


def _passed(proc: subprocess.CompletedProcess, stdout: str | None = None) -> int:
    sys.stdout.write(proc.stdout if stdout is None else stdout)
    sys.stderr.write(proc.stderr)
    return proc.returncode


def _refuse(tool: str, why: str) -> int:
    sys.stderr.write(f"kube-router shim ({tool}): refused: {why}\n")
    return 2


def _restore_table(args: list[str]) -> tuple[str | None, bool, list[str]]:
    """(-T table, --wait given, options not understood) of iptables-restore's arguments."""
    table, wait, unknown = None, False, []
    it = iter(args)
    for arg in it:
        if arg in ("-w", "--wait"):
            wait = True
        elif arg in ("-T", "--table"):
            table = next(it, None)
        elif arg.startswith("--table="):
            table = arg.split("=", 1)[1]
        elif arg in ("-n", "--noflush"):
            pass  # what we do anyway
        else:
            unknown.append(arg)
    return table, wait, unknown


def iptables_save(args: list[str]) -> int:
    proc = _run([real_binary("iptables-save"), *args])
    if proc.returncode != 0:
        return _passed(proc)
    return _passed(proc, view.iptables_save_view(proc.stdout))


def iptables_restore(args: list[str]) -> int:
    real = real_binary("iptables-restore")
    if any(a in ("-h", "--help", "-V", "--version") for a in args):
        os.execv(real, [real, *args])  # kube-router reads --help for "wait"
    table, wait, unknown = _restore_table(args)
    if unknown or table != "filter":
        return _refuse("iptables-restore", f"only `-T filter [--wait]` is supported, got {args}")
    saved = _run([real_binary("iptables-save"), "-t", "filter"])
    if saved.returncode != 0:
        return _passed(saved, "")
    try:
        transaction = view.iptables_restore_transaction(sys.stdin.read(), view.chains_in_save(saved.stdout))
    except view.Refused as e:
        return _refuse("iptables-restore", str(e))
    return _passed(_run([real, *(["--wait"] if wait else []), "--noflush", "-T", "filter"], transaction))


def ipset(args: list[str]) -> int:
    real = real_binary("ipset")
    words = [a for a in args if not a.startswith("-")]
    if words == ["save"]:
        proc = _run([real, *args])
        return _passed(proc, view.ipset_save_view(proc.stdout) if proc.returncode == 0 else "")
    if words == ["restore"]:
        try:
            checked = view.ipset_restore_check(sys.stdin.read())
        except view.Refused as e:
            return _refuse("ipset", str(e))
        return _passed(_run([real, *args], checked))
    why = view.ipset_argv_check(args)
    if why is not None:
        return _refuse("ipset", why)
    os.execv(real, [real, *args])


def iptables(args: list[str]) -> int:
    """go-iptables ListChains: `iptables -t filter -S [--wait [N]]`; anything else passes through."""
    real = real_binary("iptables")
    if [a for a in args if a not in ("--wait", "-w") and not a.isdigit()] != ["-t", "filter", "-S"]:
        os.execv(real, [real, *args])
    proc = _run([real, *args])
    return _passed(proc, view.iptables_list_view(proc.stdout) if proc.returncode == 0 else "")


def main(tool: str, args: list[str]) -> int:
    if tool == "iptables-save":
        return iptables_save(args)
    if tool == "iptables-restore":
        return iptables_restore(args)
    if tool == "ipset":
        return ipset(args)
    if tool == "iptables":
        return iptables(args)
    raise SystemExit(f"kube-router shim: unknown tool {tool!r}; one of {', '.join(TOOLS)}")
