"""The harness review's findings that need no cluster (e2e/sandbox/REVIEW.md has the list):

    .venv/bin/python -m pytest e2e/test_harness_review.py -p no:cacheprovider -q

Each test states what must hold; each failed on main at c3fff9f (that was the finding). The ones
not fixed yet are strict xfails naming the finding, so fixing one makes it fail until unmarked.
Nothing here touches the machine's locks, cgroups, rules or the real cluster: the lock files
and the state dir are temporary, the processes are `sleep`s this test starts.
"""

import fcntl
import os
import subprocess
from pathlib import Path

import pytest

from e2e.cluster import health, locks, processes, startup
from e2e.cluster.kubectl import KubectlError, wait_for

NEEDS_CLUSTER = False


@pytest.fixture
def private_locks(tmp_path, monkeypatch):
    monkeypatch.setattr(locks, "MUTEX", tmp_path / "lock")
    monkeypatch.setattr(locks, "USERS", tmp_path / "users")
    monkeypatch.delenv(locks.USERS_FD_ENV, raising=False)
    monkeypatch.setenv("ZT_RELAY_E2E_STATE", str(tmp_path / "state"))
    return tmp_path


def test_stop_refuses_to_take_a_component_away_while_another_run_holds_the_cluster(private_locks):
    """F4. `python -m e2e.cluster stop kube-apiserver` (control.stopped, used by
    test_operator's 15 s API outage, which is neither `restarts_cluster` nor gated on
    --with-restart) takes the shared API server away from every other test run: stop/start
    take only the up/down mutex, never the USERS lock that `down` respects."""
    run = private_locks / "state" / "run"
    pid = processes.start("kube-apiserver", ["sleep", "300"], run, private_locks / "logs")
    wait_for("the stand-in apiserver", lambda: processes.running_pid("kube-apiserver", run) == pid, 5, 0.05)
    other_run = os.open(locks.USERS, os.O_RDWR | os.O_CREAT)  # another pytest session's hold
    fcntl.flock(other_run, fcntl.LOCK_SH)
    try:
        with pytest.raises((SystemExit, locks.InUse), match="another test run"):
            startup.stop("kube-apiserver")
    finally:
        alive = processes.running_pid("kube-apiserver", run) == pid
        processes.stop("kube-apiserver", run, timeout=2)
        os.close(other_run)
    assert alive


def test_stop_takes_a_component_away_when_the_only_holder_is_the_run_asking(private_locks, monkeypatch):
    """F4, the other side: the session's own hold (passed to the CLI child as control does)
    never blocks its own `stop`."""
    run = private_locks / "state" / "run"
    pid = processes.start("kube-apiserver", ["sleep", "300"], run, private_locks / "logs")
    wait_for("the stand-in apiserver", lambda: processes.running_pid("kube-apiserver", run) == pid, 5, 0.05)
    mine = locks.hold_shared()
    monkeypatch.setenv(locks.USERS_FD_ENV, str(mine))
    try:
        assert startup.stop("kube-apiserver") == 0
        assert processes.running_pid("kube-apiserver", run) is None
    finally:
        processes.stop("kube-apiserver", run, timeout=2)
        os.close(mine)


class _Kubectl:
    def __init__(self, exc):
        self.exc = exc

    def json(self, *args, timeout=None):
        raise self.exc


# What kubectl prints when a loaded API server (or its etcd) is slow, not broken.
SLOW_ANSWERS = [
    "Error from server (Timeout): the server was unable to return a response in the time allotted, "
    "but may still be processing the request (get nodes ztr-e2e-node)",
    "Error from server: etcdserver: request timed out",
    "Unable to connect to the server: net/http: TLS handshake timeout",
    "Error from server (TooManyRequests): the server has received too many requests and has asked us to try again later",
]


@pytest.mark.parametrize("stderr", SLOW_ANSWERS, ids=["server-timeout", "etcd-timeout", "tls-handshake", "429"])
def test_a_slow_api_server_is_slow_not_broken(fake_cluster, monkeypatch, stderr):
    """F7. health() calls only a subprocess timeout "slow"; every answer kubectl gives for an
    overloaded API server or etcd is "broken", and `up` then rebuilds (or, with another run
    holding the cluster, fails that run)."""
    from e2e.cluster.layout import Layout

    err = KubectlError(("get", "node"), subprocess.CompletedProcess([], 1, "", stderr))
    monkeypatch.setattr(health, "admin", lambda: _Kubectl(err))
    assert health.health(Layout(primary_interface="eth0"), fake_cluster)[0] == "slow"


@pytest.mark.parametrize("stderr", [
    "The connection to the server 10.252.0.1:6443 was refused - did you specify the right host or port?",
    'Error from server (NotFound): nodes "ztr-e2e-node" not found',
    "Unable to connect to the server: x509: certificate signed by unknown authority",
], ids=["refused", "no-node", "x509"])
def test_a_broken_api_server_is_still_broken(fake_cluster, monkeypatch, stderr):
    """F7, the other side: only overload is "slow"."""
    from e2e.cluster.layout import Layout

    err = KubectlError(("get", "node"), subprocess.CompletedProcess([], 1, "", stderr))
    monkeypatch.setattr(health, "admin", lambda: _Kubectl(err))
    assert health.health(Layout(primary_interface="eth0"), fake_cluster)[0] == "broken"


THE_LIST = ("components.COMPONENTS", "components.NAMES")


def _names_started_by_up() -> tuple[list[str], int]:
    """(component names `_up` passes to start_component by hand, in source order; the number
    of start_component calls inside a loop over the one list)."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(startup._up))

    def loop_of(var: str, call: ast.AST) -> ast.For | None:
        loops = [n for n in ast.walk(tree) if isinstance(n, ast.For) and getattr(n.target, "id", None) == var
                 and any(c is call for c in ast.walk(n))]
        return loops[0] if loops else None

    names: list[str] = []
    from_the_list = 0
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "start_component":
            arg = node.args[2]
            var = arg.id if isinstance(arg, ast.Name) else getattr(arg.value, "id", None) if isinstance(arg, ast.Attribute) else None
            loop = loop_of(var, node) if var else None
            if isinstance(arg, ast.Constant):
                names.append(arg.value)
            elif loop is not None and ast.unparse(loop.iter) in THE_LIST:
                from_the_list += 1  # `for comp in components.COMPONENTS: start_component(..., comp.name)`
            elif loop is not None and isinstance(loop.iter, ast.Tuple):  # `for name in ("etcd", ...)`
                names.extend(e.value for e in loop.iter.elts)
            else:
                names.append(f"<computed: {ast.unparse(arg)}>")
    return sorted(set(names), key=names.index), from_the_list


def test_up_starts_the_components_of_the_one_list_from_that_list():
    """F12 (structure). components.COMPONENTS is documented as THE list ("`up` starts them in
    this order"), but `_up` names every component again, in five hand-written groups: a
    component added to COMPONENTS is never started by `up`, while health() then calls the
    cluster broken ("not running: X") and every `up` rebuilds it. `up` must iterate the list."""
    from e2e.cluster import components

    started, from_the_list = _names_started_by_up()
    assert all(not n.startswith("<computed") for n in started), started
    hand_written = [n for n in started if n in components.NAMES]
    assert not hand_written, f"_up names components by hand instead of iterating components.COMPONENTS: {hand_written}"
    assert from_the_list == 1, "_up starts no component from components.COMPONENTS"
    assert set(startup.AFTER) <= set(components.NAMES), "a step after a component that is not in the list"


def test_the_image_is_built_from_the_locked_dependencies(tmp_path, monkeypatch):
    """F10. inputs_digest() counts .ci/requirements.lock as an input of the image ("Equal
    digest, equal image"), but build_wheels() resolves the dependencies afresh from the index
    (`pip wheel REPO[operator]`, no `-c .ci/requirements.lock`): the image carries whatever
    versions are newest that day, not the pinned ones, and a cached image with the same digest
    may carry different ones."""
    from e2e import images

    calls = []
    monkeypatch.setattr(images, "_run", lambda cmd, **kw: calls.append(cmd))
    images.build_wheels(tmp_path / "wheels")
    (argv,) = calls
    assert argv[argv.index("-c") + 1] == str(images.LOCK_FILE) and images.LOCK_FILE.exists(), argv
    assert ".ci/requirements.lock" in images.INPUT_PATHS


def test_a_stand_in_gives_back_only_what_it_assigned_itself_not_another_runs():
    """F14 (existing backend, --cluster-lb-standin). Every session runs its own stand-in
    thread against the shared cluster; the annotation records only the address, not which
    stand-in wrote it. When one session ends, release_all() clears the ingress of EVERY
    Service any stand-in assigned - the other session's LoadBalancers lose their address
    mid-test."""
    from e2e.cluster import lb

    other_sessions = {
        "metadata": {"namespace": "e2e-other-run", "name": "relay", "creationTimestamp": "2026-01-01T00:00:00Z",
                     "annotations": {lb.ANNOTATION: "10.250.0.7"}},
        "spec": {"type": "LoadBalancer", "loadBalancerClass": lb.LB_CLASS},
        "status": {"loadBalancer": {"ingress": [{"ip": "10.250.0.7"}]}},
    }
    assert lb.release_all([other_sessions]) == {}, "this session's stand-in releases another session's address"


def test_build_on_a_fresh_machine_runs_go_in_a_cache_dir_that_exists(tmp_path, monkeypatch):
    """F9. `build` on a fresh machine (no ~/.cache/zt-relay yet) crashed before building: it ran
    `go mod download` with cwd = the cache dir, which nothing had created."""
    from e2e.cluster import build

    monkeypatch.setenv("ZT_RELAY_CACHE", str(tmp_path / "fresh" / "zt-relay"))
    seen = []

    def go(argv, cwd=None, **kw):
        seen.append(Path(cwd).is_dir())
        raise subprocess.CalledProcessError(1, argv)  # stop here: the rest needs the network

    monkeypatch.setattr(build.subprocess, "run", go)
    with pytest.raises(subprocess.CalledProcessError):
        build.kubernetes_tool()
    assert seen == [True]


def test_deps_installs_what_ci_run_needs_before_the_venv_on_a_fresh_debian():
    """F9 (second half). `.ci/run` runs `python3 -m venv .venv` right after `deps`; on a fresh
    Debian that needs python3-venv (ensurepip), which APT_PACKAGES does not list. (Go >= 1.26 is
    needed too and is not installable from Debian at all: `.ci/run` says it "installs what the
    machine lacks" but never mentions it.)"""
    from e2e.cluster import deps

    assert "python3-venv" in deps.APT_PACKAGES


def test_two_runs_starting_together_on_a_broken_cluster_do_not_both_give_up(private_locks, monkeypatch):
    """F17. Each pytest session took USERS shared *before* its `up` (conftest `cluster`
    fixture; now `up` takes it for the session once the cluster is up); `up` of a broken cluster (after a reboot: state dir there, nothing running) needs
    USERS exclusive. Two sessions that start together (two developers, two CI jobs, two
    worktrees: `pytest --with-e2e` as documented, without .ci/run's `down` first) each hold it
    shared, so each one's `up` refuses ("another test run is using the cluster") and both
    sessions fail - although nobody can be using a cluster whose processes are all gone."""
    first, second = locks.open_session_hold(), locks.open_session_hold()  # what the conftest fixture takes
    try:
        refused = 0
        for mine in (first, second):
            monkeypatch.setenv(locks.USERS_FD_ENV, str(mine))
            try:
                with locks.sole_user():
                    pass
            except locks.InUse:
                refused += 1
        assert refused < 2, "both runs refuse to rebuild the broken cluster: neither can start"
        # Once its `up` is done, a run holds the cluster: a third run's rebuild is refused.
        monkeypatch.setenv(locks.USERS_FD_ENV, str(first))
        locks.share_inherited()
        monkeypatch.delenv(locks.USERS_FD_ENV)
        with pytest.raises(locks.InUse):
            with locks.sole_user():
                pass
    finally:
        os.close(first)
        os.close(second)


def test_deps_leaves_a_docker_ce_workstation_alone(monkeypatch):
    """F18. On the common workstation with Docker's own packages (docker-ce, containerd.io -
    which Provides and Conflicts with containerd and runc), dpkg knows no package named
    docker.io, containerd or runc, so `deps` (first step of .ci/run) runs `apt-get install -y
    docker.io containerd runc ...`; apt resolves the Conflicts by removing containerd.io and
    with it docker-ce - the developer's Docker - without asking (-y). `deps` must accept what
    provides the tools (`containerd`, `runc`, `dockerd` on PATH) or refuse."""
    from e2e.cluster import deps

    class Done:
        def __init__(self, stdout):
            self.stdout, self.returncode = stdout, 0

    installed = {"iptables", "ipset", "conntrack", "iproute2", "busybox-static", "gcc", "libc6-dev", "nginx-light",
                 "containernetworking-plugins", "python3-venv", "docker-ce", "docker-ce-cli", "containerd.io"}

    def dpkg_query(argv, **kw):
        names = [a for a in argv[3:]]
        return Done("".join(f"{n} installed\n" for n in names if n in installed))

    monkeypatch.setattr(deps.subprocess, "run", dpkg_query)
    monkeypatch.setattr(deps.shutil, "which", lambda cmd: f"/usr/bin/{cmd}")  # what containerd.io/docker-ce ship
    assert deps.missing() == [], "deps would apt-get install over Docker CE: " + " ".join(deps.missing())
    assert deps.conflicts() == []


def test_deps_refuses_to_install_over_a_conflicting_package(monkeypatch, capsys):
    """F18. containerd.io installed but its runc gone: installing Debian's runc would remove it
    (Conflicts); `deps` says so and runs no apt-get at all."""
    from e2e.cluster import deps

    calls = []

    class Done:
        def __init__(self, stdout):
            self.stdout, self.returncode = stdout, 0

    def run(argv, **kw):
        calls.append(argv)
        if argv[0] != "dpkg-query":
            return Done("")
        return Done("".join(f"{n} installed\n" for n in argv[3:] if n in {"containerd.io", "docker-ce"}))

    monkeypatch.setattr(deps.subprocess, "run", run)
    monkeypatch.setattr(deps.shutil, "which", lambda cmd: None if cmd == "runc" else f"/usr/bin/{cmd}")
    assert deps.install() == 1
    assert [c[0] for c in calls if c[0] != "dpkg-query"] == []
    assert "containerd.io (instead of runc)" in capsys.readouterr().out


def test_no_retries_or_tolerated_loss_on_local_paths_in_the_e2e_tests():
    """F20 (landed on main after c3fff9f). Issue 12: "No retries on local paths. A lost first
    datagram on loopback or veth is a bug to find, not to retry." test_fallback.py retries
    curl three times with sleeps, opens up to three fresh tunnels until one echoes, and the
    16-tunnel test accepts losing half of the datagrams (peers `steady`) - all on the
    test-host veth -> node -> pod path."""
    import re

    found = []
    for path in sorted(Path(__file__).resolve().parent.glob("test_*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"for attempt in range\(|//\s*2\b.*received|received.*//\s*2", line):
                found.append(f"{path.name}:{n}: {line.strip()}")
    assert not found, "\n".join(found)


def test_no_sandbox_script_sleeps_a_fixed_time_before_its_next_step():
    """Issue 12: "no sleep where a condition can be waited for". A bare `sleep N` line in a
    sandbox script (f3b waited one second for its links) is a guess; a poll of the condition,
    bounded (`for ...; do COND && break; sleep 0.05; done`), is not."""
    import re

    found = []
    for path in sorted((Path(__file__).resolve().parent / "sandbox").glob("*.sh")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.fullmatch(r"\s*sleep\s+[0-9.]+\s*", line):
                found.append(f"{path.name}:{n}: {line.strip()}")
    assert not found, "\n".join(found)


def test_no_sandbox_script_waits_a_fixed_time_inside_a_command_line():
    """Issue 12 (harness lows): the bare-line check above misses a timed wait written after a
    `;` or `&` on a command line (f19 `sleep 1; echo ...`, f8 `... & sleep 1.5`): a guess at how
    long a sender needs to start, not a wait for what it does. Only a poll's own pause
    (`...; sleep 0.05; done`, bounded by the loop) is allowed."""
    import re

    timed = re.compile(r"(?:^|[;&|]|\bthen|\bdo|\belse)\s*sleep\s+[0-9.]+(?![0-9.]|\s*;\s*done)")
    found = []
    for path in sorted((Path(__file__).resolve().parent / "sandbox").glob("*.sh")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.lstrip().startswith("#") and timed.search(line):
                found.append(f"{path.name}:{n}: {line.strip()}")
    assert not found, "\n".join(found)


def test_no_sandbox_script_writes_a_fixed_path_under_tmp():
    """Issue 12 (harness lows): /tmp is the machine's, not the sandbox's (sandbox.sh mounts a
    tmpfs over /run only). f16 wrote `down`'s output to /tmp/review-f16-down.out, f3 its
    resolver's to /tmp/review-f3-resolver.out: two runs at once (two worktrees, two CI jobs)
    read and delete each other's files. A path made by mktemp, or carrying the shell's pid ($$), is
    unique per run."""
    import re

    fixed = re.compile(r"/tmp\}?/[A-Za-z0-9_.-]+")
    found = []
    for path in sorted((Path(__file__).resolve().parent / "sandbox").glob("*.sh")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if line.lstrip().startswith("#"):
                continue
            for match in fixed.finditer(line):
                rest = line[match.end():]
                if "XXX" in match.group() or rest.startswith("$$"):
                    continue
                found.append(f"{path.name}:{n}: {match.group()}")
    assert not found, "\n".join(found)


def test_no_sandbox_script_reads_the_hosts_sysfs_for_its_own_links():
    """sandbox.sh makes a new netns and mount namespace but keeps the host's /sys mount: its
    /sys/class/net lists the HOST netns's links. f3b waited for /sys/class/net/ztr-cni0 (the
    real cluster's bridge, there or not): it passed only while the real cluster was up and
    failed after its 60 s wait otherwise (beside the cluster part of .ci/run: by timing)."""
    found = []
    for path in sorted((Path(__file__).resolve().parent / "sandbox").glob("*.sh")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if "/sys/class/net" in line and not line.lstrip().startswith("#"):
                found.append(f"{path.name}:{n}: {line.strip()}")
    assert not found, "\n".join(found)


def test_our_cluster_ran_this_boot_only_by_evidence_of_this_boot(tmp_path, monkeypatch):
    """F1. A state dir left by another boot is no evidence; our boot id, our firewall jumps or
    our kube-proxy alive are."""
    from e2e.cluster import boot, firewall, processes

    monkeypatch.setattr(boot, "BOOT_ID", tmp_path / "boot_id")
    monkeypatch.setattr(firewall, "present", lambda is_ours=None: [])
    monkeypatch.setattr(processes, "running_pid", lambda name, run: None)
    (tmp_path / "boot_id").write_text("now\n")
    state = tmp_path / "state"
    state.mkdir()
    assert not boot.ours_ran_this_boot(state, state / "run")
    (state / "boot_id").write_text("before-the-reboot\n")
    assert not boot.ours_ran_this_boot(state, state / "run")
    boot.mark(state)
    assert boot.ours_ran_this_boot(state, state / "run")
    (state / "boot_id").unlink()
    monkeypatch.setattr(firewall, "present", lambda is_ours=None: ["iptables -t filter -A OUTPUT -j ZTR-E2E-OUTPUT"])
    assert boot.ours_ran_this_boot(state, state / "run")


def test_down_puts_back_only_the_sysctls_it_changed_in_this_boot(tmp_path, monkeypatch):
    """F2. A record of another boot is never applied; a key someone else changed after `up` is
    theirs."""
    from e2e.cluster import boot, sysctls

    monkeypatch.setattr(boot, "BOOT_ID", tmp_path / "boot_id")
    (tmp_path / "boot_id").write_text("one\n")
    root = tmp_path / "proc"
    for key, value in (("net.ipv4.ip_forward", "0"), ("vm.overcommit_memory", "0")):
        path = root.joinpath(*key.split("."))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value)
    record = tmp_path / "sysctl.json"
    sysctls.save(record, root)
    sysctls.write("net.ipv4.ip_forward", "1", root)  # up
    sysctls.write("vm.overcommit_memory", "1", root)  # the kubelet
    sysctls.mark_ours(record, root)
    sysctls.write("vm.overcommit_memory", "2", root)  # someone else, after up
    assert sysctls.restore(record, root) == []
    assert (sysctls.read("net.ipv4.ip_forward", root), sysctls.read("vm.overcommit_memory", root)) == ("0", "2")

    sysctls.write("net.ipv4.ip_forward", "1", root)
    (tmp_path / "boot_id").write_text("two\n")  # a reboot; docker turned forwarding on
    assert sysctls.restore(record, root, this_boot=False) == []
    assert sysctls.read("net.ipv4.ip_forward", root) == "1"
    legacy = tmp_path / "legacy.json"
    legacy.write_text('{"net.ipv4.ip_forward": "0"}')
    sysctls.restore(legacy, root, this_boot=False)
    assert sysctls.read("net.ipv4.ip_forward", root) == "1"
    sysctls.restore(legacy, root, this_boot=True)
    assert sysctls.read("net.ipv4.ip_forward", root) == "0"
