"""What one call of kube-router's shims costs (e2e/cluster/kube_router_bin/, kube_router_shim).

kube-router calls them ~3,500 times in a warm CI run (process accounting of a whole run, issue
12: ~100 core-s, 35,000 of the run's 50,000 processes). So a pass-through `iptables` call is
the launcher exec'ing the real tool and no other program, and a filtered call is one Python
with cheap imports, then the real tool. Fake real tools in a directory of the test's own stand
in for iptables and ipset here (no root): they print their name, pid and arguments.
"""

import os
import shutil
import subprocess
import sys

import pytest

from e2e.cluster import kube_router_shim
from e2e.cluster import kube_router_view as view

POD_A = "KUBE-POD-FW-AAAAAAAAAAAAAAAA"
LAUNCHER = os.path.join(str(kube_router_shim.BIN_DIR), "kube-router-shim")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SAVE = f"""\
*filter
:INPUT ACCEPT [0:0]
:NEIGHBOUR - [0:0]
:{POD_A} - [0:0]
-A NEIGHBOUR -j RETURN
-A {POD_A} -j ACCEPT
COMMIT
"""
PRINT_SAVE = f"printf '%s' '{SAVE}'"
"""A fake iptables-save: printf is a builtin of sh (no cat on PATH, no other program exec'd)."""


def shim_path(tool: str) -> str:
    return os.path.join(str(kube_router_shim.BIN_DIR), tool)


def fake_tools(directory, **scripts: str) -> str:
    """Executable sh scripts named by the keywords (`iptables_save` is `iptables-save`)."""
    directory.mkdir(exist_ok=True)
    for name, body in scripts.items():
        path = directory / name.replace("_", "-")
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
    return str(directory)


def echo(name: str) -> str:
    return f'echo "real {name} $$ $*"'


def test_a_pass_through_iptables_call_is_the_real_iptables_with_no_tool_on_path_but_it(tmp_path):
    """No basename, dirname or readlink on PATH: the launcher needs none of them."""
    fakes = fake_tools(tmp_path / "real", iptables=echo("iptables"))
    env = kube_router_shim.environment({"PATH": fakes})
    proc = subprocess.Popen([shim_path("iptables"), "-t", "filter", "-N", "KUBE-ROUTER-INPUT", "--wait"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    out, err = proc.communicate(timeout=30)
    assert (proc.returncode, err) == (0, "")
    assert out == f"real iptables {proc.pid} -t filter -N KUBE-ROUTER-INPUT --wait\n", "the launcher exec'd it"


def traced(argv: list[str], env: dict[str, str], tmp_path) -> tuple[list[str], int, str]:
    """(programs exec'd, processes forked, stdout) of argv, by strace."""
    if shutil.which("strace") is None:
        pytest.skip("needs strace")
    trace = tmp_path / "trace"
    proc = subprocess.run(["strace", "-f", "-qq", "-o", str(trace), "-e", "trace=execve,clone,clone3,fork,vfork", *argv],
                          env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = trace.read_text().splitlines()
    execs = [line.split('"')[1] for line in lines if " execve(" in line]  # the call's line (a failed one too)
    forks = [line for line in lines if any(f" {call}(" in line for call in ("clone", "clone3", "fork", "vfork"))]
    return execs, len(forks), proc.stdout


def test_a_pass_through_iptables_call_starts_no_other_program(tmp_path):
    """Even with coreutils on PATH: nothing but the launcher and the real tool is exec'd, and
    nothing is forked (no $(...) either)."""
    fakes = fake_tools(tmp_path / "real", iptables=echo("iptables"))
    env = kube_router_shim.environment({"PATH": f"{fakes}{os.pathsep}{os.environ.get('PATH', os.defpath)}"})
    execs, forks, out = traced([shim_path("iptables"), "-t", "nat", "-C", "POSTROUTING", "-j", "RETURN"], env, tmp_path)
    assert execs == [shim_path("iptables"), os.path.join(fakes, "iptables")]
    assert forks == 0
    assert out.split()[3:] == ["-t", "nat", "-C", "POSTROUTING", "-j", "RETURN"]


def test_a_filtered_call_starts_python_and_the_real_tool_only(tmp_path):
    fakes = fake_tools(tmp_path / "real", iptables_save=PRINT_SAVE)
    env = kube_router_shim.environment({"PATH": f"{fakes}{os.pathsep}{os.environ.get('PATH', os.defpath)}"})
    execs, forks, out = traced([shim_path("iptables-save"), "-t", "filter"], env, tmp_path)
    assert execs == [shim_path("iptables-save"), sys.executable, os.path.join(fakes, "iptables-save")]
    assert forks == 1, "the real iptables-save, from Python"
    assert out == view.iptables_save_view(SAVE)


def test_a_filtered_call_works_with_no_tool_on_path_but_the_real_one(tmp_path):
    fakes = fake_tools(tmp_path / "real", iptables_save=PRINT_SAVE)
    env = kube_router_shim.environment({"PATH": fakes})
    proc = subprocess.run([shim_path("iptables-save"), "-t", "filter"], env=env, capture_output=True, text=True,
                          timeout=30, cwd=tmp_path)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout == f"*filter\n:{POD_A} - [0:0]\n-A {POD_A} -j ACCEPT\nCOMMIT\n"


def test_a_shim_found_under_another_name_on_path_is_never_taken_for_the_real_tool(tmp_path):
    """A directory whose `iptables` is a link to the launcher, first on PATH: exec'ing it would
    loop for ever. The real one is the next; with none, the call fails at once, naming the tool."""
    alias = tmp_path / "alias"
    alias.mkdir()
    (alias / "iptables").symlink_to(LAUNCHER)
    fakes = fake_tools(tmp_path / "real", iptables=echo("iptables"))
    for path, real in ((f"{alias}{os.pathsep}{fakes}{os.pathsep}/usr/bin:/bin", True), (str(alias), False)):
        env = kube_router_shim.environment({"PATH": path})
        proc = subprocess.run([shim_path("iptables"), "-t", "filter", "-N", "X"], env=env, capture_output=True,
                              text=True, timeout=30, cwd=tmp_path)
        if real:
            assert (proc.returncode, proc.stdout.split()[:2]) == (0, ["real", "iptables"]), proc.stderr
        else:
            assert proc.returncode == 127 and "no real `iptables`" in proc.stderr, proc.stderr


@pytest.mark.parametrize("tool", kube_router_shim.TOOLS)
def test_a_real_tool_named_by_the_environment_is_never_a_shim(tool, tmp_path):
    env = kube_router_shim.environment({"PATH": os.environ.get("PATH", os.defpath)})
    env[kube_router_shim.REAL_TOOL_ENV[tool]] = shim_path("ipset")
    argv = [shim_path(tool), *(["-t", "filter", "-N", "X"] if tool == "iptables" else ["save"] if tool == "ipset" else [])]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30, cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert proc.returncode == 127 and f"no real `{tool}`" in proc.stderr, proc.stderr


def test_a_fresh_interpreter_loads_the_shim_with_cheap_imports_only():
    """The launcher's Python starts (-I -S) with ~20 modules; the shim adds os and its own two
    modules, not subprocess/shutil/pathlib/re (~45 ms of CPU per call, measured)."""
    def modules(code: str) -> set[str]:
        out = subprocess.run([sys.executable, "-I", "-S", "-c", f"import sys; sys.path.insert(0, {REPO!r}); {code}; "
                              "print(' '.join(sys.modules))"], capture_output=True, text=True, timeout=60, check=True).stdout
        return set(out.split())

    added = modules("import e2e.cluster.kube_router_shim") - modules("import os")
    assert added == {"e2e", "e2e.cluster", "e2e.cluster.kube_router_shim", "e2e.cluster.kube_router_view"}


def test_a_large_restore_reaches_the_real_tool_whole(tmp_path):
    """kube-router's restore (one chain per pod) through the pipe to the real iptables-restore."""
    restored = tmp_path / "restored"
    fakes = fake_tools(tmp_path / "real", iptables_save=f"cat <<'EOF'\n{SAVE}EOF",
                       iptables_restore=f'cat > {restored}; echo "real iptables-restore $*"')
    rules = [f"-A {POD_A} -s 10.244.{i // 250}.{i % 250}/32 -m comment --comment \"rule {i}\" -j ACCEPT" for i in range(20000)]
    restore = "\n".join(["*filter", f":{POD_A} - [0:0]", *rules, "COMMIT"]) + "\n"
    env = kube_router_shim.environment({"PATH": f"{fakes}{os.pathsep}{os.environ.get('PATH', os.defpath)}"})
    proc = subprocess.run([shim_path("iptables-restore"), "--wait", "-T", "filter"], input=restore, env=env,
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout == "real iptables-restore --wait --noflush -T filter\n"
    assert restored.read_text() == view.iptables_restore_transaction(restore, view.chains_in_save(SAVE))


def test_a_real_tool_that_fails_before_reading_its_input_fails_the_call_with_its_message(tmp_path):
    fakes = fake_tools(tmp_path / "real", ipset='echo "ipset v7.17: Kernel error" >&2; exit 1')
    restore = "".join(f"add KUBE-SRC-DDDDDDDDDDDDDDDD 10.244.{i // 250}.{i % 250}\n" for i in range(50000))
    env = kube_router_shim.environment({"PATH": fakes})
    proc = subprocess.run([shim_path("ipset"), "restore", "-exist"], input=restore, env=env, capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)
    assert (proc.returncode, proc.stderr, proc.stdout) == (1, "ipset v7.17: Kernel error\n", "")


def test_another_checkouts_shims_on_path_are_never_taken_for_the_real_tools(tmp_path):
    """A second checkout's kube_router_bin ahead on PATH (a workstation with two worktrees):
    its launcher is a shim too, whatever its directory, so the real tool is the next one."""
    other = tmp_path / "other-checkout" / "kube_router_bin"
    other.mkdir(parents=True)
    shutil.copy(LAUNCHER, other / "kube-router-shim")
    for tool in kube_router_shim.TOOLS:
        (other / tool).symlink_to("kube-router-shim")
    fakes = fake_tools(tmp_path / "real", **{t.replace("-", "_"): echo(t) for t in kube_router_shim.TOOLS})
    env = kube_router_shim.environment({"PATH": f"{other}{os.pathsep}{fakes}"})
    assert {t: env.get(kube_router_shim.REAL_TOOL_ENV[t]) for t in kube_router_shim.TOOLS} == {
        t: os.path.join(fakes, t) for t in kube_router_shim.TOOLS}


def test_a_real_tool_found_through_a_relative_path_entry_is_named_absolutely(tmp_path, monkeypatch):
    """kube-router runs in a directory of its own: a relative name would be looked up there."""
    fake_tools(tmp_path / "real", iptables=echo("iptables"))
    monkeypatch.chdir(tmp_path)
    env = kube_router_shim.environment({"PATH": "real"})
    assert env[kube_router_shim.REAL_TOOL_ENV["iptables"]] == str(tmp_path / "real" / "iptables")
