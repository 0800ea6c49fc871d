"""Review (review-harness2) of kube-router, the harness's NetworkPolicy enforcer, as the machine's
owner sees it: the firewall state of every other program on the machine must survive it.

kube-router v2.1 syncs by rewriting, not by editing (pkg/controllers/netpol/
network_policy_controller.go fullPolicySync, pkg/utils/iptables.go Restore, pkg/utils/ipset.go):
on every full sync (each pod or policy change, and every 5 minutes)
- F23: at the end of a sync it runs `ipset save` of EVERY set on the machine, and at the next
  sync `ipset restore`s all of them (swapped in from a copy): an entry another program (fail2ban,
  firewalld, a developer's script) added in between was gone; and it destroyed any set whose name
  merely starts with KUBE-SRC-/KUBE-DST-;
- F24: `iptables-save -t filter`, then `iptables-restore -T filter` WITHOUT --noflush: the
  machine's whole IPv4 filter table was replaced by the snapshot, counters zeroed (another
  program's, and the harness's own drop counters the egress tests read), a rule someone
  inserts between the save and the restore (dockerd publishing a port) lost, and any chain
  merely named KUBE-POD-FW-*/KUBE-NWPLCY-* deleted.
Fixed: kube-router runs with shims for `iptables-save`, `iptables-restore` and `ipset` first on
its PATH (e2e/cluster/kube_router_view.py): it sees and writes only its own chains and sets.
These tests also check each sync they trigger ran to its end without an error.
"""

import re
import socket
import subprocess
import uuid

import pytest

from e2e import workloads
from e2e.cluster import configs, paths

SYNC_START = b"Starting sync of iptables with version"
SYNC_END = b"sync iptables took"
SYNC_ERRORS = (b"Aborting sync", b"Failed to cleanup stale ipsets", b"kube-router shim")


@pytest.fixture
def kube_router_log(cluster):
    if cluster.backend != "local":
        pytest.skip("kube-router is the local cluster's enforcer (--cluster=local)")
    log = configs.StatePaths(paths.state_dir()).logs / "kube-router.log"
    assert log.exists(), f"no kube-router log at {log}: is the enforcer a cluster process?"
    return log


@pytest.fixture
def full_sync(kube_router_log, kubectl, namespace, wait_for):
    """Run one kube-router full sync that STARTS after the call, and wait for its end."""

    def sync() -> None:
        offset = kube_router_log.stat().st_size
        name = f"review-{uuid.uuid4().hex[:8]}"
        kubectl.apply({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"podSelector": {"matchLabels": {"review": name}}, "policyTypes": ["Ingress"]},
        })

        def ended() -> bool:
            text = kube_router_log.read_bytes()[offset:]
            start = text.find(SYNC_START)
            return start >= 0 and SYNC_END in text[start:]

        wait_for("a kube-router full sync that started after the trigger, to its end", ended, 60)
        text = kube_router_log.read_bytes()[offset:]
        one_sync = text[text.find(SYNC_START):]
        one_sync = one_sync[:one_sync.find(SYNC_END)]
        errors = [line for line in one_sync.splitlines() if any(e in line for e in SYNC_ERRORS)]
        assert not errors, f"kube-router's sync failed: {errors}"

    return sync


def _remove_chain(chain: str, binary: str = "iptables") -> None:
    """Cleanup of a test's own chain (best effort: it may not have been made)."""
    subprocess.run([binary, "-w", "5", "-F", chain], capture_output=True)
    subprocess.run([binary, "-w", "5", "-X", chain], capture_output=True)


def _run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30).stdout


@pytest.mark.timeout(180)
def test_an_entry_another_program_adds_to_its_ipset_survives_kube_routers_syncs(full_sync):
    name = f"review-f2b-{uuid.uuid4().hex[:8]}"  # as fail2ban's sets; not kube-router's, not ours
    _run("ipset", "create", name, "hash:ip")
    try:
        _run("ipset", "add", name, "198.18.9.1")
        full_sync()  # its end saves every set of the machine, this one included
        _run("ipset", "add", name, "198.18.9.2")  # a new ban, as fail2ban adds it
        full_sync()
        members = _run("ipset", "list", name).split()
        assert "198.18.9.1" in members, f"ipset {name} lost its first entry: {members}"
        assert "198.18.9.2" in members, f"kube-router's sync took back the entry added after its last save: {members}"
    finally:
        subprocess.run(["ipset", "destroy", name], capture_output=True)


@pytest.mark.timeout(180)
def test_another_programs_filter_chain_keeps_its_counters_through_kube_routers_syncs(full_sync):
    chain = f"REVIEW-CNT-{uuid.uuid4().hex[:8].upper()}"
    _run("iptables", "-w", "5", "-N", chain)
    try:
        _run("iptables", "-w", "5", "-A", chain, "-c", "7", "700", "-j", "RETURN")

        def packets() -> int:
            return int(_run("iptables", "-w", "5", "-L", chain, "-v", "-x", "-n").splitlines()[2].split()[0])

        assert packets() == 7
        full_sync()
        assert packets() == 7, "kube-router's sync rewrote the machine's filter table and zeroed another program's counters"
    finally:
        _remove_chain(chain)


@pytest.mark.timeout(180)
def test_a_set_another_program_destroys_stays_destroyed_through_kube_routers_syncs(full_sync):
    name = f"review-gone-{uuid.uuid4().hex[:8]}"
    _run("ipset", "create", name, "hash:ip")
    try:
        _run("ipset", "add", name, "198.18.9.4")
        full_sync()  # v2.1's save at the end of this sync held the set ...
        _run("ipset", "destroy", name)
        full_sync()  # ... and its next restore created it again (`create -exist`, swap)
        assert name not in _run("ipset", "list", "-n").split(), f"kube-router's sync brought back ipset {name}"
    finally:
        subprocess.run(["ipset", "destroy", name], capture_output=True)


@pytest.mark.timeout(180)
def test_a_set_merely_named_like_kube_routers_survives_its_syncs(full_sync):
    name = f"KUBE-SRC-review-{uuid.uuid4().hex[:8]}"  # its prefix, not its name (16 base32 characters)
    _run("ipset", "create", name, "hash:ip")
    try:
        _run("ipset", "add", name, "198.18.9.3")
        full_sync()  # v2.1 destroyed every KUBE-SRC-* set no policy of its uses
        members = _run("ipset", "list", name).split()
        assert "198.18.9.3" in members, f"kube-router's sync emptied ipset {name}: {members}"
    finally:
        subprocess.run(["ipset", "destroy", name], capture_output=True)


@pytest.mark.timeout(180)
def test_a_chain_merely_named_like_kube_routers_survives_its_syncs(full_sync):
    chain = f"KUBE-POD-FW-REVIEW{uuid.uuid4().hex[:8].upper()}"  # its prefix, not its name
    _run("iptables", "-w", "5", "-N", chain)
    try:
        _run("iptables", "-w", "5", "-A", chain, "-c", "4", "400", "-j", "RETURN")
        full_sync()  # v2.1 left every KUBE-POD-FW-* chain it did not make this sync out of its restore
        rules = _run("iptables", "-w", "5", "-S", chain, "-v")
        assert "-c 4 400" in rules, f"kube-router's sync deleted or reset chain {chain}: {rules}"
    finally:
        _remove_chain(chain)


@pytest.mark.timeout(300)
def test_a_neighbours_chain_named_like_a_prefix_of_kube_routers_leaves_its_pod_chains_in_place(
        full_sync, kubectl, namespace, busybox_image, wait_for_pods_ready):
    """kube-router's cleanupStaleRules lists chains with go-iptables (`iptables -t filter -S`, not
    iptables-save), takes every KUBE-POD-FW-* chain it did not make as stale, and drops every line
    of its restore CONTAINING a stale name: a neighbour's chain `KUBE-POD-FW-` took every jump to
    a pod's chain away, on every sync (the shim keeps the neighbour's chain): enforcement silently off."""
    kubectl.apply(workloads.sleeper_pod("guarded", busybox_image), namespace=namespace)
    (pod,) = wait_for_pods_ready(namespace, "app=guarded", 1, timeout=120)
    address = pod["status"]["podIP"]
    _run("iptables", "-w", "5", "-N", "KUBE-POD-FW-")
    try:
        full_sync()
        rules = _run("iptables", "-w", "5", "-S", "KUBE-ROUTER-FORWARD").splitlines()
        jumps = [rule for rule in rules if f"-d {address}/32" in rule]
        assert jumps and all(re.search(r"-j KUBE-POD-FW-[A-Z2-7]{16}$", rule) for rule in jumps), rules
    finally:
        _remove_chain("KUBE-POD-FW-")


@pytest.mark.timeout(180)
def test_another_programs_rule_in_forward_keeps_its_counters_and_kube_router_stays_first(full_sync):
    # Matches no packet (198.18.0.0/15 is nobody's here): a neighbour's accounting rule.
    tag = f"review-fwd-{uuid.uuid4().hex[:8]}"
    rule = ["FORWARD", "-s", "198.18.9.9/32", "-d", "198.18.9.9/32", "-m", "comment", "--comment", tag, "-j", "RETURN"]
    _run("iptables", "-w", "5", "-A", *rule[:1], "-c", "9", "900", *rule[1:])
    try:
        full_sync()
        forward = _run("iptables", "-w", "5", "-S", "FORWARD", "-v").splitlines()
        ours = [line for line in forward if tag in line]
        assert len(ours) == 1 and "-c 9 900" in ours[0], f"kube-router's sync reset or lost a FORWARD rule: {ours}"
        assert "-j KUBE-ROUTER-FORWARD" in forward[1], f"kube-router's jump is no longer first in FORWARD: {forward[:3]}"
    finally:
        subprocess.run(["iptables", "-w", "5", "-D", *rule], capture_output=True)


@pytest.mark.timeout(180)
def test_another_programs_ip6tables_chain_keeps_its_counters(full_sync):
    """A guard, not a fix: kube-router runs with --enable-ipv6=false, so it makes no IPv6
    handler and never calls ip6tables-save/-restore (nor `inet6:` ipsets)."""
    chain = f"REVIEW-CNT6-{uuid.uuid4().hex[:8].upper()}"
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sink:  # a loopback port nobody else uses
        sink.bind(("::1", 0))
        port = str(sink.getsockname()[1])
        jump = ["OUTPUT", "-o", "lo", "-d", "::1/128", "-p", "udp", "--dport", port, "-j", chain]
        _run("ip6tables", "-w", "5", "-N", chain)
        try:
            _run("ip6tables", "-w", "5", "-A", chain, "-j", "RETURN")
            _run("ip6tables", "-w", "5", "-A", *jump)
            # ip6tables-nft ignores `-c` (unlike iptables): count real datagrams instead.
            with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as client:
                for _ in range(3):
                    client.sendto(b"x", ("::1", int(port)))
            assert "-c 3 " in _run("ip6tables", "-w", "5", "-S", chain, "-v")
            full_sync()
            rules = _run("ip6tables", "-w", "5", "-S", chain, "-v")
            assert "-c 3 " in rules, f"kube-router's sync touched the IPv6 filter table: {rules}"
        finally:
            subprocess.run(["ip6tables", "-w", "5", "-D", *jump], capture_output=True)
            _remove_chain(chain, "ip6tables")
