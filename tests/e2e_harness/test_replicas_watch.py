"""e2e test_operator's ReplicasWatch: every spec.replicas value a Deployment took, read from a
`kubectl get --watch` up to the version a fresh read returns."""

import threading

from e2e.test_operator import ReplicasWatch


class FakeKubectl:
    """The watch prints `lines` then stays open (as kubectl's does); a read returns `now`."""

    def __init__(self, lines: list[str], now: str) -> None:
        self.lines, self.now = lines, now

    def argv(self, *args: str) -> list[str]:
        script = "".join(f"echo '{line}'; " for line in self.lines)
        return ["sh", "-c", script + "exec sleep 60"]

    @property
    def api(self) -> "FakeKubectl":  # its reads: kubectl.api.get(...)
        return self

    def get(self, *args: str) -> dict:
        return {"metadata": {"resourceVersion": self.now}}


def values_within(watch: ReplicasWatch, bound: float = 20) -> list[int] | None:
    """`values_until_now()`, or None if it did not return within `bound` (it blocked on a
    line the watch will never print)."""
    result = []
    reader = threading.Thread(target=lambda: result.append(watch.values_until_now()), daemon=True)
    reader.start()
    reader.join(bound)
    return result[0] if result else None


def test_it_reads_the_watch_up_to_the_version_read_now():
    watch = ReplicasWatch(FakeKubectl(["7 3", "8 3", "9 4"], now="9"), "ns", "relay")
    try:
        assert values_within(watch) == [3, 4]
    finally:
        watch.close()


def test_nothing_changed_since_the_last_line_read_returns_at_once():
    """It read the next line before comparing: with no write since (the Deployment unchanged,
    e.g. an operator that made no change when autoscaling was switched off) it waited for an
    event that never comes, until pytest's timeout, instead of returning the values."""
    watch = ReplicasWatch(FakeKubectl(["7 3"], now="7"), "ns", "relay")
    try:
        assert values_within(watch) == [3]
    finally:
        watch.close()
