"""Review (review-harness2) of kube-router, the harness's NetworkPolicy enforcer, as the machine's
owner sees it: the firewall state of every other program on the machine must survive it.

kube-router v2.1 syncs by rewriting, not by editing (pkg/controllers/netpol/
network_policy_controller.go fullPolicySync, pkg/utils/iptables.go Restore, pkg/utils/ipset.go):
on every full sync (each pod or policy change, and every 5 minutes)
- F23: at the end of a sync it runs `ipset save` of EVERY set on the machine, and at the next
  sync `ipset restore`s all of them (swapped in from a copy): an entry another program (fail2ban,
  firewalld, a developer's script) added in between is gone;
- F24: `iptables-save -t filter`, then `iptables-restore -T filter` WITHOUT --noflush: the
  machine's whole IPv4 filter table is replaced by the snapshot, counters zeroed (another
  program's, and the harness's own drop counters the egress tests read), and a rule someone
  inserts between the save and the restore (dockerd publishing a port) is lost.
The security-table guards keep egress closed through all of it (they are not in `filter`).
"""

import subprocess
import uuid

import pytest

from e2e.cluster import configs, paths

SYNC_START = b"Starting sync of iptables with version"
SYNC_END = b"sync iptables took"


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

    return sync


def _run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30).stdout


@pytest.mark.xfail(strict=True, reason="F23: kube-router v2.1 restores every ipset of the machine from its last `ipset save`")
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


@pytest.mark.xfail(strict=True, reason="F24: kube-router v2.1 replaces the whole IPv4 filter table (iptables-restore without --noflush)")
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
        subprocess.run(["iptables", "-w", "5", "-F", chain], capture_output=True)
        subprocess.run(["iptables", "-w", "5", "-X", chain], capture_output=True)
