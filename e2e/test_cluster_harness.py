"""The harness's pure helpers, tested without a cluster (these run in every pytest run)."""

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from e2e.cluster import archives, build, configs, lb, network, node, processes
from e2e.cluster.kubectl import wait_for
from e2e.cluster.layout import Layout, check_disjoint

NEEDS_CLUSTER = False

LAYOUT = Layout(primary_interface="eth0")
STATE = configs.StatePaths(Path("/var/lib/zt-relay-e2e"))

KUBERNETES_GO_MOD = """\
module k8s.io/kubernetes

go 1.26.0

require (
	k8s.io/api v0.0.0
	github.com/google/go-cmp v0.7.0
)

replace (
	k8s.io/api => ./staging/src/k8s.io/api
	k8s.io/client-go => ./staging/src/k8s.io/client-go
	k8s.io/cri-api => ./staging/src/k8s.io/cri-api
)
"""


def test_staging_modules_are_read_from_the_replace_block():
    assert build.staging_modules(KUBERNETES_GO_MOD) == ["k8s.io/api", "k8s.io/client-go", "k8s.io/cri-api"]


def test_wrapper_go_mod_replaces_each_staging_module_with_its_release():
    tool = build.GoTool("kubernetes", {"k8s.io/kubernetes": "v1.37.2"}, {}, replaces={"k8s.io/api": "v0.37.2"})
    go_mod = build.render_go_mod(tool)
    assert "\tk8s.io/kubernetes v1.37.2\n" in go_mod
    assert "\tk8s.io/api => k8s.io/api v0.37.2\n" in go_mod


def test_wrapper_go_mod_can_replace_a_module_with_a_fork():
    tool = build.GoTool("x", {"example.com/x": "v1.0.0"}, {}, replaces={"example.com/dep": "example.com/fork v0.4.0"})
    assert "\texample.com/dep => example.com/fork v0.4.0\n" in build.render_go_mod(tool)


def test_version_ldflags_set_both_copies_of_the_version_variables():
    flags = build.version_ldflags("v1.37.2", "2026-01-01T00:00:00Z")
    for pkg in build.VERSION_PACKAGES:
        assert f"-X {pkg}.gitVersion=v1.37.2" in flags
        assert f"-X {pkg}.gitMajor=1" in flags
        assert f"-X {pkg}.gitMinor=37" in flags


def test_layout_rejects_a_range_overlapping_docker0_and_names_the_field():
    clashing = Layout(primary_interface="eth0", lb_pool="172.17.5.0/24")
    with pytest.raises(ValueError, match=r"layout\.lb_pool 172\.17\.5\.0/24 overlaps .*172\.17\.0\.0/16"):
        check_disjoint(clashing, ["192.0.2.0/24", "172.17.0.0/16"])


def test_the_node_ip_is_not_on_the_machines_own_networks():
    assert Layout(primary_interface="eth0").node_ip == "10.252.0.1"
    with pytest.raises(ValueError, match=r"layout\.node_ip 10\.0\.0\.1/32 overlaps"):
        check_disjoint(Layout(primary_interface="eth0", node_ip="10.0.0.1"), ["10.0.0.0/8"])


def test_default_layout_is_disjoint_from_eth0_and_docker0():
    check_disjoint(LAYOUT, ["192.0.2.0/24", "172.17.0.0/16"])


def test_pods_services_and_lb_pool_are_routed_to_the_sink():
    assert set(LAYOUT.sink_routes) == {"10.244.0.0/16", "10.96.0.0/16", "10.250.0.0/24"}


def test_forward_rules_drop_towards_the_primary_interface_before_any_accept():
    rules = network.forward_rules(LAYOUT)
    drops = [i for i, r in enumerate(rules) if r[-1] == "DROP"]
    accepts = [i for i, r in enumerate(rules) if r[-1] == "ACCEPT"]
    assert max(drops) < min(accepts)
    assert ["-s", "10.244.0.0/16", "-o", "eth0", "-j", "DROP"] in rules
    assert not any("eth0" in r and r[-1] == "ACCEPT" for r in rules)


def _service(name, *, type_="LoadBalancer", ips=(), created="2026-01-01T00:00:00Z", **spec):
    return {
        "metadata": {"namespace": "ns", "name": name, "creationTimestamp": created},
        "spec": {"type": type_, **spec},
        "status": {"loadBalancer": {"ingress": [{"ip": ip} for ip in ips]}},
    }


POOL = ["10.250.0.1", "10.250.0.2", "10.250.0.3"]


def test_lb_standin_assigns_the_lowest_free_address():
    changes = lb.plan([_service("a", ips=["10.250.0.1"]), _service("b")], POOL)
    assert changes == {("ns", "b"): "10.250.0.2"}


def test_lb_standin_leaves_settled_services_alone():
    assert lb.plan([_service("a", ips=["10.250.0.2"])], POOL) == {}


def test_lb_standin_releases_the_address_of_a_service_no_longer_a_load_balancer():
    assert lb.plan([_service("a", type_="ClusterIP", ips=["10.250.0.1"])], POOL) == {("ns", "a"): None}


def test_lb_standin_gives_a_contested_address_to_the_older_service():
    older = _service("old", ips=["10.250.0.1"], created="2026-01-01T00:00:00Z")
    newer = _service("new", ips=["10.250.0.1"], created="2026-01-02T00:00:00Z")
    assert lb.plan([newer, older], POOL) == {("ns", "new"): "10.250.0.2"}


def test_lb_standin_honours_a_requested_address_in_the_pool():
    assert lb.plan([_service("a", loadBalancerIP="10.250.0.3")], POOL) == {("ns", "a"): "10.250.0.3"}


def test_lb_standin_skips_services_of_another_load_balancer_class():
    assert lb.plan([_service("a", loadBalancerClass="example.com/other")], POOL) == {}


def test_lb_standin_assigns_nothing_when_the_pool_is_exhausted():
    taken = [_service(f"s{i}", ips=[ip]) for i, ip in enumerate(POOL)]
    assert lb.plan([*taken, _service("late", created="2027-01-01T00:00:00Z")], POOL) == {}


IPTABLES_S = """\
-P INPUT ACCEPT
-N DOCKER
-N KUBE-FIREWALL
-N KUBE-KUBELET-CANARY
-A INPUT -j KUBE-FIREWALL
-A OUTPUT -j KUBE-FIREWALL
-A FORWARD -o docker0 -j DOCKER
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet connections" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
""".splitlines()


def test_kube_chain_cleanup_removes_jumps_then_flushes_and_deletes_only_kube_chains():
    cmds = node.kube_chain_cleanup_commands(IPTABLES_S)
    assert cmds == [
        ["-D", "INPUT", "-j", "KUBE-FIREWALL"],
        ["-D", "OUTPUT", "-j", "KUBE-FIREWALL"],
        ["-F", "KUBE-FIREWALL"],
        ["-F", "KUBE-KUBELET-CANARY"],
        ["-X", "KUBE-FIREWALL"],
        ["-X", "KUBE-KUBELET-CANARY"],
    ]


def _members(archive: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def test_image_archive_is_docker_save_format_with_matching_layer_digest():
    spec = archives.ImageSpec(tag="zt-relay-e2e/x:1", files={"bin/x": (b"hello", 0o755)}, symlinks={"bin/y": "x"}, entrypoint=["/bin/x"])
    members = _members(archives.image_archive(spec))
    (manifest,) = json.loads(members["manifest.json"])
    assert manifest["RepoTags"] == ["zt-relay-e2e/x:1"]
    config = json.loads(members[manifest["Config"]])
    layer = members[manifest["Layers"][0]]
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(layer).hexdigest()]
    assert config["config"]["Entrypoint"] == ["/bin/x"]
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        assert tar.getmember("bin/y").linkname == "x"
        assert tar.extractfile("bin/x").read() == b"hello"


def test_image_archive_is_reproducible():
    spec = archives.ImageSpec(tag="t/x:1", files={"x": (b"1", 0o644)})
    assert archives.image_archive(spec) == archives.image_archive(spec)


def test_kubelet_config_survives_this_machines_traps():
    config = json.loads(configs.kubelet_config(LAYOUT, STATE))
    assert config["failCgroupV1"] is False  # cgroup v1 here
    assert config["address"] == LAYOUT.node_ip  # reached at the node IP, not loopback
    assert config["imageGCHighThresholdPercent"] == 100  # imported images can't be pulled back
    assert config["authorization"]["mode"] == "Webhook"


def test_containerd_restricts_oom_score_adj_and_uses_the_local_pause_image():
    toml = configs.containerd_config(LAYOUT, STATE)
    assert "restrict_oom_score_adj = true" in toml
    assert f'sandbox_image = "{LAYOUT.pause_image}"' in toml
    assert f'address = "{STATE.containerd_socket}"' in toml


def test_apiserver_runs_node_and_rbac_authorization_on_the_node_ip():
    argv = configs.apiserver_command(LAYOUT, STATE, Path("/bin"))
    assert "--authorization-mode=Node,RBAC" in argv
    assert f"--bind-address={LAYOUT.node_ip}" in argv
    assert "--kubelet-preferred-address-types=InternalIP" in argv


def test_cni_keeps_ipam_leases_under_the_state_dir():
    conf = json.loads(configs.cni_conflist(LAYOUT, STATE))
    bridge = conf["plugins"][0]
    assert bridge["ipam"]["dataDir"].startswith(str(STATE.root))
    assert bridge["ipam"]["ranges"] == [[{"subnet": "10.244.0.0/24"}]]


def test_coredns_serves_cluster_names_and_forwards_nothing():
    corefile = configs.corefile(LAYOUT, STATE)
    assert "kubernetes cluster.local" in corefile
    assert "forward" not in corefile
    assert f"bind {LAYOUT.node_ip}" in corefile
    assert json.loads(configs.kubelet_config(LAYOUT, STATE))["clusterDNS"] == ["10.96.0.10"]


def test_a_started_process_is_tracked_by_its_pid_file_and_stopped(tmp_path):
    pid = processes.start("sleeper", ["sleep", "30"], tmp_path / "run", tmp_path / "logs")
    # posix_spawn returns while exec may still be setting up the new image: until then
    # /proc/PID/cmdline is empty, so give it a moment (seen failing under load).
    wait_for("the pid file to name the started process",
             lambda: processes.running_pid("sleeper", tmp_path / "run") == pid, timeout=5, interval=0.05)
    processes.stop("sleeper", tmp_path / "run", timeout=5)
    assert processes.running_pid("sleeper", tmp_path / "run") is None
    assert not (tmp_path / "run" / "sleeper.pid").exists()


def test_a_stale_pid_file_never_points_at_an_unrelated_process(tmp_path):
    (tmp_path / "other.pid").write_text(f"{os.getpid()}\n/nonexistent/etcd\n")
    assert processes.running_pid("other", tmp_path) is None
    processes.stop("other", tmp_path)  # reaching the next line proves this process wasn't killed
    assert not (tmp_path / "other.pid").exists()


def test_wait_for_names_what_it_waited_for_and_what_it_last_saw():
    def probe():
        raise RuntimeError("still starting")

    with pytest.raises(TimeoutError, match=r"waiting for the widget; last: RuntimeError\('still starting'\)"):
        wait_for("the widget", probe, timeout=0.2, interval=0.05)
