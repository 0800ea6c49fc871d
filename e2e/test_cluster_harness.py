"""The harness's pure helpers, tested without a cluster (these run in every pytest run)."""

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from e2e.cluster import archives, build, cgroups, configs, firewall, lb, locks, processes, sysctls
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


@pytest.mark.parametrize("wide", [
    ["169.254.0.0/16"],  # zeroconf route of an ordinary Ubuntu desktop (contains sink_link_cidr)
    ["0.0.0.0/1", "128.0.0.0/1"],  # a full-tunnel OpenVPN (redirect-gateway def1)
    ["10.0.0.0/8"],  # a split-tunnel corporate VPN
])
def test_a_route_that_only_contains_our_ranges_is_no_conflict(wide):
    # F21 (review-harness2): `up` refused on such machines; the sink's routes are more specific.
    check_disjoint(LAYOUT, ["192.0.2.0/24"], wide)


@pytest.mark.parametrize("route, field", [
    ("10.96.0.0/16", "service_cidr"),  # F6: a VPN to a dev cluster's Services
    ("10.244.3.0/24", "cluster_cidr"),  # another cluster's pod subnet (flannel)
    ("10.252.0.1/32", "node_ip"),
])
def test_a_route_inside_one_of_our_ranges_is_refused_naming_the_field(route, field):
    with pytest.raises(ValueError, match=rf"layout\.{field} .* holds the machine's route {route}"):
        check_disjoint(LAYOUT, ["192.0.2.0/24"], [route])


def test_an_interface_network_that_contains_a_range_of_ours_is_refused():
    # Addresses on an interface are neighbours there (a /8 LAN): the sink would cut them off.
    with pytest.raises(ValueError, match=r"layout\.node_ip 10\.252\.0\.1/32 overlaps the machine's network 10\.0\.0\.0/8"):
        check_disjoint(LAYOUT, ["10.0.0.0/8"])


def test_default_layout_is_disjoint_from_eth0_and_docker0():
    check_disjoint(LAYOUT, ["192.0.2.0/24", "172.17.0.0/16"])


def test_pods_services_and_lb_pool_are_routed_to_the_sink():
    assert set(LAYOUT.sink_routes) == {"10.244.0.0/16", "10.96.0.0/16", "10.250.0.0/24"}


def _chain(binary, table, name):
    (chain,) = [c for c in firewall.chains(LAYOUT, cgroups.HOST) if (c.binary, c.table, c.name) == (binary, table, name)]
    return chain


@pytest.mark.parametrize("binary", ["iptables", "ip6tables"])
def test_forwarded_traffic_from_our_interfaces_is_dropped_on_every_other_interface(binary):
    chain = _chain(binary, "security", "ZTR-E2E-FORWARD")
    assert chain.hook == "FORWARD" and chain.matches == ((),)
    drops = [r for r in chain.rules if r[-1] == "DROP" and r[:1] == ("-i",)]
    assert [r[1] for r in drops] == list(LAYOUT.cluster_links)
    first_drop = chain.rules.index(drops[0])
    # Before the drops only what leaves by one of our links gets through (RETURN, ACCEPT, sink).
    for rule in chain.rules[:first_drop]:
        assert "-o" in rule and rule[rule.index("-o") + 1] in LAYOUT.own_links, rule
    # No rule names the default route's interface: the drop holds for every interface.
    assert not any("eth0" in r for r in chain.rules)


def test_no_rule_names_a_link_by_a_wildcard_a_zerotier_tap_could_match():
    """F16: ZeroTier's taps are "zt" + 8 base32 characters; `ztr+` matched one network in 32."""
    for chain in firewall.chains(LAYOUT, cgroups.HOST):
        for rule in (*chain.rules, *chain.jumps):
            for flag in ("-i", "-o"):
                if flag in rule:
                    link = rule[rule.index(flag) + 1]
                    assert link == "lo" or LAYOUT.is_own_link(link), (chain.name, rule)
                    assert not link.endswith("+"), (chain.name, rule)


def test_our_link_names_can_never_be_a_zerotier_tap():
    taps = ["ztrtlztz5u", "ztmjfmfyq5", "ztrh123456"]
    assert not any(LAYOUT.is_own_link(t) for t in taps)
    assert all(LAYOUT.is_own_link(n) for n in (*LAYOUT.own_links, "ztr-th2", "ztr-th254"))
    assert not LAYOUT.is_own_link("ztr-th2x") and not LAYOUT.is_own_link("ztr-cni00")


def test_strays_reach_the_sink_as_untracked_copies_and_are_never_forwarded_with_conntrack():
    # A forwarded stray's conntrack entry (no NAT) would pin its connection to the sink even
    # after kube-proxy programs the address (the chart test's tunnel timed out so).
    guard = _chain("iptables", "security", "ZTR-E2E-FORWARD").rules
    # TEE then DROP, first: nothing after them sees a packet to the sink (its RETURN never matches).
    assert [r[r.index("-j") + 1:] for r in guard[:2]] == [("TEE", "--gateway", LAYOUT.sink_address), ("DROP",)]
    assert all(r[:2] == ("-o", LAYOUT.sink_host_veth) for r in guard[:2])
    rules = _chain("iptables", "filter", "ZTR-E2E-FORWARD").rules
    # In filter the packet to the sink is ACCEPTed (to the guard) before the ACCEPTs between
    # pods and test hosts, and copied nowhere (the guard copies it once).
    assert rules[0][:2] == ("-o", LAYOUT.sink_host_veth) and rules[0][-1] == "ACCEPT"
    assert not any("TEE" in r for r in rules)
    # Each ACCEPT between pods and test hosts names the link of ours its destination is on.
    for rule in rules[1:]:
        if rule[-1] == "ACCEPT" and "-s" in rule and "-o" in rule:
            assert rule[rule.index("-o") + 1] in LAYOUT.cluster_links, rule


@pytest.mark.parametrize("binary", ["iptables", "ip6tables"])
def test_the_harness_processes_may_only_send_to_loopback_and_our_interfaces(binary):
    chain = _chain(binary, "security", "ZTR-E2E-OUTPUT")
    assert chain.hook == "OUTPUT" and chain.matches == (("-m", "cgroup", "--path", cgroups.HOST),)
    links = (*LAYOUT.cluster_links, LAYOUT.sink_host_veth)
    assert chain.rules[-5:-1] == (("-o", "lo", "-j", "RETURN"), *(("-o", link, "-j", "RETURN") for link in links))
    # F26: loopback, but not the machine's resolver there (systemd-resolved, dnsmasq, unbound).
    assert [r for r in chain.rules if r[-1] == "DROP"][:-1] == [
        ("-o", "lo", "-p", proto, "--dport", "53", "-m", "comment", "--comment", "zt-relay-e2e: no resolver of the machine", "-j", "DROP")
        for proto in ("udp", "tcp")
    ]
    assert chain.rules.index(("-o", "lo", "-j", "RETURN")) > max(i for i, r in enumerate(chain.rules) if "53" in r)
    assert all(r[-1] == "RETURN" for r in chain.rules[:-1] if "53" not in r)
    assert chain.rules[-1][-1] == "DROP" and "-o" not in chain.rules[-1] and "-d" not in chain.rules[-1]


@pytest.mark.parametrize("binary", ["iptables", "ip6tables"])
def test_pod_processes_in_the_machines_netns_may_only_send_to_loopback_and_our_interfaces(binary):
    """F5: a hostNetwork pod sends from the machine's netns (only OUTPUT sees it); runc puts it
    under the kubelet's cgroupRoot, not the harness's host cgroup."""
    assert cgroups.kubelet_cgroup_root() == "/" + cgroups.PODS
    pods = _chain(binary, "security", "ZTR-E2E-PODS-OUT")
    assert pods.hook == "OUTPUT" and pods.matches == (("-m", "cgroup", "--path", cgroups.PODS),)
    host = _chain(binary, "security", "ZTR-E2E-OUTPUT")
    assert pods.rules == tuple(r for r in host.rules if "127.0.0.1" not in r)


@pytest.mark.parametrize("binary", ["iptables", "ip6tables"])
def test_the_cluster_reaches_only_its_own_services_on_the_machine(binary):
    """F3: pods and test hosts reach the machine itself (INPUT) only where the cluster listens;
    a resolver or proxy of the machine on 0.0.0.0 would forward their traffic off it."""
    chain = _chain(binary, "security", "ZTR-E2E-INPUT")
    assert chain.hook == "INPUT" and chain.matches == tuple(("-i", link) for link in LAYOUT.cluster_links)
    assert chain.rules[-1][-1] == "DROP" and "-d" not in chain.rules[-1] and "-p" not in chain.rules[-1]
    accepted = [r for r in chain.rules if r[-1] == "RETURN"]
    for rule in accepted:  # every exception names the node IP, a NodePort, a reply or ICMP
        text = " ".join(rule)
        assert (f"-d {LAYOUT.node_ip}" in text or "ESTABLISHED" in text
                or text.startswith(("-p icmp", "-p ipv6-icmp"))), text
    # F25: no NodePort range, not even on the node IP (a listener on 0.0.0.0 answers there too):
    # kube-proxy DNATs NodePorts before INPUT.
    assert not any("30000:32767" in " ".join(r) for r in chain.rules)
    if binary == "ip6tables":
        assert all("--dport" not in " ".join(r) and "--dports" not in " ".join(r) for r in accepted)


def test_every_chain_of_ours_carries_the_prefix_and_ipv6_is_covered():
    all_chains = firewall.chains(LAYOUT, cgroups.HOST)
    assert all(c.name.startswith("ZTR-E2E-") for c in all_chains)
    assert {(c.binary, c.hook) for c in all_chains} >= {
        ("iptables", "FORWARD"), ("ip6tables", "FORWARD"), ("iptables", "OUTPUT"), ("ip6tables", "OUTPUT"), ("ip6tables", "PREROUTING"),
    }


def _service(name, *, type_="LoadBalancer", ips=(), created="2026-01-01T00:00:00Z", mine=None, **spec):
    """A Service dict; `mine`: the address the stand-in recorded as allocated by itself."""
    annotations = {lb.ANNOTATION: mine, lb.OWNER_ANNOTATION: lb.LOCAL_OWNER} if mine else {}
    return {
        "metadata": {"namespace": "ns", "name": name, "creationTimestamp": created, "annotations": annotations},
        "spec": {"type": type_, **spec},
        "status": {"loadBalancer": {"ingress": [{"ip": ip} for ip in ips]}},
    }


POOL = ["10.250.0.1", "10.250.0.2", "10.250.0.3"]
OURS = {"loadBalancerClass": lb.LB_CLASS}


def test_lb_standin_assigns_the_lowest_free_address():
    changes = lb.plan([_service("a", ips=["10.250.0.1"], mine="10.250.0.1"), _service("b")], POOL)
    assert changes == {("ns", "b"): "10.250.0.2"}


def test_lb_standin_leaves_settled_services_alone():
    assert lb.plan([_service("a", ips=["10.250.0.2"], mine="10.250.0.2")], POOL) == {}


def test_lb_standin_releases_the_address_of_a_service_no_longer_a_load_balancer():
    assert lb.plan([_service("a", type_="ClusterIP", ips=["10.250.0.1"], mine="10.250.0.1")], POOL) == {("ns", "a"): None}


def test_lb_standin_gives_a_contested_address_to_the_older_service():
    older = _service("old", ips=["10.250.0.1"], created="2026-01-01T00:00:00Z", mine="10.250.0.1")
    newer = _service("new", ips=["10.250.0.1"], created="2026-01-02T00:00:00Z", mine="10.250.0.1")
    assert lb.plan([newer, older], POOL) == {("ns", "new"): "10.250.0.2"}


def test_lb_standin_honours_a_requested_address_in_the_pool():
    assert lb.plan([_service("a", loadBalancerIP="10.250.0.3")], POOL) == {("ns", "a"): "10.250.0.3"}


def test_lb_standin_skips_services_of_another_load_balancer_class():
    assert lb.plan([_service("a", loadBalancerClass="example.com/other")], POOL) == {}


def test_lb_standin_assigns_nothing_when_the_pool_is_exhausted():
    taken = [_service(f"s{i}", ips=[ip], mine=ip) for i, ip in enumerate(POOL)]
    assert lb.plan([*taken, _service("late", created="2027-01-01T00:00:00Z")], POOL) == {}


def test_lb_standin_never_overwrites_an_ingress_it_did_not_assign():
    cloud = _service("cloud", ips=["198.51.100.7"])
    in_pool_by_someone_else = _service("other", ips=["10.250.0.1"])
    assert lb.plan([cloud, in_pool_by_someone_else], POOL) == {}
    # ... nor releases it when the Service stops being a LoadBalancer.
    assert lb.plan([_service("cloud", type_="ClusterIP", ips=["198.51.100.7"])], POOL) == {}


def test_lb_standin_on_a_users_cluster_serves_only_its_own_class():
    plain, classed = _service("plain"), _service("classed", **OURS)
    assert lb.plan([plain, classed], POOL, claim_unclassed=False) == {("ns", "classed"): "10.250.0.1"}


def test_lb_standin_gives_every_address_it_assigned_back_when_it_stops():
    services = [
        _service("a", ips=["10.250.0.1"], mine="10.250.0.1", **OURS),
        _service("cloud", ips=["198.51.100.7"]),
        _service("b", ips=["10.250.0.2"], mine="10.250.0.2"),
    ]
    assert lb.release_all(services) == {("ns", "a"): None, ("ns", "b"): None}


IPTABLES_S = """\
-P INPUT ACCEPT
-N DOCKER
-N KUBE-DECOY
-N KUBE-FIREWALL
-N KUBE-KUBELET-CANARY
-N ZTR-E2E-OUTPUT
-A INPUT -j KUBE-FIREWALL
-A INPUT -j KUBE-DECOY
-A OUTPUT -m cgroup --path zt-relay-e2e-host -j ZTR-E2E-OUTPUT
-A OUTPUT -j KUBE-FIREWALL
-A FORWARD -o docker0 -j DOCKER
-A KUBE-DECOY -j ACCEPT
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet connections" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
-A ZTR-E2E-OUTPUT -o lo -j RETURN
""".splitlines()


def test_cleanup_removes_only_our_chains_and_their_jumps():
    assert firewall.cleanup_commands(IPTABLES_S, firewall.ours) == [
        ["-D", "OUTPUT", "-m", "cgroup", "--path", "zt-relay-e2e-host", "-j", "ZTR-E2E-OUTPUT"],
        ["-F", "ZTR-E2E-OUTPUT"],
        ["-X", "ZTR-E2E-OUTPUT"],
    ]


def test_kube_chain_cleanup_takes_the_kubelets_exact_chains_and_never_a_lookalike():
    cmds = firewall.cleanup_commands(IPTABLES_S, firewall.kube_chain)
    assert cmds == [
        ["-D", "INPUT", "-j", "KUBE-FIREWALL"],
        ["-D", "OUTPUT", "-j", "KUBE-FIREWALL"],
        ["-F", "KUBE-FIREWALL"],
        ["-F", "KUBE-KUBELET-CANARY"],
        ["-X", "KUBE-FIREWALL"],
        ["-X", "KUBE-KUBELET-CANARY"],
    ]
    assert not any("KUBE-DECOY" in c for cmd in cmds for c in cmd)


KUBE_ROUTER_S = """\
-P INPUT ACCEPT
-N KUBE-ROUTER-INPUT
-N KUBE-ROUTER-FORWARD
-N KUBE-POD-FW-ABCDEFGHIJKLMNOP
-N KUBE-NWPLCY-DEFAULT
-N KUBE-ROUTERS-DECOY
-A INPUT -m comment --comment "kube-router netpol - 4IA2OSFRMVNDXBVV" -j KUBE-ROUTER-INPUT
-A FORWARD -m comment --comment "kube-router netpol - TEMCG2JMHZYE7H7T" -j KUBE-ROUTER-FORWARD
-A FORWARD -j KUBE-ROUTERS-DECOY
-A KUBE-ROUTER-FORWARD -d 10.244.0.5/32 -j KUBE-POD-FW-ABCDEFGHIJKLMNOP
""".splitlines()


def test_kube_routers_chains_are_cleaned_by_their_names_and_a_lookalike_is_not():
    cmds = firewall.cleanup_commands(KUBE_ROUTER_S, firewall.kube_chain)
    assert ["-D", "INPUT", "-m", "comment", "--comment", "kube-router netpol - 4IA2OSFRMVNDXBVV", "-j", "KUBE-ROUTER-INPUT"] in cmds
    assert {c[1] for c in cmds if c[0] == "-X"} == {
        "KUBE-ROUTER-INPUT", "KUBE-ROUTER-FORWARD", "KUBE-POD-FW-ABCDEFGHIJKLMNOP", "KUBE-NWPLCY-DEFAULT",
    }
    assert not any("KUBE-ROUTERS-DECOY" in c for cmd in cmds for c in cmd)


def test_kube_routers_ipsets_are_recognised_by_their_exact_pattern_only():
    from e2e.cluster import ipsets

    assert ipsets.kube_router_set("KUBE-SRC-FVYRMQVXE2YEIALC")
    assert ipsets.kube_router_set("KUBE-DST-FVYRMQVXE2YEIALC")
    assert ipsets.kube_router_set("TMP-FVYRMQVXE2YEIALC")
    for other in ("KUBE-SRC-decoy", "KUBE-DST-FVYRMQVXE2YEIALCX", "TMP-mine", "KUBE-CLUSTER-IP", "inet6:KUBE-SRC-FVYRMQVXE2YEIALC"):
        assert not ipsets.kube_router_set(other), other


def test_every_drop_is_in_the_security_table_and_filter_passes_it_there():
    """kube-router's ACCEPTs in filter end that table before our chains, and it rewrites the
    filter table on every sync (counters back to 0): every drop and count is in the security
    table's guard; in filter each becomes an ACCEPT, so a later filter rule cannot drop it
    uncounted; the guard has no ACCEPT."""
    chains = firewall.chains(LAYOUT, "zt-relay-e2e-host")
    filters = {(c.binary, c.name): c for c in chains if c.table == "filter"}
    guards = {(c.binary, c.name): c for c in chains if c.table == "security"}
    assert set(guards) == set(filters)
    for key, guard in guards.items():
        passing = filters[key]
        assert (guard.hook, guard.matches) == (passing.hook, passing.matches)
        assert not any(r[-1] == "DROP" or "TEE" in r for r in passing.rules), key
        assert not any(r[-1] == "ACCEPT" for r in guard.rules), key
        assert [r for r in guard.rules if r[-1] == "DROP"], key
        # The guard's rules in order, each DROP as filter's ACCEPT, TEE left out: filter's rules
        # less its own ACCEPTs (between our links).
        expected = [_as_accept(r) if r[-1] == "DROP" else r for r in guard.rules if "TEE" not in r]
        mine = [r for r in passing.rules if r[-1] != "ACCEPT" or GUARD_NOTE in r]
        assert mine == expected, key


GUARD_NOTE = "zt-relay-e2e: dropped and counted in the security table"


def _as_accept(drop):
    body = drop[:-2]
    if "--comment" in body:
        i = body.index("--comment")
        body = body[:i - 2] + body[i + 2:]
    return (*body, "-m", "comment", "--comment", GUARD_NOTE, "-j", "ACCEPT")


def test_the_guards_are_installed_before_the_filter_chains_that_pass_to_them():
    tables = [(g[0].binary, g[0].table) for g in firewall._groups(LAYOUT, cgroups.HOST, cgroups.PODS)]
    for binary in ("iptables", "ip6tables"):
        assert tables.index((binary, "security")) < tables.index((binary, "filter"))


def test_kube_router_runs_the_network_policy_controller_only_for_our_node():
    argv = configs.kube_router_command(LAYOUT, STATE, Path("/bin"))
    assert {"--run-firewall=true", "--run-router=false", "--run-service-proxy=false", "--enable-ipv6=false"} <= set(argv)
    # Its health server would bind every address (no option for one): off.
    assert {"--health-port=0", "--metrics-port=0"} <= set(argv)
    assert f"--hostname-override={LAYOUT.node_name}" in argv
    assert f"--service-cluster-ip-range={LAYOUT.service_cidr}" in argv


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


def _duration(flag_value: str) -> float:
    """A Go duration as this harness writes them (whole seconds or minutes), in seconds."""
    number, unit = flag_value[:-1], flag_value[-1]
    return float(number) * {"s": 1, "m": 60}[unit]


def test_metrics_server_flags_pass_its_own_start_up_checks():
    """metrics-server v0.8.0 (cmd/metrics-server/app/options/options.go) exits at start unless
    --metric-resolution is at least 10 s and 9/10 of it covers --kubelet-request-timeout
    (default 10 s); `up` sees that only as a readiness timeout. Seen: 10 s with the default
    timeout."""
    argv = configs.metrics_server_command(LAYOUT, STATE, Path("/bin"))
    flags = dict(arg.removeprefix("--").split("=", 1) for arg in argv[1:] if "=" in arg)
    resolution = _duration(flags["metric-resolution"])
    timeout = _duration(flags.get("kubelet-request-timeout", "10s"))
    assert resolution >= 10
    assert resolution * 9 / 10 >= timeout


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


def test_a_started_process_keeps_no_descriptor_it_inherited_beyond_its_stdio(tmp_path):
    """`flock /tmp/zt-e2e.lock python -m e2e.cluster up` hands the lock's descriptor (3, inheritable)
    to `up`: a daemon that kept it held the lock until `down` (every other `flock` waited)."""
    lock = tmp_path / "held.lock"
    fd = os.open(lock, os.O_RDONLY | os.O_CREAT)
    os.set_inheritable(fd, True)
    try:
        pid = processes.start("sleeper", ["sleep", "30"], tmp_path / "run", tmp_path / "logs")
        wait_for("the sleeper exec'd", lambda: processes.running_pid("sleeper", tmp_path / "run") == pid, timeout=5, interval=0.05)
        held = {os.readlink(f"/proc/{pid}/fd/{n}") for n in os.listdir(f"/proc/{pid}/fd") if int(n) > 2}
        assert str(lock) not in held, held
        assert [os.readlink(f"/proc/{pid}/fd/{n}") for n in (1, 2)] == [str(tmp_path / "logs" / "sleeper.log")] * 2
    finally:
        processes.stop("sleeper", tmp_path / "run", timeout=5)
        os.close(fd)


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


def test_pods_live_under_a_cgroup_root_of_our_own_not_the_machines_kubepods():
    config = json.loads(configs.kubelet_config(LAYOUT, STATE))
    assert config["cgroupRoot"] == "/zt-relay-e2e-pods"


def test_pod_network_namespaces_live_under_our_state_dir():
    toml = configs.containerd_config(LAYOUT, STATE)
    assert "netns_mounts_under_state_dir = true" in toml
    assert f'state = "{STATE.containerd / "state"}"' in toml


def _servers(body: str) -> tuple[list[str], list[str]]:
    servers = [line.split("=", 1)[1].strip().strip('"') for line in body.splitlines() if line.startswith("server")]
    return servers, [line for line in body.splitlines() if line.startswith("[host.")]


def test_every_registry_is_a_dead_local_mirror_but_our_loopback_registry():
    toml = configs.containerd_config(LAYOUT, STATE)
    assert f'config_path = "{STATE.registry_hosts}"' in toml
    hosts = configs.registry_hosts(LAYOUT)
    assert {"_default/hosts.toml", "docker.io/hosts.toml", "registry.k8s.io/hosts.toml", "ghcr.io/hosts.toml"} <= set(hosts)
    ours = hosts.pop(f"127.0.0.1:{LAYOUT.registry_port}/hosts.toml")
    assert _servers(ours) == ([f"http://127.0.0.1:{LAYOUT.registry_port}"], [f'[host."http://127.0.0.1:{LAYOUT.registry_port}"]'])
    for body in hosts.values():
        assert _servers(body) == (["http://127.0.0.1:1"], ['[host."http://127.0.0.1:1"]'])


def test_the_registry_listens_on_loopback_only_and_stores_under_the_state_dir():
    config = json.loads(configs.registry_config(LAYOUT, STATE))
    assert config["http"] == {"addr": f"127.0.0.1:{LAYOUT.registry_port}"}
    assert config["storage"]["filesystem"] == {"rootdirectory": str(STATE.registry_data)}
    assert STATE.root in STATE.registry_data.parents
    assert set(config) == {"version", "log", "storage", "http"}, "no proxy (pull-through), notifications or debug listener"
    assert configs.registry_environment({})["OTEL_TRACES_EXPORTER"] == "none"


def test_default_dns_policy_pods_get_the_clusters_resolver_not_the_machines():
    config = json.loads(configs.kubelet_config(LAYOUT, STATE))
    assert config["resolvConf"] == str(STATE.resolv_conf)
    assert configs.resolv_conf(LAYOUT).splitlines()[0] == f"nameserver {LAYOUT.node_ip}"


def test_kube_proxy_leaves_the_machines_conntrack_settings_alone():
    conntrack = json.loads(configs.kube_proxy_config(LAYOUT, STATE))["conntrack"]
    assert conntrack == {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"}


def test_apiserver_enforces_owner_reference_permissions():
    argv = configs.apiserver_command(LAYOUT, STATE, Path("/bin"))
    (flag,) = [a for a in argv if a.startswith("--enable-admission-plugins=")]
    assert flag.split("=", 1)[1].split(",") == ["NodeRestriction", "OwnerReferencesPermissionEnforcement"]


def _fake_cgroupfs(root: Path) -> Path:
    """A hybrid layout: v1 cpuset and memory, v2 under unified."""
    for h in ("cpuset", "memory", "unified"):
        (root / h).mkdir(parents=True)
        (root / h / "cgroup.procs").write_text("")
    (root / "cpuset" / "cpuset.cpus").write_text("0-1\n")
    (root / "cpuset" / "cpuset.mems").write_text("0\n")
    return root


def test_cgroups_are_prepared_in_every_hierarchy_and_only_ours_are_listed_and_removed(tmp_path):
    fs = _fake_cgroupfs(tmp_path / "cg")
    decoy = fs / "memory" / "kubepods" / "decoy"
    decoy.mkdir(parents=True)
    (decoy / "cgroup.procs").write_text("4242\n")
    # mkdir in a real cgroupfs creates the knob files; emulate the empty cpuset ones.
    (fs / "cpuset" / cgroups.PODS).mkdir()
    (fs / "cpuset" / cgroups.PODS / "cpuset.cpus").write_text("")
    (fs / "cpuset" / cgroups.PODS / "cpuset.mems").write_text("")
    cgroups.prepare(fs)
    assert (fs / "unified" / cgroups.HOST).is_dir()
    assert all((fs / h / cgroups.PODS).is_dir() for h in ("cpuset", "memory", "unified"))
    assert (fs / "cpuset" / cgroups.PODS / "cpuset.cpus").read_text() == "0-1\n"
    pod = fs / "memory" / cgroups.PODS / "kubepods" / "pod1"
    pod.mkdir(parents=True)
    (pod / "cgroup.procs").write_text("17\n18\n")
    assert cgroups.pids(fs) == {17, 18}
    for f in fs.glob(f"*/{cgroups.PODS}/**/*"):
        if f.is_file():
            f.unlink()
    for f in fs.glob(f"*/{cgroups.PODS}/*"):
        if f.is_file():
            f.unlink()
    assert cgroups.remove(fs) == []
    assert cgroups.ours(fs) == []
    assert (decoy / "cgroup.procs").read_text() == "4242\n"


def test_a_process_is_started_inside_the_host_cgroup_before_it_execs(tmp_path):
    fs = _fake_cgroupfs(tmp_path / "cg")
    (fs / "unified" / cgroups.HOST).mkdir()
    argv = cgroups.enter_host_argv(["sh", "-c", "echo started"], fs)
    import subprocess

    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    assert out == "started\n"
    written = (fs / "unified" / cgroups.HOST / "cgroup.procs").read_text().split()
    assert len(written) == 1 and written[0].isdigit()


def test_sysctls_changed_by_the_cluster_are_put_back_as_recorded(tmp_path):
    root = tmp_path / "sys"
    (root / "net" / "ipv4").mkdir(parents=True)
    (root / "net" / "ipv4" / "ip_forward").write_text("0\n")
    record = tmp_path / "record.json"
    sysctls.save(record, root)
    sysctls.write("net.ipv4.ip_forward", "1", root)
    sysctls.save(record, root)  # a second `up` must not record the cluster's own value
    assert sysctls.changed(record, root) == {"net.ipv4.ip_forward": ("0", "1")}
    assert sysctls.restore(record, root) == []
    assert sysctls.read("net.ipv4.ip_forward", root) == "0"


def test_teardown_needs_every_other_run_to_have_let_go_of_the_cluster(tmp_path, monkeypatch):
    monkeypatch.setattr(locks, "USERS", tmp_path / "users")
    monkeypatch.delenv(locks.USERS_FD_ENV, raising=False)
    other = locks.hold_shared()
    try:
        with pytest.raises(locks.InUse, match="another test run is using the cluster"):
            with locks.sole_user():
                pass
    finally:
        os.close(other)
    with locks.sole_user():
        pass


def test_a_run_holding_the_cluster_may_itself_tear_it_down_and_keeps_its_hold(tmp_path, monkeypatch):
    monkeypatch.setattr(locks, "USERS", tmp_path / "users")
    mine = locks.hold_shared()
    monkeypatch.setenv(locks.USERS_FD_ENV, str(mine))
    try:
        with locks.sole_user():
            pass
        # Still shared-held afterwards: another exclusive taker fails.
        monkeypatch.delenv(locks.USERS_FD_ENV)
        with pytest.raises(locks.InUse):
            with locks.sole_user():
                pass
    finally:
        os.close(mine)


def test_wait_for_lets_a_programming_error_through_at_once():
    calls = []

    def probe():
        calls.append(1)
        return {}["missing"]

    with pytest.raises(KeyError):
        wait_for("a typo", probe, timeout=5, interval=0.01)
    assert len(calls) == 1


def test_wait_for_that_times_out_fails_with_the_last_value_it_saw():
    with pytest.raises(TimeoutError, match=r"waiting for the count; last: 0"):
        wait_for("the count", lambda: 0, timeout=0.1, interval=0.02)


def test_the_bin_dir_key_covers_every_pinned_version_and_a_tool_dir_only_its_own():
    from e2e.cluster import paths, versions

    assert set(versions.PINNED) == {
        "kubernetes", "etcd", "coredns", "metrics-server", "helm", "kubeconform", "helm-unittest", "kube-router", "registry",
    }
    assert set(build.commands_by_tool()) == set(versions.PINNED)
    base = paths.bin_key()
    for tool in versions.PINNED:
        bumped = {**versions.PINNED, tool: versions.PINNED[tool] + "-bumped"}
        assert paths.bin_key(bumped) != base, f"bumping {tool} must change the bin dir"
    assert paths.tool_dir("etcd").name == f"etcd-{versions.ETCD}"
    assert paths.tool_dir("kubernetes").name == f"kubernetes-{versions.KUBERNETES}"


def test_the_bin_dir_links_each_command_to_its_tools_own_build(tmp_path, monkeypatch):
    from e2e.cluster import paths

    monkeypatch.setenv("ZT_RELAY_CACHE", str(tmp_path))
    (paths.tool_dir("etcd") / "bin").mkdir(parents=True)
    (paths.tool_dir("etcd") / "bin" / "etcd").write_text("#!/bin/sh\n")
    build.link_bin_dir({"etcd": ("etcd",)}, paths.bin_dir())
    build.link_bin_dir({"etcd": ("etcd",)}, paths.bin_dir())  # idempotent
    assert (paths.bin_dir() / "etcd").resolve() == (paths.tool_dir("etcd") / "bin" / "etcd").resolve()


def test_an_older_runs_pod_namespaces_are_found_through_our_cni_networks_cache_only(tmp_path, monkeypatch):
    from e2e.cluster import network, teardown

    monkeypatch.setattr(teardown, "CNI_CACHE", tmp_path / "cni")
    monkeypatch.setattr(network, "NETNS_DIR", tmp_path / "netns")
    (tmp_path / "netns").mkdir()
    for ns in ("cni-ours", "cni-theirs", "cni-decoy"):
        (tmp_path / "netns" / ns).write_text("")
    results = tmp_path / "cni" / "results"
    results.mkdir(parents=True)

    def cached(network_name, container, netns):
        result = {"interfaces": [{"name": "veth1"}, {"name": "eth0", "sandbox": f"/var/run/netns/{netns}"}]}
        (results / f"{network_name}-{container}-eth0").write_text(json.dumps({"kind": "cniCacheV1", "result": result}))

    cached(configs.CNI_NETWORK, "abc", "cni-ours")
    cached("k3s-flannel", "def", "cni-theirs")
    assert teardown.legacy_pod_netns() == ["cni-ours"]


class _FakeKubectl:
    def __init__(self, outcome):
        self.outcome = outcome

    def json(self, *args, timeout=None):
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome


NODE_READY = {"status": {"addresses": [{"type": "InternalIP", "address": LAYOUT.node_ip}],
                         "conditions": [{"type": "Ready", "status": "True"}]}}


def test_health_tells_a_slow_api_from_a_broken_one(fake_cluster, monkeypatch):
    import subprocess

    from e2e.cluster import health
    from e2e.cluster.kubectl import KubectlError

    cases = {
        "ok": NODE_READY,
        "slow": subprocess.TimeoutExpired(["kubectl"], 10),
        "broken": KubectlError(("get", "node"), subprocess.CompletedProcess([], 1, "", "connection refused")),
    }
    for expected, outcome in cases.items():
        monkeypatch.setattr(health, "admin", lambda outcome=outcome: _FakeKubectl(outcome))
        assert health.health(LAYOUT, fake_cluster)[0] == expected


def test_a_cluster_of_an_older_harness_or_with_a_dead_process_is_broken(fake_cluster, monkeypatch):
    from e2e.cluster import components, health

    monkeypatch.setattr(health, "admin", lambda: _FakeKubectl(NODE_READY))
    monkeypatch.setattr(health, "process_states", lambda state: {n: (None if n == "kubelet" else 1) for n in components.NAMES})
    assert health.health(LAYOUT, fake_cluster) == ("broken", "not running: kubelet")
    health.generation_file(fake_cluster).unlink()
    assert health.health(LAYOUT, fake_cluster)[0] == "broken"
    assert "older harness" in health.health(LAYOUT, fake_cluster)[1]


def test_a_test_runs_hold_passed_to_the_cli_is_not_inherited_by_the_processes_it_starts(tmp_path, monkeypatch):
    fd = os.open(tmp_path / "users", os.O_RDWR | os.O_CREAT)
    try:
        os.set_inheritable(fd, True)  # as subprocess's pass_fds leaves it in the child
        monkeypatch.setenv(locks.USERS_FD_ENV, str(fd))
        locks.adopt_inherited_fd()
        assert os.get_inheritable(fd) is False
    finally:
        os.close(fd)


def test_down_finds_test_host_veths_of_both_markers_and_never_a_zerotier_tap(monkeypatch):
    """F16 upgrade: the harness before the dash named test-host veths `ztrh<N>`; `down` still
    removes those (a link never outlives the boot that made it), by exact pattern and kind."""
    from e2e.cluster import network

    links = [
        {"ifname": "ztr-th7", "linkinfo": {"info_kind": "veth"}},
        {"ifname": "ztrh12", "linkinfo": {"info_kind": "veth"}},   # the old marker's
        {"ifname": "ztrh34", "linkinfo": {"info_kind": "bridge"}},  # not a veth: not ours
        {"ifname": "ztrhabcdef", "linkinfo": {"info_kind": "tun"}},  # a ZeroTier tap
        {"ifname": "ztrtlztz5u", "linkinfo": {"info_kind": "tun"}},
    ]

    class Done:
        stdout = json.dumps(links)

    monkeypatch.setattr(network, "sh", lambda *argv, **kw: Done())
    assert network.test_host_veths() == ["ztr-th7", "ztrh12"]


def test_reinstalling_the_rules_is_one_transaction_that_replaces_every_old_jump():
    """F19: flush + re-add one call at a time let pod packets out; one iptables-restore
    --noflush transaction rewrites the chains, deletes the jumps there now (an older harness's
    `-i ztr+` one too) and inserts ours first."""
    group = [c for c in firewall.chains(LAYOUT, cgroups.HOST) if (c.binary, c.table) == ("iptables", "filter")]
    hooks = {
        "FORWARD": ["-P FORWARD DROP", "-A FORWARD -j DOCKER-USER", "-A FORWARD -j ZTR-E2E-FORWARD"],
        "INPUT": ["-P INPUT ACCEPT", "-A INPUT -i ztr+ -j ZTR-E2E-INPUT", "-A INPUT -j KUBE-DECOY"],
        "OUTPUT": ["-P OUTPUT ACCEPT"],
    }
    lines = firewall.restore_script(group, hooks).splitlines()
    assert lines[0] == "*filter" and lines[-1] == "COMMIT"
    assert [l for l in lines if l.startswith("-D ")] == ["-D FORWARD -j ZTR-E2E-FORWARD", "-D INPUT -i ztr+ -j ZTR-E2E-INPUT"]
    assert '-m comment --comment "zt-relay-e2e: dropped and counted in the security table"' in "\n".join(lines)
    assert [l for l in lines if l.startswith("-I INPUT")] == [f"-I INPUT 1 -i {link} -j ZTR-E2E-INPUT" for link in reversed(LAYOUT.cluster_links)]
    # The deletes come before the inserts of the same hook (a -D of an identical spec would
    # otherwise delete the new jump), all inside the one COMMIT.
    assert max(i for i, l in enumerate(lines) if l.startswith("-D FORWARD")) < min(i for i, l in enumerate(lines) if l.startswith("-I FORWARD"))
    assert not any("DOCKER-USER" in l or "KUBE-DECOY" in l for l in lines)


@pytest.mark.parametrize("argv, ours", [
    (["containerd-shim-runc-v2", "-namespace", "k8s.io", "-id", "abc", "-address", "/var/lib/zt-relay-e2e/run/containerd/containerd.sock"], True),
    (["containerd", "--config=/var/lib/zt-relay-e2e/configs/containerd.toml"], True),
    (["/root/.cache/zt-relay/bin/x/kubelet", "--config=/var/lib/zt-relay-e2e/configs/kubelet.json"], True),
    (["/usr/bin/python3", "-m", "e2e.cluster.lb", "--kubeconfig", "/var/lib/zt-relay-e2e/admin.kubeconfig"], True),
    (["tail", "-f", "/var/lib/zt-relay-e2e/logs/kubelet.log"], False),
    (["kubectl", "--kubeconfig=/var/lib/zt-relay-e2e/admin.kubeconfig", "get", "pods", "-w"], False),
    (["containerd", "--config=/var/lib/zt-relay-e2e-old/configs/containerd.toml"], False),
    (["/root/.cache/zt-relay/bin/x/kubelet", "--config=/var/lib/kubelet/config.yaml"], False),  # another cluster's
    ([], False),
])
def test_down_recognises_a_cluster_process_by_its_program_and_state_path_not_by_a_mention(argv, ours):
    """F11: `down` killed whatever command line contained the state dir (a `tail -f` of a log)."""
    assert processes.is_cluster_process(argv, "/var/lib/zt-relay-e2e") is ours


def test_lb_standin_leaves_another_sessions_service_alone_and_counts_its_address_taken():
    """F14: two sessions' stand-ins on one shared cluster (--cluster=existing) each serve and
    give back only what they assigned themselves."""
    theirs = _service("theirs", ips=["10.250.0.1"], mine="10.250.0.1", **OURS)
    theirs["metadata"]["annotations"][lb.OWNER_ANNOTATION] = "session-other"
    fresh = _service("fresh", created="2027-01-01T00:00:00Z", **OURS)
    assert lb.plan([theirs, fresh], POOL, claim_unclassed=False, owner="session-me") == {("ns", "fresh"): "10.250.0.2"}
    assert lb.release_all([theirs], owner="session-me") == {}
    assert lb.release_all([theirs], owner="session-other") == {("ns", "theirs"): None}


PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "no_proxy")


@pytest.mark.parametrize("name", ["etcd", "kube-apiserver", "containerd", "kubelet", "lb-controller"])
def test_cluster_processes_never_inherit_the_callers_proxy(monkeypatch, tmp_path, name):
    """F27 (review-harness2): a developer's HTTPS_PROXY=http://127.0.0.1:3128 (a local proxy:
    cntlm, px, an ssh tunnel) is loopback, which OUTPUT allows; the API server's calls to
    webhooks and aggregated APIs and containerd's dials would go through it, off the machine."""
    from e2e.cluster import components, startup

    for var in PROXY_VARIABLES:
        monkeypatch.setenv(var, "http://127.0.0.1:3128")
    seen = {}

    def fake_start(proc_name, argv, run_dir, log_dir, env=None, program=None):
        seen["env"] = env
        raise SystemExit("captured")

    monkeypatch.setattr(startup.processes, "start", fake_start)
    monkeypatch.setattr(startup.paths, "bin_dir", lambda: tmp_path / "bin")
    monkeypatch.setattr(startup.paths, "kubeconfig_path", lambda: tmp_path / "kubeconfig")
    with pytest.raises(SystemExit, match="captured"):
        startup.start_component(LAYOUT, configs.StatePaths(tmp_path / "state"), name)
    env = seen["env"]
    assert env is not None, f"{name} starts with the caller's whole environment"
    assert not [var for var in PROXY_VARIABLES if var in env], f"{name} inherits {sorted(set(PROXY_VARIABLES) & set(env))}"
    assert env.get("PATH") == os.environ["PATH"]
    assert components.get(name).name == name


class _Config:
    def getoption(self, name):
        return name in ("--with-e2e", "--only-e2e")


class _Item:
    config = _Config()

    def get_closest_marker(self, name):
        return name == "e2e" or None


class _Outcome:
    def __init__(self, report):
        self.report = report

    def get_result(self):
        return self.report


def _ci_report(report):
    from e2e import conftest

    hook = conftest.pytest_runtest_makereport(_Item(), None)
    next(hook)
    try:
        hook.send(_Outcome(report))
    except StopIteration:
        pass
    return report


def test_under_ci_a_skipped_e2e_test_fails_but_an_xfailed_one_stays_xfailed(monkeypatch):
    """F29 (review-harness2): pytest reports an xfail as `skipped` (with `wasxfail`); the CI hook
    turned every e2e strict xfail into "failed: skipped under CI=true" (the summary said N failed
    while the exit code, which ignores reports with wasxfail, stayed 0)."""
    from _pytest.reports import TestReport

    monkeypatch.setenv("CI", "true")
    skipped = _ci_report(TestReport("e2e/t.py::a", ("e2e/t.py", 1, "a"), {}, "skipped", ("e2e/t.py", 1, "Skipped: no root"), "call"))
    assert skipped.outcome == "failed" and "skipped under CI=true" in str(skipped.longrepr)
    xfailed = TestReport("e2e/t.py::b", ("e2e/t.py", 2, "b"), {}, "skipped", ("e2e/t.py", 2, "reason"), "call")
    xfailed.wasxfail = "F23: a known finding"
    xfailed = _ci_report(xfailed)
    assert xfailed.outcome == "skipped" and xfailed.wasxfail == "F23: a known finding"



def test_a_test_host_picks_its_address_under_a_machine_wide_lock(tmp_path, monkeypatch):
    """Concurrent test sessions (`.ci/run`'s shards) create test hosts at the same time: the
    first free address must be picked and taken (its namespace made) by one of them at a time,
    or two hosts get the same address (the second's veth, named for it, then fails)."""
    import fcntl

    from e2e.cluster import network

    lock = tmp_path / "hosts.lock"
    monkeypatch.setattr(network, "HOSTS_LOCK", lock, raising=False)
    monkeypatch.setattr(network, "_netns_exists", lambda name: False)
    monkeypatch.setattr(network, "_setup_hosts_bridge", lambda layout: None)
    seen = []

    class Picked(Exception):
        pass

    def used(layout):
        probe = os.open(lock, os.O_RDWR | os.O_CREAT) if lock.exists() else None
        try:
            if probe is not None:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            seen.append("free")
        except BlockingIOError:
            seen.append("held")
        finally:
            if probe is not None:
                os.close(probe)
        raise Picked

    monkeypatch.setattr(network, "used_host_addresses", used)
    with pytest.raises(Picked):
        network.create_test_host(LAYOUT, "client-1234")
    assert seen == ["held"]


def test_an_image_is_looked_up_and_imported_under_a_machine_wide_lock(tmp_path, monkeypatch):
    """Concurrent test sessions load the same images into containerd: one at a time looks
    and imports, so the second finds the first's import instead of importing it again."""
    import fcntl

    from e2e.cluster import image_import

    lock = tmp_path / "images.lock"
    monkeypatch.setattr(image_import, "IMPORT_LOCK", lock, raising=False)
    monkeypatch.setattr(image_import, "docker_image_id", lambda tag: "sha256:1")
    seen = []

    def imported_from(tag):
        probe = os.open(lock, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            seen.append("free")
        except BlockingIOError:
            seen.append("held")
        finally:
            os.close(probe)
        return "sha256:1"

    monkeypatch.setattr(image_import, "imported_from", imported_from)
    assert image_import.ensure_docker_image("zt-relay:test") is False
    assert seen == ["held"]
