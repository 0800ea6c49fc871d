"""What kube-router is shown of the machine's firewall, and what it may write back: its own
chains and ipsets only (review findings F23, F24). Pure text-in, text-out filters; the
`kube_router_shim` puts them between kube-router and the real tools.

kube-router v2.1.0 (pkg/utils/iptables.go, pkg/utils/ipset.go, pkg/controllers/netpol) finds
`iptables-save`, `iptables-restore` and `ipset` on its PATH and, on every full sync:
- `iptables-save -t filter`, appends its new chains (`:KUBE-POD-FW-<16 base32>`,
  `:KUBE-NWPLCY-<...>`, named after the sync version, so new each sync) and their rules, drops
  the lines naming its stale chains, and feeds the lot to `iptables-restore --wait -T filter`
  WITHOUT --noflush: the whole filter table is replaced (F24), and its stale chains vanish by
  being left out. It writes rules into its own chains only; its jumps from INPUT/FORWARD/OUTPUT
  (first in each) are `iptables -I` calls of their own, never in the restore.
- `iptables -t filter -S` (go-iptables ListChains) to find its stale chains: every
  KUBE-POD-FW-*/KUBE-NWPLCY-* chain it did not make this sync; it drops each restore line that
  CONTAINS such a name, so a neighbour's chain `KUBE-POD-FW-` would take all its pod rules away.
- `ipset restore -exist` of every set in its map, which is its last `ipset save` of EVERY set
  on the machine plus its own, swapped in through `TMP-<16 base32>` sets (F23); then `ipset
  save` again, and `ipset destroy` of its stale KUBE-SRC-/KUBE-DST- sets.
So: the save and the chain list it sees hold only its own chains (no built-in chain, nothing of anyone else), its
restore becomes a --noflush transaction that flushes and refills its declared chains and
deletes its own stale ones, and its ipset save/restore name only its own sets. Nothing else on
the machine is read back or written, and other programs' counters and rules stay as they are.
"""

KUBE_ROUTER_FIXED_CHAINS = frozenset({"KUBE-ROUTER-INPUT", "KUBE-ROUTER-FORWARD", "KUBE-ROUTER-OUTPUT", "KUBE-NWPLCY-DEFAULT"})
KUBE_ROUTER_GENERATED_CHAIN_PREFIXES = ("KUBE-POD-FW-", "KUBE-NWPLCY-")
"""Then 16 characters of base32 of a sha256 (podFirewallChainName, networkPolicyChainName): a
chain merely starting like kube-router's (KUBE-POD-FW-DECOY) is not its."""
KUBE_ROUTER_SET_PREFIXES = ("KUBE-SRC-", "KUBE-DST-")
KUBE_ROUTER_TMP_SET_PREFIX = "TMP-"
"""Its swap sets: base32 of 10 bytes of sha1 (buildIPSetRestore); they live within one restore."""
BASE32 = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")
"""No `re` here: the shim imports this module on each of kube-router's calls, and `re` (with
enum and functools) is most of a bare interpreter's start-up again."""

IPSET_NAMELESS_IS_ALL = frozenset({"flush", "destroy", "list", "save"})
"""ipset commands that act on EVERY set when given no name."""


class Refused(ValueError):
    """kube-router asked for something outside its own state; the message says what."""


def _hashed(name: str, prefixes: tuple[str, ...]) -> bool:
    """`name` is one of `prefixes` (none a prefix of another) and 16 characters of base32."""
    prefix = next((p for p in prefixes if name.startswith(p)), None)
    return prefix is not None and len(name) == len(prefix) + 16 and BASE32.issuperset(name[len(prefix):])


def kube_router_generated_chain(name: str) -> bool:
    return _hashed(name, KUBE_ROUTER_GENERATED_CHAIN_PREFIXES)


def kube_router_chain(name: str) -> bool:
    return name in KUBE_ROUTER_FIXED_CHAINS or kube_router_generated_chain(name)


def kube_router_named_set(name: str) -> bool:
    """A KUBE-SRC-/KUBE-DST- set (not a TMP- one)."""
    return _hashed(name, KUBE_ROUTER_SET_PREFIXES)


def kube_router_set(name: str) -> bool:
    return kube_router_named_set(name) or _hashed(name, (KUBE_ROUTER_TMP_SET_PREFIX,))


# --- iptables -------------------------------------------------------------------------------


def _rule_chain(line: str) -> str | None:
    """The chain an `-A`/`-I` line (optionally after a `[pkts:bytes]` counter) writes to."""
    parts = line.split()
    if parts and parts[0].startswith("["):
        parts = parts[1:]
    if len(parts) >= 2 and parts[0] in ("-A", "--append", "-I", "--insert"):
        return parts[1]
    return None


def iptables_save_view(save: str) -> str:
    """`iptables-save` output reduced to kube-router's own chains: their declarations and
    rules, inside the table header and COMMIT. Built-in chains and everyone else's are left
    out, so nothing of theirs can come back in kube-router's restore."""
    out = []
    for line in save.splitlines():
        if line.startswith(("*", "COMMIT")):
            out.append(line)
        elif line.startswith(":"):
            if kube_router_chain(line[1:].split()[0]):
                out.append(line)
        elif (chain := _rule_chain(line)) is not None and kube_router_chain(chain):
            out.append(line)
    return "".join(f"{line}\n" for line in out)


def iptables_list_view(listing: str) -> str:
    """`iptables -t filter -S` output (go-iptables ListChains, in cleanupStaleRules) reduced to
    the built-in chains' policies and kube-router's own chains and rules. kube-router takes every
    listed KUBE-POD-FW-*/KUBE-NWPLCY-* chain it did not make as stale and drops each line of its
    restore that CONTAINS a stale name: a neighbour's `KUBE-POD-FW-` (a substring of all its pod
    chains' names) would take every pod's jump with it, on every sync."""
    out = []
    for line in listing.splitlines():
        parts = line.split()
        if line.startswith("-P ") or (line.startswith("-N ") and len(parts) > 1 and kube_router_chain(parts[1])):
            out.append(line)
        elif (chain := _rule_chain(line)) is not None and kube_router_chain(chain):
            out.append(line)
    return "".join(f"{line}\n" for line in out)


def chains_in_save(save: str, table: str = "filter") -> list[str]:
    """The chains an `iptables-save` output declares in `table`."""
    chains, current = [], None
    for line in save.splitlines():
        if line.startswith("*"):
            current = line[1:].strip()
        elif line.startswith(":") and current == table:
            chains.append(line[1:].split()[0])
    return chains


def iptables_restore_transaction(restore: str, existing_chains: list[str]) -> str:
    """kube-router's full-table restore as a `--noflush` transaction on its own chains only.

    `restore`: what kube-router feeds `iptables-restore -T filter`; `existing_chains`: the
    chains of the live filter table. Each declared chain of kube-router's is flushed (a
    `:CHAIN` line does that under --noflush) and refilled with its rules in kube-router's
    order; each generated chain of kube-router's that exists but is no longer declared (the
    previous sync's) is flushed and deleted, as the full restore deleted it by omission. Its
    fixed chains are never deleted here (INPUT/FORWARD/OUTPUT jump to them; `down` removes
    them). Any line for another chain (a built-in one, someone else's) raises Refused.
    """
    tables = [line[1:].strip() for line in restore.splitlines() if line.startswith("*")]
    if tables != ["filter"]:
        raise Refused(f"expected exactly one *filter table in the restore input, got {tables}")
    declared: list[str] = []
    rules: list[str] = []
    for number, line in enumerate(restore.splitlines(), 1):
        text = line.strip()
        if not text or text.startswith("#") or text.startswith("*") or text == "COMMIT":
            continue
        if text.startswith(":"):
            name = text[1:].split()[0]
            if not kube_router_chain(name):
                raise Refused(f"line {number}: declares chain {name}, not kube-router's")
            if name not in declared:
                declared.append(name)
            continue
        chain = _rule_chain(text)
        if chain is None:
            raise Refused(f"line {number}: not a rule append/insert: {text[:80]!r}")
        if not kube_router_chain(chain):
            raise Refused(f"line {number}: writes to chain {chain}, not kube-router's")
        if chain not in declared:
            raise Refused(f"line {number}: writes to chain {chain}, which the input does not declare")
        rules.append(text)
    stale = [c for c in existing_chains if kube_router_generated_chain(c) and c not in declared]
    out = ["*filter"]
    out += [f":{c} - [0:0]" for c in declared + stale]
    out += rules
    out += [f"-X {c}" for c in stale]
    out.append("COMMIT")
    return "".join(f"{line}\n" for line in out)


# --- ipset ----------------------------------------------------------------------------------


def ipset_save_view(save: str) -> str:
    """`ipset save` output reduced to kube-router's KUBE-SRC-/KUBE-DST- sets (its TMP- sets
    are not listed: it never restores them as sets of their own)."""
    out = []
    for line in save.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in ("create", "add") and kube_router_named_set(parts[1]):
            out.append(line)
    return "".join(f"{line}\n" for line in out)


def _ipset_names(words: list[str]) -> tuple[str, list[str]]:
    """(command, the set names it acts on) of an ipset command line; options such as -exist
    may stand anywhere (kube-router writes `add -exist NAME ...`)."""
    words = [w for w in words if not w.startswith("-")]
    command, rest = words[0], words[1:]
    return command, rest[:2] if command in ("swap", "rename") else rest[:1]


def _ipset_refusal(words: list[str]) -> str | None:
    command, names = _ipset_names(words)
    if command in ("version", "help"):
        return None
    if not names or command in ("swap", "rename") and len(names) < 2:
        if command in IPSET_NAMELESS_IS_ALL:
            return f"`{command}` without a set name acts on every set of the machine"
        return f"`{command}` without a set name"
    foreign = [n for n in names if not kube_router_set(n)]
    if foreign:
        return f"`{command}` names {', '.join(foreign)}, not kube-router's"
    return None


def ipset_restore_check(restore: str) -> str:
    """kube-router's `ipset restore` input, unchanged, once every line is known to name only
    its own sets; else Refused (the whole restore is refused rather than half applied)."""
    for number, line in enumerate(restore.splitlines(), 1):
        words = line.split()
        if not words or words[0].startswith("#") or words[0] == "COMMIT":
            continue
        if (why := _ipset_refusal(words)) is not None:
            raise Refused(f"ipset restore line {number}: {why}")
    return restore


def ipset_argv_check(args: list[str]) -> str | None:
    """For `ipset ARGS` other than save/restore: None if it touches only kube-router's sets,
    else why not."""
    if not [a for a in args if not a.startswith("-")]:
        return None  # --version, -h
    return _ipset_refusal(args)
