"""Nothing leaves the machine: stray packets to unclaimed pod, Service or LB addresses end in
the sink namespace, and nothing answers them. Local backend only (it owns the host's routes).
What reached the sink is counted per sender and address (`probes`), not by the sink's DROP
counter, which every concurrent session's strays move."""

import json
import socket
import sys

import pytest

from e2e import workloads
from e2e.cluster import cgroups, components, firewall, network

# Unclaimed addresses in each routed range (checked against the cluster before use). The pod
# one lies outside the node's /24, where only the sink route matches.
STRAY = {"pod": "10.244.200.77", "service": "10.96.200.77", "load balancer": "10.250.0.250"}


@pytest.fixture
def layout(cluster):
    if cluster.backend != "local":
        pytest.skip(f"the safety net belongs to the local cluster's host, not to --cluster={cluster.backend}")
    return cluster.layout


@pytest.fixture
def stray_addresses(kubectl):
    claimed = set()
    for svc in kubectl.json("get", "services", "--all-namespaces")["items"]:
        claimed.update(svc["spec"].get("clusterIPs") or [])
        claimed.update(i.get("ip") for i in (svc["status"].get("loadBalancer", {}).get("ingress") or []))
    for pod in kubectl.json("get", "pods", "--all-namespaces")["items"]:
        claimed.add(pod["status"].get("podIP"))
    assert not claimed & set(STRAY.values()), "a stray test address is in use; pick another"
    return STRAY


def _sink_counters(probes, layout, source: str, addresses: dict[str, str]) -> dict:
    """Per stray address, a counter in the sink of what `source` sent there (before its DROP)."""
    return {kind: probes.count("iptables", "raw", "PREROUTING", "-s", source, "-d", address, first=True, netns=layout.sink_netns)
            for kind, address in addresses.items()}


def _in_sink(probes, counters: dict, at_least: int) -> dict[str, int]:
    return {kind: probes.wait_for_packets(counter, at_least) for kind, counter in counters.items()}


def _probe_from_host(address: str) -> str:
    """Send one UDP datagram and try one TCP connect; say what (if anything) answered."""
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.settimeout(1)
    udp.sendto(b"stray", (address, 9))
    try:
        udp.recvfrom(100)
        return "udp answer"
    except TimeoutError:
        pass
    except ConnectionRefusedError:
        return "icmp unreachable"
    finally:
        udp.close()
    with socket.socket() as tcp:
        tcp.settimeout(1)
        try:
            tcp.connect((address, 80))
            return "tcp connected"
        except TimeoutError:
            return "silence"
        except ConnectionRefusedError:
            return "tcp refused"
        except OSError as exc:
            return f"error {exc.errno}"


def test_routes_send_cluster_ranges_to_the_sink(layout, stray_addresses):
    for kind, address in stray_addresses.items():
        route = json.loads(network.sh("ip", "-j", "route", "get", address).stdout)[0]
        assert route["dev"] == layout.sink_host_veth, f"{kind} address {address} routes via {route['dev']}"


def _probe(rule: str) -> bool:
    return firewall.probe_chain(rule.split()[-1])


def test_our_jumps_come_before_kube_proxys_in_forward_output_and_input_v4_and_v6(layout):
    # kube-proxy's chains ACCEPT marked traffic; ours must come first. (dockerd, restarted,
    # puts its jumps on top: they accept docker0 traffic only, so that order is harmless.)
    # kube-router (NetworkPolicy) takes the top again on every sync and ACCEPTs what a policy
    # allows: for that the drops are repeated in the security table, checked below.
    # INPUT: one jump per link the cluster's traffic enters by (exact names, no wildcard).
    # A concurrent test's probe (e2e/probes.py: an empty chain counting that test's packets,
    # first in a guard's hook) is not a jump of the policy's.
    expected = {"FORWARD": ["ZTR-E2E-FORWARD"], "OUTPUT": ["ZTR-E2E-OUTPUT", "ZTR-E2E-PODS-OUT"],
                "INPUT": ["ZTR-E2E-INPUT"] * len(layout.cluster_links)}
    for binary in ("iptables", "ip6tables"):
        for hook, names in expected.items():
            rules = network.sh(binary, "-S", hook).stdout.splitlines()
            ours = [i for i, rule in enumerate(rules) if "-j ZTR-E2E-" in rule and not _probe(rule)]
            kube = [i for i, rule in enumerate(rules) if "-j KUBE-" in rule and "-j KUBE-ROUTER-" not in rule]
            assert sorted(rules[i].split()[-1] for i in ours) == sorted(names), f"{binary} {hook}: our jumps: {rules}"
            assert not kube or max(ours) < min(kube), f"{binary} {hook}: {rules}"
            guard = network.sh(binary, "-t", "security", "-S", hook).stdout.splitlines()
            assert sorted(r.split()[-1] for r in guard if "-j ZTR-E2E-" in r and not _probe(r)) == sorted(names), f"{binary} security {hook}: {guard}"


def test_every_drop_is_in_the_security_guard_first_in_its_hook_and_filter_drops_nothing(layout):
    """The drops and their counters live in the security table only (kube-router rewrites filter
    on every sync): each guard is first in its hook and holds every DROP it should."""
    for chain in firewall.chains(layout, cgroups.HOST):
        live = network.sh(chain.binary, "-t", chain.table, "-S", chain.name).stdout.splitlines()
        drops = [r for r in live if r.endswith("-j DROP")]
        if chain.table == "security":
            assert firewall.first_in_hook(chain), f"{chain.binary} security {chain.hook}"
            assert len(drops) == sum(r[-1] == "DROP" for r in chain.rules) > 0, f"{chain.binary} security {chain.name}: {live}"
            assert sum(" -j TEE " in r for r in live) == sum("TEE" in r for r in chain.rules), live
        elif chain.table == "filter":
            assert not drops and not any(" -j TEE " in r for r in live), f"{chain.binary} filter {chain.name}: {live}"


def test_stray_packets_from_the_host_land_in_the_sink_and_nothing_answers(layout, stray_addresses, probes):
    # From the host, a packet to the sink's routes leaves by the sink link, from its address.
    counters = _sink_counters(probes, layout, layout.sink_host_address, stray_addresses)
    answers = {kind: _probe_from_host(address) for kind, address in stray_addresses.items()}
    assert answers == {kind: "silence" for kind in stray_addresses}
    # Per address: one datagram and at least one SYN.
    seen = _in_sink(probes, counters, 2)
    assert all(n >= 2 for n in seen.values()), f"packets per stray address in the sink: {seen}"


def test_stray_packets_from_a_pod_land_in_the_sink_and_nothing_answers(layout, stray_addresses, kubectl, namespace, busybox_image, wait_for_pods_ready, probes):
    kubectl.apply(workloads.sleeper_pod("stray", busybox_image), namespace=namespace)
    (pod,) = wait_for_pods_ready(namespace, "app=stray")
    counters = _sink_counters(probes, layout, pod["status"]["podIP"], stray_addresses)
    # Every send at once, in one exec (each waits 2 s for an answer that must not come):
    # busybox's nc has no UDP; its tftp client sends one read request by UDP and waits.
    # Each prints one line: `udp|tcp <address> <exit status> <its output>`.
    sends = " ".join(
        f"(timeout 2 tftp -g -r stray -l /dev/null {a} 9 >/dev/null 2>&1; echo udp {a} $?) & "
        f"(out=$(nc -w 2 {a} 80 </dev/null 2>&1); echo tcp {a} $? $out) & " for a in stray_addresses.values())
    out = kubectl("exec", "-n", namespace, "stray", "--", "sh", "-c", f"{sends} wait", timeout=30).stdout
    results = {(line.split()[0], line.split()[1]): line.split(maxsplit=3)[2:] for line in out.splitlines() if line.strip()}
    assert set(results) == {(proto, a) for a in stray_addresses.values() for proto in ("udp", "tcp")}, out
    for kind, address in stray_addresses.items():
        assert results["udp", address][0] != "0", f"a UDP request to {address} got an answer"
        status, *said = results["tcp", address]
        assert status != "0", f"TCP to the stray {kind} address {address} connected"
        assert "refused" not in " ".join(said).lower(), f"something refused TCP to {address}: {said}"
    seen = _in_sink(probes, counters, 2)
    assert all(n >= 2 for n in seen.values()), f"packets per stray address in the sink: {seen}"


def test_stray_packets_from_a_test_host_land_in_the_sink(layout, stray_addresses, test_hosts, probes):
    client = test_hosts("client")
    address = stray_addresses["load balancer"]
    (counter,) = _sink_counters(probes, layout, client.address, {"load balancer": address}).values()
    probe = "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendto(b'x', (%r, 9))" % address
    for _ in range(3):
        client.run(sys.executable, "-c", probe)
    assert probes.wait_for_packets(counter, 3) >= 3


# As `ss` shows them: the kernel's 15-character command names of every non-Python component.
CLUSTER_PROGRAMS = tuple(c.name[:15] for c in components.COMPONENTS if not c.python)


def test_no_cluster_component_listens_on_the_machines_own_interfaces(layout):
    sockets = network.sh("ss", "-Hltunp").stdout.splitlines()
    ours = [line for line in sockets if any(f'(("{prog}"' in line for prog in CLUSTER_PROGRAMS)]
    assert ours, "no cluster sockets found at all"
    for line in ours:
        local = line.split()[4].rsplit(":", 1)[0]
        assert local in ("127.0.0.1", layout.node_ip), f"listens beyond loopback and the node IP: {line}"
