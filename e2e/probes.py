"""Per-test packet counters ("probes"): proof that a test's OWN packets were dropped by a guard
of the harness, which holds while other sessions share the cluster.

The guards' DROP counters (`firewall`) and the sink's are the whole machine's: any concurrent
test's stray packet moves them, so `after - before >= N` could be met by another test's drops.
A probe counts only what the test alone sends (its own source - a test host's or pod's
address - or destination - its escape's own /24 and /64), for the test's duration. A `Gate`
is two probes around a guard:

  reached  first in the guard's table and hook, before the guard's jump: every such packet
           the guard is about to judge
  passed   first in the table the packet meets next (mangle POSTROUTING after security
           FORWARD or OUTPUT, mangle PREROUTING after raw PREROUTING): every one it let through

N reached, 0 passed, and the guard's jump behind nothing but rules of ours in its hook: the
guard dropped them. In the sink namespace a probe before its DROP counts what got there.

A probe is a jump to an empty chain of its own, `ZTR-E2E-PROBE-<8 hex>` (it counts and
returns): `down` removes a killed run's leftovers with the harness's chains (`firewall.ours`),
and `firewall.first_in_hook` passes over it, so no concurrent `up` moves a guard above it or
takes it for damage. None goes into the filter table, which kube-router rewrites.
"""

import subprocess
import time
import uuid
from dataclasses import dataclass, field

from e2e.cluster import firewall, network
from e2e.cluster.kubectl import wait_for


def new_chain() -> str:
    return f"{firewall.PROBE_PREFIX}{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class Probe:
    binary: str
    table: str
    hook: str
    match: tuple[str, ...]
    chain: str
    first: bool = False
    """Inserted first in its hook (before a guard's jump), else appended."""
    netns: str | None = None

    def install_script(self) -> str:
        """One iptables-restore transaction: the chain and its jump appear together (a lone
        `iptables -N` then `-I` may fail to find a user chain it just made while other rules
        change: iptables-nft then calls the chain "incompatible")."""
        place = f"-I {self.hook} 1" if self.first else f"-A {self.hook}"
        return "\n".join([f"*{self.table}", f":{self.chain} - [0:0]", f"{place} {self._jump()}", "COMMIT", ""])

    def remove_script(self) -> str:
        return "\n".join([f"*{self.table}", f"-D {self.hook} {self._jump()}", f"-X {self.chain}", "COMMIT", ""])

    def _jump(self) -> str:
        # iptables-restore reads double quotes only (shlex.quote's 'a b' is two bad arguments).
        return " ".join([*map(firewall._restore_arg, self.match), "-j", self.chain])


@dataclass(frozen=True)
class Guard:
    """Where a guard of ours drops: its chain, jumped to from `table` `hook`; `next_table`
    `next_hook` is where a packet it let through goes next."""
    binary: str
    table: str
    hook: str
    chain: str
    next_table: str
    next_hook: str


FORWARD = Guard("iptables", "security", "FORWARD", firewall.PREFIX + "FORWARD", "mangle", "POSTROUTING")
IN6 = Guard("ip6tables", "raw", "PREROUTING", firewall.PREFIX + "IN6", "mangle", "PREROUTING")


def output(binary: str) -> Guard:
    """The harness's own processes' guard (cgroup `cgroups.HOST`), IPv4 or IPv6."""
    return Guard(binary, "security", "OUTPUT", firewall.PREFIX + "OUTPUT", "mangle", "POSTROUTING")


LISTING_RACE = "is incompatible, use 'nft' tool"
"""What iptables-nft 1.8.9 sometimes says of a chain of ours it lists while other sessions'
and kube-proxy's rules change (seen on this machine for seconds at a time, under load; the
same chain lists fine a moment later, and iptables-save shows it): read again, a few times."""


def _run(probe_or_guard, table: str, *args: str, netns: str | None = None) -> str:
    """A listing (read only: asked again after `LISTING_RACE`)."""
    argv = [probe_or_guard.binary, "-w", "5", "-t", table, *args]
    for attempt in range(5):
        proc = network.sh(*argv, check=False, netns=netns)
        if proc.returncode == 0 or LISTING_RACE not in proc.stderr:
            break
        time.sleep(0.2 * (attempt + 1))
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc.stdout


def _restore(probe: Probe, script: str) -> subprocess.CompletedProcess:
    argv = [f"{probe.binary}-restore", "-w", "5", "--noflush"]
    return subprocess.run(["ip", "netns", "exec", probe.netns, *argv] if probe.netns else argv,
                          input=script, capture_output=True, text=True, timeout=30)


def packets(listing: str, chain: str) -> int:
    """From `iptables -L HOOK -v -x -n`, the packets the one rule jumping to `chain` counted."""
    counts = [int(f[0]) for f in (line.split() for line in listing.splitlines()[2:]) if len(f) > 2 and f[2] == chain]
    if len(counts) != 1:
        raise RuntimeError(f"{len(counts)} rules jump to {chain}, not one")
    return counts[0]


def guard_first(guard: Guard) -> bool:
    """The guard's jump comes before every rule in its hook that is not ours (a probe, or
    another guard's jump)."""
    for rule in _run(guard, guard.table, "-S", guard.hook).splitlines()[1:]:
        target = rule.split()[-1]
        if target == guard.chain:
            return True
        if not target.startswith(firewall.PREFIX):
            return False
    return False


@dataclass
class Gate:
    guard: Guard
    reached: Probe
    passed: Probe
    probes: "Probes"

    def counts(self) -> tuple[int, int]:
        return self.probes.packets(self.reached), self.probes.packets(self.passed)

    def dropped(self, at_least: int, timeout: float = 5) -> int:
        """Waits until `at_least` of the test's packets reached the guard (a packet from
        another namespace is counted a moment after its sender returns); then none may have
        got past it, and the guard must come first in its hook. Returns how many reached it."""
        what = f"{self.guard.binary} {self.guard.table} {self.guard.hook} -> {self.guard.chain}"
        reached = self.probes.wait_for_packets(self.reached, at_least, timeout)
        passed = self.probes.packets(self.passed)
        problems = []
        if reached < at_least:
            problems.append(f"only {reached} of at least {at_least} packets reached {what}")
        if passed:
            problems.append(f"{passed} got past it (counted in {self.passed.table} {self.passed.hook})")
        if not guard_first(self.guard):
            problems.append(f"its jump is not first in {self.guard.table} {self.guard.hook} (a rule not ours comes before it)")
        if problems:
            raise AssertionError("; ".join(problems))
        return reached


ADDRESSES = {"-s", "--source", "-d", "--destination"}


@dataclass
class Probes:
    """The probes of one test, removed on `close` (a `with` block, the `probes` fixture)."""
    added: list[Probe] = field(default_factory=list)

    def count(self, binary: str, table: str, hook: str, *match: str, first: bool = False, netns: str | None = None) -> Probe:
        if not set(match) & ADDRESSES:
            # Without one it counts every session's packets: a machine-wide counter, which the
            # alone finder (e2e/test_ci_parts.py) lets a probing test share the cluster with.
            raise ValueError(f"a probe names an address of the test's own (-s/-d): {match}")
        probe = Probe(binary, table, hook, tuple(match), new_chain(), first, netns)
        proc = _restore(probe, probe.install_script())
        if proc.returncode != 0:
            raise RuntimeError(f"{binary}-restore --noflush: {proc.stderr.strip()}\n{probe.install_script()}")
        self.added.append(probe)
        return probe

    def gate(self, guard: Guard, *match: str) -> Gate:
        """`match` must select only the test's own packets and hold at both places (no `-i`
        where the next hook is POSTROUTING, no `-o` in PREROUTING)."""
        reached = self.count(guard.binary, guard.table, guard.hook, *match, first=True)
        # First there too: a rule earlier in mangle that ends the table (a neighbour's ACCEPT)
        # would hide a packet the guard let through. Nobody checks the order in mangle.
        passed = self.count(guard.binary, guard.next_table, guard.next_hook, *match, first=True)
        return Gate(guard, reached, passed, self)

    def packets(self, probe: Probe) -> int:
        return packets(_run(probe, probe.table, "-L", probe.hook, "-v", "-x", "-n", netns=probe.netns), probe.chain)

    def wait_for_packets(self, probe: Probe, at_least: int, timeout: float = 5) -> int:
        """`probe`'s count once it is `at_least` (a packet from another namespace is counted
        a moment after its sender returns), or after `timeout` seconds, whatever it is then."""
        try:
            return wait_for(f"{at_least} packets at {probe.chain}", lambda: self._enough(probe, at_least), timeout, 0.1)
        except TimeoutError:
            return self.packets(probe)

    def _enough(self, probe: Probe, at_least: int) -> int | None:
        n = self.packets(probe)
        return n if n >= max(at_least, 1) else None

    def close(self) -> None:
        failed = [probe for probe in reversed(self.added) if _restore(probe, probe.remove_script()).returncode != 0]
        self.added.clear()
        if failed:
            raise RuntimeError(f"probes not removed (`down` removes them): {[p.chain for p in failed]}")

    def __enter__(self) -> "Probes":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
