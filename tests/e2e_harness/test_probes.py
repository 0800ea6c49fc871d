"""Per-test packet counters (e2e/probes.py): the rules a probe adds, that `down` removes a
killed run's leftovers as the harness's own, and - with the real iptables in a network
namespace of the test's own (root) - that a gate counts a guard's drops of the test's own
packets and fails when the guard lets them through."""

import shutil
import socket
import subprocess

import pytest

from e2e import probes
from e2e.cluster import firewall
from tests.relay import kernel

CHAIN = "ZTR-E2E-PROBE-0a1b2c3d"


def test_a_probe_is_a_jump_to_an_empty_chain_of_its_own_first_or_appended():
    first = probes.Probe("iptables", "security", "FORWARD", ("-s", "10.244.0.5", "-d", "198.18.3.77"), CHAIN, first=True)
    assert first.install_script().splitlines() == [
        "*security", f":{CHAIN} - [0:0]", f"-I FORWARD 1 -s 10.244.0.5 -d 198.18.3.77 -j {CHAIN}", "COMMIT"]
    last = probes.Probe("iptables", "mangle", "POSTROUTING", ("-d", "198.18.3.77"), CHAIN)
    assert last.install_script().splitlines() == ["*mangle", f":{CHAIN} - [0:0]", f"-A POSTROUTING -d 198.18.3.77 -j {CHAIN}", "COMMIT"]
    assert last.remove_script().splitlines() == ["*mangle", f"-D POSTROUTING -d 198.18.3.77 -j {CHAIN}", f"-X {CHAIN}", "COMMIT"]
    assert probes.new_chain() != probes.new_chain() and len(probes.new_chain()) <= 28  # iptables' limit
    assert probes.new_chain().startswith("ZTR-E2E-PROBE-")


def test_a_killed_runs_probe_is_the_harness_own_for_down_and_not_in_the_way_of_its_guards():
    listing = [
        "-P POSTROUTING ACCEPT",
        f"-N {CHAIN}",
        "-N KUBE-KUBELET-CANARY",
        f"-A POSTROUTING -s 10.244.0.5/32 -d 198.18.3.77/32 -j {CHAIN}",
    ]
    assert firewall.cleanup_commands(listing, firewall.ours) == [
        ["-D", "POSTROUTING", "-s", "10.244.0.5/32", "-d", "198.18.3.77/32", "-j", CHAIN], ["-F", CHAIN], ["-X", CHAIN]]
    assert firewall.probe_chain(CHAIN) and not firewall.probe_chain("ZTR-E2E-FORWARD")


LISTED = f"""\
Chain FORWARD (policy ACCEPT 12 packets, 900 bytes)
    pkts      bytes target     prot opt in     out     source               destination
       7      420 {CHAIN}  all  --  *      *       10.244.0.5           198.18.3.77
     311    20000 ZTR-E2E-FORWARD  all  --  *      *       0.0.0.0/0            0.0.0.0/0
       2      120 ZTR-E2E-PROBE-ffffffff  all  --  *      *       10.244.0.6           198.18.3.77
"""


def test_a_probe_reads_the_one_rule_jumping_to_its_chain():
    assert probes.packets(LISTED, CHAIN) == 7
    with pytest.raises(RuntimeError, match="0 rules"):
        probes.packets(LISTED, "ZTR-E2E-PROBE-00000000")


needs_root_tools = pytest.mark.skipif(
    not kernel.is_root() or not shutil.which("iptables"),
    reason="needs root and iptables (a private network namespace of the test's own)",
)


def ipt(*args: str) -> None:
    subprocess.run(["iptables", "-w", "5", *args], check=True, capture_output=True, text=True, timeout=30)


def send_udp(address: str, n: int) -> list[int]:
    """`n` datagrams from this thread (in the test's namespace); the errno of each refused one."""
    errors = []
    for _ in range(n):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.sendto(b"probe", (address, 9))
            except OSError as exc:
                errors.append(exc.errno)
    return errors


GUARD = probes.Guard("iptables", "security", "OUTPUT", "ZTR-E2E-OUTPUT", "mangle", "POSTROUTING")


@needs_root_tools
@pytest.mark.timeout(60)
def test_a_gate_proves_the_guard_dropped_the_tests_packets_and_fails_when_it_did_not():
    with kernel.private_netns():
        # A way out (nothing answers: the packets only need to reach POSTROUTING) and a guard
        # like the harness's: an OUTPUT drop in the security table, first in its hook.
        subprocess.run(["ip", "link", "add", "p0", "type", "veth", "peer", "name", "p1"], check=True)
        for link in ("p0", "p1"):
            subprocess.run(["ip", "link", "set", link, "up"], check=True)
        subprocess.run(["ip", "addr", "add", "169.254.9.1/30", "dev", "p0"], check=True)
        subprocess.run(["ip", "route", "add", "198.18.5.0/24", "dev", "p0"], check=True)
        ipt("-t", "security", "-N", "ZTR-E2E-OUTPUT")
        ipt("-t", "security", "-A", "ZTR-E2E-OUTPUT", "-d", "198.18.5.0/24", "-j", "DROP")
        ipt("-t", "security", "-A", "OUTPUT", "-j", "ZTR-E2E-OUTPUT")
        with probes.Probes() as made:
            gate = made.gate(GUARD, "-d", "198.18.5.7")
            other = made.gate(GUARD, "-d", "198.18.5.8")  # another test's: none of ours counted there
            assert send_udp("198.18.5.7", 3) == [1, 1, 1]  # EPERM: dropped in OUTPUT
            assert gate.dropped(at_least=3, timeout=2) == 3
            assert other.counts() == (0, 0)
            with pytest.raises(AssertionError, match="reached"):
                gate.dropped(at_least=4, timeout=0.5)
            # The guard gone, the same packets get past it: the gate says so.
            ipt("-t", "security", "-D", "OUTPUT", "-j", "ZTR-E2E-OUTPUT")
            assert send_udp("198.18.5.7", 2) == []
            with pytest.raises(AssertionError, match="2 got past"):
                gate.dropped(at_least=5, timeout=2)
            ipt("-t", "security", "-A", "OUTPUT", "-j", "ZTR-E2E-OUTPUT")
            # The guard back but behind a rule of another program: not proven to be the guard's drop.
            behind = made.gate(GUARD, "-d", "198.18.5.7")
            ipt("-t", "security", "-I", "OUTPUT", "1", "-d", "198.18.5.9", "-j", "ACCEPT")
            assert send_udp("198.18.5.7", 1) == [1]
            with pytest.raises(AssertionError, match="not first"):
                behind.dropped(at_least=1, timeout=2)
        killed = probes.Probes()  # a run killed before its teardown: never closed
        leftover = killed.gate(GUARD, "-d", "198.18.5.10")
        assert {p for p in firewall.present(firewall.ours) if "PROBE" in p} == {
            f"iptables -t mangle: -N {leftover.passed.chain}", f"iptables -t security: -N {leftover.reached.chain}",
            f"iptables -t mangle: -A POSTROUTING -d 198.18.5.10/32 -j {leftover.passed.chain}",
            f"iptables -t security: -A OUTPUT -d 198.18.5.10/32 -j {leftover.reached.chain}",
        }
        firewall.remove(firewall.ours)  # what `down` does
        assert firewall.present(firewall.ours) == []
