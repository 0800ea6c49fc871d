"""The harness's packet filter rules, IPv4 and IPv6: its own chains, one jump each.

Every chain the harness writes is named `ZTR-E2E-*` and is reached from one rule in a
built-in chain, so `down` removes exactly those and nothing else:

  filter FORWARD -> ZTR-E2E-FORWARD   (v4, v6) anything that came in by one of our links (the
                                      CNI bridge, the test hosts' bridge) or from our address
                                      ranges and would leave by any link that is not ours is
                                      dropped, on every interface, not only the default
                                      route's; the ACCEPTs between pods and test hosts (dockerd
                                      sets the policy to DROP) name the link they leave by.
                                      Packets routed to the sink go there as untracked copies
                                      (TEE); the originals are dropped unconfirmed.
  filter OUTPUT  -> ZTR-E2E-OUTPUT    (v4, v6) for the harness's own host processes (the
                                      cgroup `cgroups.HOST`): loopback and our links only; an
                                      image pull or DNS lookup that would leave the machine is
                                      dropped (and fails at once, EPERM).
  filter OUTPUT  -> ZTR-E2E-PODS-OUT  (v4, v6) the same for every container (`cgroups.PODS`):
                                      a hostNetwork pod sends from the machine's netns.
  filter INPUT   -> ZTR-E2E-INPUT     (v4, v6; one jump per cluster link) from our links to the
                                      machine itself: only what the cluster needs (API server,
                                      kubelet, DNS and metrics-server on the node IP,
                                      replies, ICMP); a resolver or proxy of the
                                      machine (dnsmasq, unbound on 0.0.0.0) would forward a
                                      pod's query off the machine.
  raw PREROUTING -> ZTR-E2E-IN6       (v6; one jump per cluster link) IPv6 from our links to
                                      anything but link-local/multicast is dropped (counted)
                                      before routing decides anything.

Links are named exactly (`-i ztr-cni0`, `-o ztr-hosts0`, ...), never by a wildcard: a
ZeroTier tap is "zt" + 8 base32 characters, and `ztr+` matched about one network in 32 (its
traffic would have counted as ours and left over the VPN).

Each chain above is a policy installed twice, and the drops happen in the second copy:

  security FORWARD, INPUT, OUTPUT -> the same names (v4, v6): the guard, with every DROP (and
                                      the sink's TEE). The security table comes after filter
                                      at the same hooks and an ACCEPT in filter does not skip
                                      it. kube-router (the NetworkPolicy enforcer) puts its
                                      jump first in filter INPUT/FORWARD/OUTPUT again on every
                                      sync and ACCEPTs what a policy allows (every pod gets a
                                      chain), which ends the filter table before ours; and it
                                      rewrites the whole filter table on every sync
                                      (iptables-restore -T filter without --noflush, from a save
                                      without counters), so counters in filter go back to 0.
  filter (the chains above)           the same rules with each DROP turned into an ACCEPT (the
                                      guard drops it; were it left to a later filter rule,
                                      dockerd's DROP policy say, it would go uncounted) and
                                      no TEE: only the RETURNs and the ACCEPTs between our links
                                      (dockerd sets the FORWARD policy to DROP) do anything.
                                      The guards are installed first and removed last.

The DROP rules count what they drop: the safety tests read those counters (security table).

Kubernetes' own chains are a different matter. kube-proxy and the kubelet create fixed
names (KUBE-SERVICES, KUBE-FIREWALL, ...) that no option renames, and another kube-proxy
or kubelet in the same network namespace (k3s, minikube with the none driver) would use
the very same chains. So: `up` refuses to start while those exact chains exist and no
cluster of ours does (the two kube-proxies would overwrite each other's rules), and `down`
removes them only when our cluster ran in this boot (`boot.ours_ran_this_boot`) - by their exact names (never
`kube-proxy --cleanup`, which flushes every IPVS service and nftables `kube-proxy` table on
the machine) - or when asked explicitly
(`down --kube-chains`, for traces of a crashed older run). Chains named otherwise (say,
KUBE-DECOY) are never touched.
"""

import functools
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass

from e2e.cluster import console, kube_router_view
from e2e.cluster.layout import Layout

PREFIX = "ZTR-E2E-"
PROBE_PREFIX = PREFIX + "PROBE-"
"""A test's own packet counter (e2e/probes.py): an empty chain, jumped to by one rule matching
only that test's packets. Ours like every ZTR-E2E- chain (`down` removes a killed run's)."""

# What the kubelet creates by itself (kube-proxy --cleanup leaves these).
KUBELET_CHAINS = ("KUBE-FIREWALL", "KUBE-KUBELET-CANARY", "KUBE-IPTABLES-HINT")
# kube-proxy's (iptables mode) fixed chains; --cleanup removes them with its generated ones.
KUBE_PROXY_CHAINS = (
    "KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ",
    "KUBE-MARK-DROP", "KUBE-FORWARD", "KUBE-PROXY-FIREWALL", "KUBE-PROXY-CANARY",
)
KUBE_PROXY_GENERATED = ("KUBE-SVC-", "KUBE-SVL-", "KUBE-SEP-", "KUBE-EXT-", "KUBE-FW-", "KUBE-XLB-")
TABLES = ("filter", "nat", "mangle", "raw", "security")
BINARIES = ("iptables", "ip6tables", "iptables-legacy", "ip6tables-legacy")
"""Listed and cleaned: kube-proxy and the kubelet pick the legacy backend on machines that use it."""


@dataclass(frozen=True)
class Chain:
    binary: str
    table: str
    name: str
    hook: str
    """The built-in chain holding our jump(s)."""
    matches: tuple[tuple[str, ...], ...]
    """One jump rule per match (an empty match: every packet)."""
    rules: tuple[tuple[str, ...], ...]

    @property
    def jumps(self) -> list[list[str]]:
        return [[*match, "-j", self.name] for match in self.matches]


def _comment(text: str) -> tuple[str, ...]:
    return ("-m", "comment", "--comment", f"zt-relay-e2e: {text}")


def chains(layout: Layout, host_cgroup: str, pods_cgroup: str = "zt-relay-e2e-pods") -> list[Chain]:
    """Every chain of ours with its rules (pure); `host_cgroup` and `pods_cgroup` (the kubelet's
    cgroupRoot, `cgroups.PODS`) are the v2 paths to match: runc puts every container under the
    latter (on hybrid machines too), and a hostNetwork pod sends from the machine's netns, where
    only OUTPUT sees it."""
    pods, hosts = layout.cluster_cidr, layout.test_host_cidr
    cni, hosts_bridge, sink = layout.cni_bridge, layout.hosts_bridge, layout.sink_host_veth
    entering = layout.cluster_links
    # iptables takes one -o per rule: what leaves by a link of ours RETURNs (after the ACCEPTs,
    # which name their link), what came from the cluster and gets past that is dropped.
    leaves_by_ours = tuple(("-o", link, "-j", "RETURN") for link in (*entering, sink))
    out_drops = tuple(
        ("-i", link, *_comment("nothing from the cluster leaves"), "-j", "DROP") for link in entering
    )
    v4_forward = (
        # A stray packet reaches the sink (and is counted there) as an untracked copy, and
        # the packet itself is dropped: had it been forwarded, its conntrack entry (no NAT)
        # would hold the connection to the sink for the next 120 s, so a client whose first
        # SYN beat kube-proxy to a just-assigned LoadBalancer address never got through.
        ("-o", sink, "-j", "TEE", "--gateway", layout.sink_address),
        ("-o", sink, *_comment("strays reach the sink as untracked copies"), "-j", "DROP"),
        # dockerd sets the FORWARD policy to DROP, and kube-proxy only accepts what it marked
        # (not `externalTrafficPolicy: Local`, not pod -> test-host UDP).
        ("-s", pods, "-d", pods, "-o", cni, "-j", "ACCEPT"),
        ("-s", pods, "-d", hosts, "-o", hosts_bridge, "-j", "ACCEPT"),
        ("-s", hosts, "-d", pods, "-o", cni, "-j", "ACCEPT"),
        ("-s", hosts, "-d", hosts, "-o", hosts_bridge, "-j", "ACCEPT"),
        *leaves_by_ours,
        *out_drops,
        ("-s", pods, *_comment("no pod traffic leaves"), "-j", "DROP"),
        ("-s", hosts, *_comment("no test-host traffic leaves"), "-j", "DROP"),
    )
    output = (
        # Counts containerd's dials to the dead registry mirror (configs.DEAD_REGISTRY).
        ("-d", "127.0.0.1", "-p", "tcp", "--dport", "1", *_comment("dials to the dead registry mirror"), "-j", "RETURN"),
        # The machine's resolver is often on loopback (systemd-resolved 127.0.0.53, dnsmasq,
        # unbound on ::1) and forwards off the machine; ours is CoreDNS on the node IP.
        ("-o", "lo", "-p", "udp", "--dport", "53", *_comment("no resolver of the machine"), "-j", "DROP"),
        ("-o", "lo", "-p", "tcp", "--dport", "53", *_comment("no resolver of the machine"), "-j", "DROP"),
        ("-o", "lo", "-j", "RETURN"),
        *leaves_by_ours,
        (*_comment("the harness's processes never dial out"), "-j", "DROP"),
    )
    n = layout.node_ip
    v4_input = (
        ("-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "RETURN"),
        ("-d", n, "-p", "tcp", "-m", "multiport", "--dports", f"{layout.apiserver_port},{layout.kubelet_port},{layout.metrics_server_port}", "-j", "RETURN"),
        ("-d", n, "-p", "udp", "--dport", str(layout.dns_port), "-j", "RETURN"),
        ("-d", n, "-p", "tcp", "--dport", str(layout.dns_port), "-j", "RETURN"),
        # No NodePort range here: kube-proxy DNATs a NodePort in PREROUTING, to a pod (FORWARD)
        # or to a hostNetwork endpoint's own port; INPUT never needs 30000-32767, and allowing
        # it let the cluster reach any listener of the machine there (a proxy on 0.0.0.0).
        ("-p", "icmp", "-j", "RETURN"),
        (*_comment("nothing else on the machine for the cluster"), "-j", "DROP"),
    )
    v6_input = (
        ("-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "RETURN"),
        ("-p", "ipv6-icmp", "-j", "RETURN"),  # neighbour discovery
        (*_comment("nothing else on the machine for the cluster"), "-j", "DROP"),
    )
    every = ((),)
    owner = (("-m", "cgroup", "--path", host_cgroup),)
    pods_owner = (("-m", "cgroup", "--path", pods_cgroup),)
    from_cluster = tuple(("-i", link) for link in entering)
    filter_chains = [
        Chain("iptables", "filter", PREFIX + "FORWARD", "FORWARD", every, v4_forward),
        Chain("ip6tables", "filter", PREFIX + "FORWARD", "FORWARD", every, (*leaves_by_ours, *out_drops)),
        Chain("iptables", "filter", PREFIX + "OUTPUT", "OUTPUT", owner, output),
        Chain("ip6tables", "filter", PREFIX + "OUTPUT", "OUTPUT", owner, output[1:]),
        Chain("iptables", "filter", PREFIX + "INPUT", "INPUT", from_cluster, v4_input),
        Chain("ip6tables", "filter", PREFIX + "INPUT", "INPUT", from_cluster, v6_input),
        Chain("iptables", "filter", PREFIX + "PODS-OUT", "OUTPUT", pods_owner, output[1:]),
        Chain("ip6tables", "filter", PREFIX + "PODS-OUT", "OUTPUT", pods_owner, output[1:]),
        Chain(
            "ip6tables", "raw", PREFIX + "IN6", "PREROUTING", from_cluster,
            (("-d", "fe80::/10", "-j", "RETURN"), ("-d", "ff00::/8", "-j", "RETURN"),
             (*_comment("no IPv6 from the cluster goes anywhere"), "-j", "DROP")),
        ),
    ]
    # The guards come first: `_groups` installs them before the filter chains that pass to them.
    policies = [c for c in filter_chains if c.table == "filter"]
    return [guard(c) for c in policies] + [passing(c) for c in policies] + [c for c in filter_chains if c.table != "filter"]


TO_THE_GUARD = _comment("dropped and counted in the security table")


def guard(chain: Chain) -> Chain:
    """The security-table twin of a policy: every drop (each counts what it drops), the RETURNs
    they depend on and the sink's TEE copy, without the ACCEPTs (one here would only skip
    later security rules). The filter table is rewritten wholesale by kube-router on every sync
    (iptables-restore -T filter, no --noflush, no counters): counters there go back to 0."""
    rules = tuple(r for r in chain.rules if r[-1] != "ACCEPT")
    return Chain(chain.binary, "security", chain.name, chain.hook, chain.matches, rules)


def passing(chain: Chain) -> Chain:
    """The filter-table chain of a policy: its RETURNs and ACCEPTs (dockerd's DROP policy), and
    in place of each DROP an ACCEPT, so the packet surely reaches the guard (after filter, same
    hook) instead of a later filter rule dropping it uncounted. No TEE (the guard copies)."""
    rules = tuple(
        (*_without_comment(r[:-2]), *TO_THE_GUARD, "-j", "ACCEPT") if r[-1] == "DROP" else r
        for r in chain.rules if "TEE" not in r
    )
    return Chain(chain.binary, chain.table, chain.name, chain.hook, chain.matches, rules)


def _without_comment(rule: tuple[str, ...]) -> tuple[str, ...]:
    if "--comment" not in rule:
        return rule
    i = rule.index("--comment")
    return rule[:i - 2] + rule[i + 2:]


def _ipt(binary: str, table: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    # -w: wait for the xtables lock (kube-proxy and the kubelet hold it at times).
    proc = subprocess.run([binary, "-w", "5", "-t", table, *args], capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{binary} -t {table} {shlex.join(args)}: {proc.stderr.strip()}")
    return proc


def _restore_arg(arg: str) -> str:
    return f'"{arg}"' if any(c.isspace() for c in arg) else arg


def restore_script(group: list[Chain], hook_rules: dict[str, list[str]]) -> str:
    """One iptables-restore transaction (pure) for chains of one binary and table: (re)write
    each chain, delete every jump to it that is there now (`hook_rules`: `-S HOOK` per hook),
    and insert its jumps first. `--noflush` leaves every other rule alone; a declared chain
    that exists is flushed in the same transaction."""
    names = {c.name for c in group}
    lines = [f"*{group[0].table}"]
    lines += [f":{c.name} - [0:0]" for c in group]
    for chain in group:
        lines += [" ".join(["-A", chain.name, *map(_restore_arg, rule)]) for rule in chain.rules]
    for hook in dict.fromkeys(c.hook for c in group):
        for rule in hook_rules.get(hook, []):
            parts = shlex.split(rule)
            if parts[:2] == ["-A", hook] and parts[-2:-1] == ["-j"] and parts[-1] in names:
                lines.append(" ".join(["-D", *map(_restore_arg, parts[1:])]))
        for chain in reversed([c for c in group if c.hook == hook]):
            for jump in reversed(chain.jumps):
                lines.append(" ".join(["-I", hook, "1", *map(_restore_arg, jump)]))
    return "\n".join([*lines, "COMMIT", ""])


def install(group: list[Chain]) -> None:
    """(Re)write the chains (one binary, one table) and put their jumps first in their hooks,
    in ONE transaction: a pod's packet sees either the old rules or the new, never an empty
    chain or a missing jump (one iptables call at a time, packets left meanwhile). Idempotent."""
    binary, table = group[0].binary, group[0].table
    hook_rules = {hook: _ipt(binary, table, "-S", hook).stdout.splitlines() for hook in {c.hook for c in group}}
    script = restore_script(group, hook_rules)
    proc = subprocess.run([f"{binary}-restore", "-w", "5", "--noflush"], input=script, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"{binary}-restore --noflush: {proc.stderr.strip()}\n{script}")


def _groups(layout: Layout, host_cgroup: str, pods_cgroup: str) -> list[list[Chain]]:
    by_table: dict[tuple[str, str], list[Chain]] = {}
    for chain in chains(layout, host_cgroup, pods_cgroup):
        by_table.setdefault((chain.binary, chain.table), []).append(chain)
    # The security guards before the filter chains: a filter ACCEPT meant for a guard that is
    # not there yet would let the packet leave.
    return sorted(by_table.values(), key=lambda group: group[0].table != "security")


def install_all(layout: Layout, host_cgroup: str, pods_cgroup: str = "zt-relay-e2e-pods") -> None:
    for group in _groups(layout, host_cgroup, pods_cgroup):
        install(group)


def first_in_hook(chain: Chain) -> bool:
    """Each of the chain's jumps comes before every rule that is not a jump of ours."""
    wanted = [tuple(jump) for jump in chain.jumps]
    for rule in _ipt(chain.binary, chain.table, "-S", chain.hook).stdout.splitlines()[1:]:
        parts = shlex.split(rule)
        if tuple(parts[2:]) in wanted:
            wanted.remove(tuple(parts[2:]))
            if not wanted:
                return True
        elif not parts[-1].startswith(PREFIX):
            return False
    return False


def ensure_first(layout: Layout, host_cgroup: str, pods_cgroup: str = "zt-relay-e2e-pods") -> None:
    """dockerd or kube-proxy may insert their jumps above ours later; move ours back up
    (atomically, see `install`)."""
    for group in _groups(layout, host_cgroup, pods_cgroup):
        if not all(first_in_hook(chain) for chain in group):
            install(group)


def in_place(layout: Layout, host_cgroup: str, pods_cgroup: str = "zt-relay-e2e-pods") -> bool:
    return all(
        _ipt(c.binary, c.table, "-C", c.hook, *jump, check=False).returncode == 0
        for c in chains(layout, host_cgroup, pods_cgroup) for jump in c.jumps
    )


def _listed(binary: str) -> bool:
    """`binary` is here and, if a `-legacy` one, not the very backend plain `iptables` is."""
    if shutil.which(binary) is None:
        return False
    plain = binary.removesuffix("-legacy")
    return not (binary != plain and shutil.which(plain) and _same_backend(shutil.which(plain)))


def listing(binary: str, table: str) -> list[str]:
    if not _listed(binary):
        return []
    proc = _ipt(binary, table, "-S", check=False)
    return proc.stdout.splitlines() if proc.returncode == 0 else []


@functools.lru_cache(maxsize=None)
def _same_backend(plain: str) -> bool:
    """True if plain `iptables` (this path) already is the legacy backend (listing both would
    double up). Asked once per process: `down` lists every binary several times."""
    return "legacy" in subprocess.run([plain, "-V"], capture_output=True, text=True).stdout


def parse_save(text: str) -> dict[str, list[str]]:
    """`iptables-save` output as each table's `iptables -S` listing (pure): `:CHAIN - [..]`
    becomes `-N CHAIN`, a built-in's `:CHAIN POLICY [..]` becomes `-P CHAIN POLICY`; rules are
    printed alike by both."""
    tables: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("*"):
            current = tables.setdefault(line[1:].strip(), [])
        elif current is not None and line.startswith(":"):
            name, policy = line[1:].split()[:2]
            current.append(f"-N {name}" if policy == "-" else f"-P {name} {policy}")
        elif current is not None and line.startswith("-A "):
            current.append(line)
    return tables


def snapshot(binary: str) -> dict[str, list[str]]:
    """Every table of `binary` as `-S` listings, from ONE `<binary>-save` (not one `-S` per
    table: `down` lists all four binaries several times)."""
    if not _listed(binary):
        return {}
    for attempt in range(5):
        proc = subprocess.run([f"{binary}-save"], capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            return {}
        unreadable = [t for t in TABLES if INCOMPATIBLE.format(table=t) in proc.stdout]
        if not unreadable or binary in _always_incompatible:
            break
        # iptables-nft skips such a table (exit 0): read as empty, our chains there would stay
        # and look gone. Seen for seconds while other rules change: read again.
        time.sleep(0.2 * (attempt + 1))
    else:
        _always_incompatible.add(binary)  # a native nft rule there, say: asked once, not each time
        console.log(f"{binary}-save: tables {unreadable} incompatible (use 'nft'); not listed")
    return parse_save(proc.stdout)


_always_incompatible: set[str] = set()


INCOMPATIBLE = "# Table `{table}' is incompatible, use 'nft' tool."
"""What iptables-nft-save prints instead of a table it cannot show (and exits 0)."""


def _to_remove(rules: list[str], is_ours) -> tuple[list[str], list[str]]:
    """The chains `is_ours(name)` accepts, and the rules of other chains jumping to them."""
    names = [line.split()[1] for line in rules if line.startswith("-N ") and is_ours(line.split()[1])]
    jumps = []
    for line in rules:
        parts = shlex.split(line)  # comments are quoted and may contain spaces
        if parts[:1] == ["-A"] and parts[1] not in names and "-j" in parts and parts[parts.index("-j") + 1] in names:
            jumps.append(line)
    return names, jumps


def cleanup_commands(rules: list[str], is_ours) -> list[list[str]]:
    """From `iptables -S` output, the commands removing every chain `is_ours(name)` accepts:
    jumps to it from other chains first, then flush, then delete. Other chains are untouched."""
    names, jumps = _to_remove(rules, is_ours)
    return [["-D", *shlex.split(line)[1:]] for line in jumps] + [["-F", c] for c in names] + [["-X", c] for c in names]


def removal_script(tables: dict[str, list[str]], is_ours) -> str:
    """`cleanup_commands` for every table as ONE `iptables-restore --noflush` input (pure; ""
    if nothing is to go). A jump is deleted by its listed line itself (`-A` -> `-D`): the save
    format is restore's own, quoting included. Tables in `TABLES` order: the security guards
    go after the filter chains that pass packets to them."""
    lines = []
    for table in TABLES:
        names, jumps = _to_remove(tables.get(table, []), is_ours)
        if names:
            lines += [f"*{table}", *("-D" + line[2:] for line in jumps)]
            lines += [f"-F {c}" for c in names] + [f"-X {c}" for c in names] + ["COMMIT"]
    return "\n".join([*lines, ""]) if lines else ""


def ours(name: str) -> bool:
    return name.startswith(PREFIX)


def probe_chain(name: str) -> bool:
    return name.startswith(PROBE_PREFIX)


def kube_chain(name: str) -> bool:
    """A chain our kube-proxy, kubelet or kube-router creates (exact names, or their generated ones)."""
    return (
        name in KUBELET_CHAINS or name in KUBE_PROXY_CHAINS or name.startswith(KUBE_PROXY_GENERATED)
        or kube_router_chain(name)
    )


def kube_router_chain(name: str) -> bool:
    """kube-router's own chains (a subset of `kube_chain`): fixed names (it removes none on exit)
    and KUBE-POD-FW-/KUBE-NWPLCY-<16 base32>, by the very pattern its shims use
    (`kube_router_view`): `down` never deletes a look-alike (KUBE-POD-FW-DECOY) that the shims
    kept kube-router away from, and `up` does not take one for another kube-router."""
    return kube_router_view.kube_router_chain(name)


def remove(is_ours=ours) -> None:
    """One restore per binary (a process per rule made `down` take seconds). A restore that
    fails on one line (a rule gone since the listing, a new jump to a chain) fails its table
    as a whole: then that binary is listed again and cleaned rule by rule, as before."""
    for binary in BINARIES:
        script = removal_script(snapshot(binary), is_ours)
        if not script:
            continue
        proc = subprocess.run([f"{binary}-restore", "-w", "5", "--noflush"], input=script, capture_output=True, text=True, timeout=30)
        if proc.returncode == 0:
            continue
        console.log(f"{binary}: batched removal failed ({proc.stderr.strip()}); removing rule by rule")
        tables = snapshot(binary)
        for table in TABLES:  # not the save's order (security first): the guards go last
            for cmd in cleanup_commands(tables.get(table, []), is_ours):
                _ipt(binary, table, *cmd, check=False)


def present(is_ours=ours) -> list[str]:
    """Chains and rules matching `is_ours`, as `binary -t table: rule` lines."""
    found = []
    for binary in BINARIES:
        tables = snapshot(binary)
        for table in TABLES:
            for line in tables.get(table, []):
                parts = line.split()
                target = parts[parts.index("-j") + 1] if "-j" in parts else ""
                if (parts[:1] == ["-N"] and is_ours(parts[1])) or (parts[:1] == ["-A"] and (is_ours(parts[1]) or is_ours(target))):
                    found.append(f"{binary} -t {table}: {line}")
    return found


def rule_counter(binary: str, table: str, chain: str, comment: str) -> int:
    """Packets counted by THE rule of ours whose comment contains `comment` (several such
    rules: an error, use `drop_counter`, which sums them)."""
    out = _ipt(binary, table, "-L", chain, "-v", "-x", "-n").stdout
    counts = [int(line.split()[0]) for line in out.splitlines()[2:] if comment in line]
    if len(counts) != 1:
        raise RuntimeError(f"{binary} -t {table} {chain}: {len(counts)} rules with comment {comment!r}, not one")
    return counts[0]


def drop_counter(binary: str, table: str, chain: str, comment: str | None = None) -> int:
    """Packets dropped so far by the DROP rule(s) of one of our chains (optionally the one
    whose comment contains `comment`)."""
    out = _ipt(binary, table, "-L", chain, "-v", "-x", "-n").stdout
    total, seen = 0, False
    for line in out.splitlines()[2:]:
        fields = line.split()
        if len(fields) > 2 and fields[2] == "DROP" and (comment is None or comment in line):
            total += int(fields[0])
            seen = True
    if not seen:
        raise RuntimeError(f"{binary} -t {table} {chain}: no DROP rule{' with ' + repr(comment) if comment else ''}")
    return total
