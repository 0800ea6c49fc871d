"""`up` checks that the fixed TCP ports its components listen on are free before it starts
anything (e2e/cluster/ports.py). A component whose port is taken exits at once on bind, and
`up` waits on readiness URLs only: another program answering the same URL (a developer's own
registry on 127.0.0.1:23795, a k3s kube-proxy on 10256) looked "ready", and containerd would
then pull from the foreign registry. Now `up` stops first, naming the port and the component."""

import dataclasses
import errno
import json
import socket
from pathlib import Path

import pytest

from e2e.cluster import components, configs, ports, startup
from e2e.cluster.layout import Layout

LAYOUT = Layout(primary_interface="eth0")

# /proc/net/tcp and tcp6 as the kernel writes them (addresses in host byte order per 32-bit word).
TCP_HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
TCP6_HEADER = "  sl  local_address                         remote_address                        st tx_queue rx_queue\n"


def _v4_row(address: str, port: int, state: str = "0A") -> str:
    packed = socket.inet_aton(address)[::-1].hex().upper()
    return f"   0: {packed}:{port:04X} 00000000:0000 {state} 00000000:00000000 00:00000000 00000000     0        0 1 1\n"


def _v6_row(address: str, port: int, state: str = "0A") -> str:
    raw = socket.inet_pton(socket.AF_INET6, address)
    packed = "".join(raw[i:i + 4][::-1].hex().upper() for i in range(0, 16, 4))
    return f"   0: {packed}:{port:04X} {'0' * 32}:0000 {state} 00000000:00000000 00:00000000 00000000     0        0 1 1\n"


def test_the_kernels_listening_sockets_are_read_from_proc_net_tcp_v4_and_v6():
    tcp = TCP_HEADER + _v4_row("127.0.0.1", 23795) + _v4_row("0.0.0.0", 22) + _v4_row("127.0.0.1", 40000, state="01")
    tcp6 = TCP6_HEADER + _v6_row("::", 6443) + _v6_row("::1", 10256)
    assert ports.listening([tcp, tcp6]) == {("127.0.0.1", 23795), ("0.0.0.0", 22), ("::", 6443), ("::1", 10256)}


def in_use(*taken_ports: int):
    """The kernel's answer to a trial bind, for the pure tests: these ports are taken."""
    return lambda protocol, address, port: OSError(errno.EADDRINUSE, "in use") if port in taken_ports else None


def test_a_foreign_listener_on_the_registrys_port_is_named_with_the_port_and_the_component():
    taken = ports.taken(LAYOUT, {("tcp", "127.0.0.1", 23795)}, in_use(23795))
    assert len(taken) == 1
    assert "23795" in taken[0] and "registry" in taken[0]


@pytest.mark.parametrize("listener", ["0.0.0.0", "::", LAYOUT.node_ip])
def test_a_listener_on_every_address_or_on_the_components_own_one_is_named_as_the_holder(listener):
    taken = ports.taken(LAYOUT, {("tcp", listener, 6443), ("tcp", "127.0.0.1", 6443)}, in_use(6443))
    assert len(taken) == 1 and "6443" in taken[0] and "kube-apiserver" in taken[0]
    assert listener in taken[0] and "127.0.0.1" not in taken[0]  # the apiserver binds the node IP only


def test_a_port_the_kernel_lets_the_component_bind_is_free_whoever_else_uses_the_number():
    # The apiserver binds the node IP only: a developer's 127.0.0.1:6443 (kind's port mapping) is fine.
    assert ports.taken(LAYOUT, {("tcp", "127.0.0.1", 6443), ("tcp", "192.0.2.7", 23795)}, in_use()) == []


def test_a_real_listener_on_another_address_with_the_same_port_does_not_take_it():
    with socket.socket() as sock:
        sock.bind(("127.0.0.2", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert about(port, ports.taken(_layout_on_loopback(port), bind_error=only(port))) == []


def test_every_fixed_port_the_components_are_configured_with_is_checked():
    checked = {port for *_rest, port in ports.fixed_listeners(LAYOUT)}
    assert {LAYOUT.registry_port, LAYOUT.etcd_client_port, LAYOUT.etcd_peer_port, LAYOUT.apiserver_port,
            LAYOUT.metrics_server_port, 10250, 10248, 10256, 10249, 10257, 10259} <= checked


def test_a_real_socket_listening_on_the_registrys_address_is_found_in_this_network_namespace():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        layout = Layout(primary_interface="eth0", registry_port=port)
        taken = ports.taken(layout, bind_error=only(port))
    assert any(str(port) in line and "registry" in line for line in taken), taken


def test_up_refuses_before_it_starts_anything_when_the_registrys_port_is_taken(tmp_path, monkeypatch):
    monkeypatch.setenv("ZT_RELAY_E2E_STATE", str(tmp_path / "state"))
    monkeypatch.setattr(startup.health, "current_layout", lambda: LAYOUT)
    monkeypatch.setattr(startup.health, "health", lambda layout, state: ("absent", "no state dir"))
    monkeypatch.setattr(startup.teardown, "traces_present", lambda layout: False)
    monkeypatch.setattr(startup, "_refuse_foreign_kubernetes", lambda: None)
    monkeypatch.setattr(startup.network, "machine_networks", lambda: [])
    monkeypatch.setattr(startup.network, "machine_routes", lambda: [])
    monkeypatch.setattr(startup.ports, "sockets", lambda: {("tcp", "127.0.0.1", LAYOUT.registry_port)})
    monkeypatch.setattr(startup.ports, "trial_bind", in_use(LAYOUT.registry_port))

    def started(*args, **kwargs):
        raise AssertionError("up went on to set the machine up with the registry's port taken")

    monkeypatch.setattr(startup.sysctls, "save", started)
    monkeypatch.setattr(startup.cgroups, "prepare", started)
    with pytest.raises(SystemExit) as exc:
        startup._up()
    message = str(exc.value)
    assert "23795" in message and "registry" in message
    assert not Path(tmp_path / "state").exists()


def test_a_dns_server_listening_on_every_address_takes_corednss_port():
    """CoreDNS binds the node IP's port 53 (configs.corefile). A developer's dnsmasq (Debian's
    default: every address, 0.0.0.0:53) makes that bind fail, and CoreDNS has no readiness
    probe: `up` went on with no cluster DNS. It is a fixed port like the others."""
    taken = ports.taken(LAYOUT, {("tcp", "0.0.0.0", 53), ("udp", "0.0.0.0", 53)}, in_use(53))
    assert len(taken) == 2 and all("0.0.0.0:53" in line and "coredns" in line for line in taken)
    assert {line.split()[1] for line in taken} == {"53/tcp", "53/udp"}


PORT_FIELDS = [f.name for f in dataclasses.fields(Layout) if f.name.endswith("_port")]


def rendered(layout: Layout, state) -> str:
    """Everything `up` hands the components: command lines, config files, API objects."""
    bin_dir = Path("/bin-dir")
    parts = [json.dumps(c.command(layout, state, bin_dir)) for c in components.COMPONENTS if not c.python and c.command.__module__ == configs.__name__]
    parts += [configs.kubelet_config(layout, state), configs.kube_proxy_config(layout, state), configs.registry_config(layout, state),
              configs.corefile(layout, state), configs.kubeadm_config(layout, state),
              json.dumps(configs.dns_objects(layout)), json.dumps(configs.metrics_server_objects(layout))]
    return "\n".join(parts)


def test_the_checked_ports_are_the_layouts_port_fields_and_nothing_else():
    """One source of truth: a port written as a literal in the check (or in a component's
    config) can change on one side only and escape `up`'s check."""
    checked = {port for *_rest, port in ports.fixed_listeners(LAYOUT)}
    assert checked == {getattr(LAYOUT, name) for name in PORT_FIELDS}


@pytest.mark.parametrize("field", PORT_FIELDS)
def test_a_changed_port_field_changes_its_components_config_and_the_check(field, tmp_path):
    moved = dataclasses.replace(LAYOUT, **{field: 31977})
    state = configs.StatePaths(tmp_path)
    assert "31977" in rendered(moved, state) and "31977" not in rendered(LAYOUT, state)
    assert 31977 in {port for *_rest, port in ports.fixed_listeners(moved)}


def only(port: int):
    """The kernel's answer for `port` alone (a real trial bind), every other port free: the real
    cluster's ports are not bound here, even for a moment (its components may start beside
    these tests: `.ci/run` runs them beside the cluster part)."""
    return lambda protocol, address, p: ports.trial_bind(protocol, address, p) if p == port else None


def about(port: int, taken: list[str]) -> list[str]:
    """The lines on this port only: the cluster's own ports are taken while it is up."""
    return [line for line in taken if line.startswith(f"port {port}/")]


def _layout_on_loopback(port: int) -> Layout:
    return Layout(primary_interface="eth0", registry_port=port)  # the registry binds 127.0.0.1


def test_a_socket_bound_to_a_fixed_port_without_listening_takes_it():
    """/proc/net/tcp does not list a TCP socket that is bound but not listening, yet the
    component's bind fails on it all the same."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        taken = ports.taken(_layout_on_loopback(port), bind_error=only(port))
    assert any(str(port) in line and "registry" in line for line in taken), taken


def test_an_ipv6_only_listener_on_every_address_leaves_an_ipv4_port_free():
    with socket.socket(socket.AF_INET6) as sock:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(("::", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert about(port, ports.taken(_layout_on_loopback(port), bind_error=only(port))) == []


def test_a_dual_stack_listener_on_every_address_takes_an_ipv4_port():
    with socket.socket(socket.AF_INET6) as sock:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", 0))
        sock.listen()
        port = sock.getsockname()[1]
        taken = ports.taken(_layout_on_loopback(port), bind_error=only(port))
    assert any(f"[::]:{port}" in line and "registry" in line for line in taken), taken


def test_a_udp_socket_on_the_dns_port_takes_corednss_udp_bind():
    """CoreDNS binds UDP and TCP port 53 on the node IP: a UDP-only DNS server beside it
    (listening nowhere on TCP) made only its UDP bind fail, unseen by a TCP-only check."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        layout = Layout(primary_interface="eth0", node_ip="127.0.0.1", dns_port=port)
        taken = ports.taken(layout, bind_error=only(port))
    assert any(f"{port}/udp" in line and "coredns" in line for line in taken), taken


REAL_BIND_TESTS = (
    test_a_real_listener_on_another_address_with_the_same_port_does_not_take_it,
    test_a_real_socket_listening_on_the_registrys_address_is_found_in_this_network_namespace,
    test_a_socket_bound_to_a_fixed_port_without_listening_takes_it,
    test_an_ipv6_only_listener_on_every_address_leaves_an_ipv4_port_free,
    test_a_dual_stack_listener_on_every_address_takes_an_ipv4_port,
    test_a_udp_socket_on_the_dns_port_takes_corednss_udp_bind,
)


def test_the_real_bind_tests_never_bind_the_real_clusters_ports(monkeypatch):
    """.ci/run runs these beside the cluster part: a trial bind (bind, listen, close) of the
    real cluster's port 10256, 6443, 53... while `up` or a restart (the API outage test,
    restart_api_watchers) starts that component makes its bind fail (EADDRINUSE: it exits at
    once, the cluster part fails). They trial-bind the port under test only."""
    bound = []
    real = ports.trial_bind
    monkeypatch.setattr(ports, "trial_bind", lambda protocol, address, port: bound.append(port) or real(protocol, address, port))
    for test in REAL_BIND_TESTS:
        test()
    assert bound and not set(bound) & {getattr(LAYOUT, name) for name in PORT_FIELDS}
