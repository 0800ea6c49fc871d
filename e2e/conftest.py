"""pytest options and fixtures for end-to-end tests against a real Kubernetes.

Options (e2e is opt-in, as in kopf's own suite; defined in e2e/pytest_parts.py, loaded by the root
conftest.py for every path):
  --with-e2e          also run the tests under e2e/ (CI passes this)
  --only-e2e          run only the tests under e2e/
  --part=PART         all (default); cluster: only the tests that need a cluster;
                      no-cluster: only the others (tests/ and the harness's pure tests).
                      The rest is deselected, not skipped: `.ci/run` runs the no-cluster
                      part beside the cluster part's phases
  --phase=PHASE       (with --part=cluster) alone: only the tests marked alone_on_cluster
                      (they stop a component, restart the cluster, read a machine-wide
                      counter); shared: only the others. `.ci/run` runs alone first, then
                      shared as concurrent shards
  --shard=K/N         (with --phase=shared) the K-th of N sessions, balanced by the
                      durations in e2e/cluster_durations.json (a test not there weighs 3 s)
  --with-restart      also run the down/up test (it restarts the cluster other sessions
                      may be using; CI=true turns it on)
  --cluster=BACKEND   local (default): the single-node cluster of `e2e.cluster`, brought up
                      idempotently by `python -m e2e.cluster up` in a child process and
                      left running after the session (CI runs `down` at the end; needs
                      root and `python -m e2e.cluster build`);
                      kind: a kind cluster through pytest-kind (Docker and internet needed);
                      existing: the cluster of $KUBECONFIG, used as it is.

Every item under e2e/ is marked `e2e` and skipped, saying how to enable it, unless one of the
flags is given. Under CI=true, an e2e test that skips anyway is reported as a failure.
The local backend's session holds the cluster shared (`e2e.cluster.locks`) from `up` to the
end (taken by `up` itself, under the up/down mutex): another run's `down`, or its `up` of a broken cluster, refuses instead of tearing it
down underneath. A test module may set `NEEDS_CLUSTER = False` (pure helper tests): its items
are not marked and always run.

Fixtures for test authors:
  cluster          (session) the `Cluster` in use: .backend, .kubeconfig, .kubectl_binary,
                   .layout (local only: elsewhere the test is skipped, with the reason)
  kubeconfig       (session) path of a cluster-admin kubeconfig; brings the local cluster up
  kubectl          (session) `Kubectl`: `kubectl("get", "pods", "-n", ns)` -> CompletedProcess
                   (check=True, 30 s timeout); `kubectl.json(...)` -> parsed `-o json`;
                   `kubectl.apply(obj, ..., namespace=ns)`
  namespace        (function) a fresh namespace name, deleted after the test
  load_image       (session) `load_image("zt-relay:0.1.0-dev")` -> the reference pods use: a
                   Docker image built here, into the cluster's runtime (local, kind; pods use
                   imagePullPolicy IfNotPresent), or pushed to --image-registry (existing)
  busybox_image    (session) tag of a small busybox image (sh, httpd, nc, nslookup, tftp) in the cluster
  test_hosts       (function) `test_hosts("client")` -> `TestHost` (a network namespace named
                   with a unique suffix, with its own address, routed through the node:
                   .address, .run(*cmd), .popen(*cmd));
                   removed after the test. Local backend only, skipped elsewhere.
  probes           (function) `probes.gate(probes_mod.FORWARD, "-s", ip)`: counters of the test's own
                   packets at a guard (`.dropped(at_least=N)`), `probes.count(...)` one rule;
                   removed after the test (e2e/probes.py). Local backend only.
  cluster_cli      (session) `cluster_cli("status")` runs `python -m e2e.cluster CMD`, returns stdout
  wait_for         `wait_for("what", probe, timeout)` polls until probe() is truthy
  wait_for_pods_ready  `wait_for_pods_ready(namespace, selector, count, timeout=120)` -> pods

The LoadBalancer stand-in (`e2e.cluster.lb`) runs for the whole session: on the local
backend `up` starts it as a host process; on kind and existing clusters the `cluster`
fixture runs it in a thread (existing: only if --cluster-lb-standin is given).
"""

import os
import re
import shutil
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from e2e.cluster import paths
from e2e.cluster.kubectl import Kubectl, wait_for as _wait_for
from e2e.cluster.layout import Layout
from e2e.pytest_parts import E2E_DIR  # the options and --part are in e2e/pytest_parts.py

KIND_CLUSTER_NAME = "zt-relay-e2e"


def _ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    """Under CI=true with e2e enabled, a skipped e2e test fails: CI must never report green
    for a test that did not run (non-root, a missing tool, a backend without a part)."""
    outcome = yield
    report = outcome.get_result()
    config = item.config
    enabled = config.getoption("--with-e2e") or config.getoption("--only-e2e")
    # An xfail is reported as skipped too (with `wasxfail`): that one is a known finding, not a
    # test that did not run.
    xfailed = hasattr(report, "wasxfail")
    if report.skipped and not xfailed and _ci() and enabled and item.get_closest_marker("e2e") is not None:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which counts as a failure: {reason}"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "restarts_cluster: runs `down` and `up`; ordered last in the session")


@dataclass
class Cluster:
    backend: str
    kubeconfig: Path
    kubectl_binary: str
    local_layout: Layout | None = None
    """The address plan (local backend only); read it through `layout`."""
    kind: object | None = None
    """The pytest_kind.KindCluster (kind backend only)."""

    @property
    def layout(self) -> Layout:
        """The local cluster's address plan. On another backend, the test asking for it needs
        a local-only part (test hosts, the node IP, the sink): it is skipped with that reason,
        never failed with an AttributeError on None."""
        if self.local_layout is None:
            pytest.skip(f"needs the local cluster's address plan (--cluster=local), not --cluster={self.backend}")
        return self.local_layout


def _kubectl_binary() -> str:
    built = paths.bin_dir() / "kubectl"
    if built.exists():
        return str(built)
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail("no kubectl: run `python -m e2e.cluster build`, or put kubectl on PATH")
    return found


_USERS_FD: int | None = None
"""This session's shared hold on the local cluster (see e2e.cluster.locks), once taken."""


def cluster_cli(command: str, timeout: float = 300) -> str:
    """Run `python -m e2e.cluster COMMAND` in a child process and return its output.

    Not in-process: the cluster's processes must not be children of pytest, or they linger
    as zombies here when another session's `down` stops them. The child gets this session's
    hold on the cluster, so its own `down`/`up` is not refused because of this session.
    """
    from e2e.cluster import locks

    env, pass_fds = locks.child_env()
    proc = subprocess.run(
        [sys.executable, "-m", "e2e.cluster", *command.split()], capture_output=True, text=True, timeout=timeout,
        cwd=E2E_DIR.parent, env=env, pass_fds=pass_fds,
    )
    if proc.returncode != 0:
        pytest.fail(f"python -m e2e.cluster {command} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


PREFETCH_OUTCOME: list[str] = []
"""What the session's early import of the project image did (for a reader of a failed run: in
the terminal summary)."""


def pytest_terminal_summary(terminalreporter) -> None:
    if PREFETCH_OUTCOME:
        terminalreporter.write_line(f"early import of the project image: {'; '.join(PREFETCH_OUTCOME)}")


def _prefetch_project_image(session: pytest.Session, up_returned: threading.Event,
                            session_over: threading.Event | None = None) -> threading.Thread | None:
    """If a test of this session uses the project image (the `image` fixture of test_operator,
    test_chart, test_fallback), put it into the cluster while
    `up` is still starting it (e2e.cluster.image_import.import_as_soon_as_containerd_answers);
    load_image then finds it there. A failure here only costs the time: load_image imports
    it again and reports its own error. Behind another build's lock, it stops waiting once
    `up` failed or `session_over` is set (the session's end joins it)."""
    if not any("image" in getattr(item, "fixturenames", ()) for item in session.items):
        return None
    from e2e import images
    from e2e.cluster import image_import

    up_failed = image_import.up_failed(up_returned)

    def ended() -> bool:
        return session_over is not None and session_over.is_set()

    def run() -> None:
        try:
            tag = images.build_image(give_up=lambda: ended() or up_failed())
            PREFETCH_OUTCOME.append(image_import.import_as_soon_as_containerd_answers(
                tag, up_returned, pin=images.pinned(tag)))
        except image_import.GaveUp:
            PREFETCH_OUTCOME.append("gave up: the session ended" if ended() else image_import.UP_FAILED)
        except Exception as exc:  # noqa: BLE001 (load_image redoes it and fails with its own error)
            PREFETCH_OUTCOME.append(f"failed: {exc!r}")

    thread = threading.Thread(target=run, name="image-prefetch", daemon=True)
    thread.start()
    return thread


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest):
    backend = request.config.getoption("--cluster")
    stop = threading.Event()
    lb_thread = None
    if backend == "local":
        global _USERS_FD
        from e2e.cluster import locks, node

        if os.geteuid() != 0:
            pytest.skip("--cluster=local needs root (network namespaces, iptables, containerd)")
        # Held from `up` (which takes it shared, under the up/down mutex, once the cluster is
        # up) to the end of the session: no other run's `up` or `down` tears the cluster down
        # under this one (they refuse and name this process). Nothing is held while waiting for
        # `up`, so two sessions starting on a broken cluster don't block each other's rebuild.
        _USERS_FD = locks.open_session_hold()
        locks.remember_session_hold(_USERS_FD)
        request.addfinalizer(lambda: (locks.remember_session_hold(None), os.close(_USERS_FD)))
        up_returned, session_over = threading.Event(), threading.Event()
        prefetch = _prefetch_project_image(request.session, up_returned, session_over)
        if prefetch is not None:
            # Also when `up` fails: the prefetch then stops its `docker save` and removes the
            # archive; a session that ended first would leave the save running, an orphan.
            # A prefetch still waiting for another build's lock stops at once.
            request.addfinalizer(lambda: (session_over.set(), prefetch.join(timeout=60)))
        try:
            cluster_cli("up")
        finally:
            up_returned.set()
        result = Cluster("local", paths.kubeconfig_path(), _kubectl_binary(), local_layout=node.current_layout())
    elif backend == "kind":
        from pytest_kind import KindCluster

        kind = KindCluster(KIND_CLUSTER_NAME)
        kind.create()
        result = Cluster("kind", Path(kind.kubeconfig_path), str(kind.kubectl_path), kind=kind)
    else:
        env = os.environ.get("KUBECONFIG")
        if not env:
            pytest.fail("--cluster=existing needs $KUBECONFIG pointing at the cluster to use")
        result = Cluster("existing", Path(env.split(os.pathsep)[0]), _kubectl_binary())
    if backend == "kind" or (backend == "existing" and request.config.getoption("--cluster-lb-standin")):
        from e2e.cluster import lb

        # On a user's cluster it serves only Services of its own class (a real controller may
        # own the rest); kind has none, so there it serves class-less Services too.
        lb_thread = threading.Thread(
            target=lb.run, args=(str(result.kubeconfig), Layout.lb_pool, stop),
            # Its own owner id: another session's stand-in on the same cluster keeps its addresses.
            kwargs={"claim_unclassed": backend == "kind", "owner": f"session-{uuid.uuid4().hex[:12]}"},
            name="lb-standin", daemon=True,
        )
        lb_thread.start()
    yield result
    stop.set()
    if lb_thread is not None:
        lb_thread.join(timeout=15)
    if result.kind is not None:
        result.kind.delete()


@pytest.fixture(name="cluster_cli", scope="session")
def cluster_cli_fixture():
    """`cluster_cli("down")`: run the cluster CLI in a child process (local backend)."""
    return cluster_cli


@pytest.fixture(scope="session")
def kubeconfig(cluster: Cluster) -> Path:
    return cluster.kubeconfig


@pytest.fixture(scope="session")
def kubectl(cluster: Cluster):
    kubectl = Kubectl(cluster.kubeconfig, binary=cluster.kubectl_binary)
    yield kubectl
    kubectl.close()  # its API reader's kept-alive connection


def _namespace_name(test_name: str) -> str:
    """A DNS-1123 label from the test's name plus a random suffix (max 63 characters)."""
    stem = re.sub(r"[^a-z0-9-]+", "-", test_name.lower()).strip("-")[:40].strip("-")
    return f"e2e-{stem}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def namespace(request: pytest.FixtureRequest, kubectl: Kubectl):
    name = _namespace_name(request.node.name)
    kubectl.create_namespace(name)
    yield name
    # Don't wait for pods to terminate: the next test needn't, and `down` sweeps the rest.
    kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


@pytest.fixture
def test_hosts(cluster: Cluster):
    if cluster.backend != "local":
        pytest.skip(f"test hosts (network namespaces routed through the node) need --cluster=local, not {cluster.backend}")
    from e2e.cluster import network

    created = []

    def make(name: str):
        # Unique per call: a crashed run's leftover namespace never blocks the next run.
        host = network.create_test_host(cluster.layout, f"{name}-{uuid.uuid4().hex[:6]}")
        created.append(host)
        return host

    yield make
    for host in created:
        network.delete_test_host(host)


@pytest.fixture
def probes(cluster: Cluster):
    """`Probes` (e2e/probes.py): counters of this test's own packets, removed after it."""
    if cluster.backend != "local":
        pytest.skip(f"the guards the probes count at are the local cluster's host, not --cluster={cluster.backend}'s")
    from e2e import probes as probes_mod

    with probes_mod.Probes() as made:
        yield made


def _push(tag: str, registry: str) -> str:
    """`docker tag` + `docker push` to `registry`; returns the pushed reference."""
    from e2e import images

    remote = f"{registry.rstrip('/')}/{tag}"
    pin = images.pinned(tag)  # this session's build: another checkout may have rebuilt the tag
    for argv in (["docker", "tag", pin.source if pin else tag, remote], ["docker", "push", remote]):
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            pytest.fail(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
    return remote


@pytest.fixture(scope="session")
def load_image(request: pytest.FixtureRequest, cluster: Cluster):
    imported: dict[str, str] = {}  # kind: tag -> Docker image id loaded in this session
    registry = request.config.getoption("--image-registry")

    def load(tag: str) -> str:
        if cluster.backend == "existing":
            if not registry:
                pytest.skip(f"--cluster=existing: cannot load {tag}; give --image-registry REGISTRY the cluster pulls from")
            return _push(tag, registry)
        from e2e import images
        from e2e.cluster import image_import

        # Imported only if the cluster lacks this very Docker image (a rebuild under the same
        # tag is imported again; an unchanged one, on the local backend also from an earlier
        # session, not). The project image is this session's own build (pinned): the tag is
        # shared by every checkout on the machine, and another may have rebuilt it since.
        pin = images.pinned(tag)
        try:
            if cluster.backend == "local":
                image_import.ensure_docker_image(tag, pin=pin)
            else:
                image_import.load_into_kind(cluster.kind, tag, imported, pin=pin)
        except RuntimeError as exc:
            pytest.fail(f"load_image: {exc}")
        return tag

    return load


@pytest.fixture(scope="session")
def busybox_image(request: pytest.FixtureRequest, cluster: Cluster) -> str:
    from e2e.cluster import testimages

    archive = testimages.busybox_archive()
    if cluster.backend == "existing":
        registry = request.config.getoption("--image-registry")
        if not registry:
            pytest.skip("--cluster=existing: give --image-registry REGISTRY to push the busybox test image to")
        subprocess.run(["docker", "load"], input=archive, check=True, capture_output=True, timeout=120)
        return _push(testimages.BUSYBOX_TAG, registry)
    if cluster.backend == "local":
        from e2e.cluster import image_import

        with image_import.importing():  # concurrent sessions: one imports, the others find it
            if not image_import.has_image(testimages.BUSYBOX_TAG):
                image_import.import_archive(archive)
    elif cluster.backend == "kind":
        subprocess.run(["docker", "load"], input=archive, check=True, capture_output=True, timeout=120)
        cluster.kind.load_docker_image(testimages.BUSYBOX_TAG)
    return testimages.BUSYBOX_TAG


@pytest.fixture(scope="session")
def wait_for():
    return _wait_for


@pytest.fixture
def wait_for_pods_ready(kubectl: Kubectl):
    def wait(namespace: str, selector: str, count: int = 1, timeout: float = 120) -> list[dict]:
        def ready_pods():
            pods = kubectl.api.list("pods", namespace, selector=selector)["items"]
            ready = [
                p for p in pods
                if p["status"].get("phase") == "Running"
                and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))
            ]
            return ready if len(ready) >= count else None

        return _wait_for(f"{count} ready pod(s) {selector} in {namespace}", ready_pods, timeout)

    return wait


@pytest.fixture
def fake_cluster(tmp_path, monkeypatch):
    """A state dir of the current generation with every process 'running' (pure health tests)."""
    from e2e.cluster import components, configs, health, paths

    monkeypatch.setenv("ZT_RELAY_E2E_STATE", str(tmp_path / "state"))
    state = configs.StatePaths(tmp_path / "state")
    state.root.mkdir()
    health.generation_file(state).write_text(health.HARNESS_GENERATION)
    paths.kubeconfig_path().write_text("")
    monkeypatch.setattr(health, "process_states", lambda state: {n: 1 for n in components.NAMES})
    # Nor does the machine's own kube-router count as another one beside "ours" (pid 1 above): a
    # real cluster's, while the pytest session that brought it up is its parent (the cluster part
    # beside this one in .ci/run), made health() "broken" here.
    monkeypatch.setattr(health.processes, "others_named", lambda program, own_pid, candidates=None: [])
    return state
