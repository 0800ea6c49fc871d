"""The thin I/O around `kube_router_view`: run as `iptables-save`, `iptables-restore`, `ipset` or
`iptables` from `kube_router_bin/`, which the harness puts first on kube-router's PATH
(kube-router v2.1.0 and its go-iptables find all four with exec.LookPath). It runs the real tool
(found by `environment`, the next one on PATH) and passes kube-router only its own state, and
writes only its own state back. `iptables` comes here only for the list of filter chains
(`-t filter -S`); the sh launcher execs the real one for every other call, without starting
Python. A refusal exits 2 with the reason on stderr, which kube-router logs with the failed sync.

Cheap to start, as kube-router calls the four ~3,500 times a CI run: os and sys only (the
launcher's `python -I -S` costs ~20 ms of CPU; subprocess, shutil and pathlib added ~45 ms).
"""

import _signal  # built in and loaded at start-up; `signal` would import enum
import os
import sys

from e2e.cluster import kube_router_view as view

BIN_DIR = os.path.join(os.path.dirname(os.path.realpath(__file__)), "kube_router_bin")
LAUNCHER = os.path.join(BIN_DIR, "kube-router-shim")
TOOLS = ("iptables-save", "iptables-restore", "ipset", "iptables")
PYTHON_ENV = "ZTR_SHIM_PYTHON"
ROOT_ENV = "ZTR_SHIM_ROOT"
REAL_TOOL_ENV = {
    "iptables-save": "ZTR_SHIM_REAL_IPTABLES_SAVE",
    "iptables-restore": "ZTR_SHIM_REAL_IPTABLES_RESTORE",
    "ipset": "ZTR_SHIM_REAL_IPSET",
    "iptables": "ZTR_SHIM_REAL_IPTABLES",
}
"""The launcher's case table names the same variables."""


def environment(env: dict[str, str]) -> dict[str, str]:
    """kube-router's environment: the shims first on PATH; the real tools, found once here on
    the PATH it was given (a tool missing stays unset: its shim then fails naming it); the Python
    the shims run with (this one: a real interpreter, not a PATH lookup that may be a slow pyenv
    shim) and the repository it imports them from."""
    path = env.get("PATH", os.defpath)
    out = {k: v for k, v in env.items() if k not in REAL_TOOL_ENV.values()}
    out.update({"PATH": f"{BIN_DIR}{os.pathsep}{path}", PYTHON_ENV: sys.executable,
                ROOT_ENV: os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))})
    for tool, var in REAL_TOOL_ENV.items():
        if (found := real_binary(tool, path)) is not None:
            out[var] = found
    return out


def real_binary(tool: str, path: str) -> str | None:
    """The first executable `tool` on `path` that is not a shim, this checkout's or another's (by
    any link: the launcher's file name), or None. Absolute: kube-router runs in another directory."""
    for directory in path.split(os.pathsep):
        candidate = os.path.join(directory, tool)
        if directory and os.path.isfile(candidate) and os.access(candidate, os.X_OK) \
                and os.path.basename(os.path.realpath(candidate)) != os.path.basename(LAUNCHER):
            return os.path.abspath(candidate)
    return None


def _real(tool: str) -> str:
    """The real tool, as the launcher checked it."""
    found = os.environ.get(REAL_TOOL_ENV[tool], "")
    if not found:
        raise SystemExit(f"kube-router shim: no real `{tool}` beside the shims (${REAL_TOOL_ENV[tool]} is not set)")
    return found


def _exec(argv: list[str]):
    """The real tool in our place. It gets SIGPIPE's default action back, as from a shell (Python
    ignores SIGPIPE, and an ignored signal stays ignored through exec)."""
    _signal.signal(_signal.SIGPIPE, _signal.SIG_DFL)
    os.execv(argv[0], argv)


def _run(argv: list[str], stdin: bytes | None = None) -> tuple[int, bytes]:
    """(exit status, stdout) of argv. Its stderr is ours. With `stdin` its output is ours too
    (the restores' output is passed on unchanged), else captured: never both, so never a pipe
    deadlock."""
    child_in, feed = os.pipe() if stdin is not None else (None, None)
    drain, child_out = os.pipe() if stdin is None else (None, None)
    actions = [(os.POSIX_SPAWN_DUP2, child_in, 0)] if stdin is not None else [(os.POSIX_SPAWN_DUP2, child_out, 1)]
    try:
        pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=actions, setsigdef=(_signal.SIGPIPE,))
    finally:
        os.close(child_in if stdin is not None else child_out)
    output = b""
    if stdin is not None:
        with open(feed, "wb") as pipe:
            try:
                pipe.write(stdin)
            except BrokenPipeError:
                pass  # it exited without reading all: its status and stderr say why
    else:
        with open(drain, "rb") as pipe:
            output = pipe.read()
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    return (code if code >= 0 else 128 - code), output  # killed by signal N: 128+N, as a shell says


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")  # round-trips any byte of a rule's comment


def _out(text: str) -> None:
    sys.stdout.buffer.write(text.encode("utf-8", "surrogateescape"))


def _stdin() -> str:
    return _text(sys.stdin.buffer.read())


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
    code, saved = _run([_real("iptables-save"), *args])
    _out(view.iptables_save_view(_text(saved)) if code == 0 else _text(saved))
    return code


def iptables_restore(args: list[str]) -> int:
    real = _real("iptables-restore")
    if any(a in ("-h", "--help", "-V", "--version") for a in args):
        _exec([real, *args])  # kube-router reads --help for "wait"
    table, wait, unknown = _restore_table(args)
    if unknown or table != "filter":
        return _refuse("iptables-restore", f"only `-T filter [--wait]` is supported, got {args}")
    code, saved = _run([_real("iptables-save"), "-t", "filter"])
    if code != 0:
        return code
    try:
        transaction = view.iptables_restore_transaction(_stdin(), view.chains_in_save(_text(saved)))
    except view.Refused as e:
        return _refuse("iptables-restore", str(e))
    argv = [real, *(["--wait"] if wait else []), "--noflush", "-T", "filter"]
    return _run(argv, transaction.encode("utf-8", "surrogateescape"))[0]


def ipset(args: list[str]) -> int:
    real = _real("ipset")
    words = [a for a in args if not a.startswith("-")]
    if words == ["save"]:
        code, saved = _run([real, *args])
        _out(view.ipset_save_view(_text(saved)) if code == 0 else "")
        return code
    if words == ["restore"]:
        try:
            checked = view.ipset_restore_check(_stdin())
        except view.Refused as e:
            return _refuse("ipset", str(e))
        return _run([real, *args], checked.encode("utf-8", "surrogateescape"))[0]
    why = view.ipset_argv_check(args)
    if why is not None:
        return _refuse("ipset", why)
    _exec([real, *args])


def iptables(args: list[str]) -> int:
    """go-iptables ListChains: `iptables -t filter -S [--wait [N]]`; anything else passes through."""
    real = _real("iptables")
    if [a for a in args if a not in ("--wait", "-w") and not a.isdigit()] != ["-t", "filter", "-S"]:
        _exec([real, *args])
    code, listing = _run([real, *args])
    _out(view.iptables_list_view(_text(listing)) if code == 0 else "")
    return code


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
