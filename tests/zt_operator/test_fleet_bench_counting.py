"""The fleet benchmark (e2e/bench_operator.py) must be able to fail: its request rate is
the operator's FlowSchema counter, and a FlowSchema that matched nothing (a renamed
ServiceAccount, a typo, a priority level that does not exist) has no series at all, which
read as 0 requests/s and passed the <= 2 target whatever the operator did."""

from __future__ import annotations

import inspect
import math

import pytest

from e2e import bench_operator
from zt_operator import handlers, kube

METRICS = """\
# TYPE apiserver_flowcontrol_dispatched_requests_total counter
apiserver_flowcontrol_dispatched_requests_total{flow_schema="service-accounts",priority_level="workload-low"} 812
apiserver_flowcontrol_dispatched_requests_total{flow_schema="e2e-operator-abc123",priority_level="workload-low"} 40
apiserver_flowcontrol_dispatched_requests_total{flow_schema="e2e-operator-abc123",priority_level="exempt"} 2
"""


class Kubectl:
    def __init__(self, text: str) -> None:
        self.text = text

    def __call__(self, *args, **kwargs):
        return type("Done", (), {"stdout": self.text})()


def test_the_operators_requests_are_its_flow_schemas_only():
    assert bench_operator.operator_requests(Kubectl(METRICS), "e2e-operator-abc123") == 42


def test_a_flow_schema_that_matched_nothing_fails_the_benchmark_instead_of_reading_zero():
    with pytest.raises(AssertionError, match="e2e-operator-zzz"):
        bench_operator.operator_requests(Kubectl(METRICS), "e2e-operator-zzz")


class FailingGets:
    """kubectl whose every ``get`` fails (an API server timing out under thousands of relays)."""
    kubeconfig = "unused"

    def __call__(self, *args, **kwargs):
        return type("Failed", (), {"stdout": "", "returncode": 1})()


def test_the_fleet_deletion_is_not_read_as_done_when_kubectl_get_fails(monkeypatch, capsys):
    """A failed ``kubectl get`` printed nothing, which read as "no relays and no children
    left": the bench reported the fleet deleted at once while garbage collection had barely
    started, and removed its FlowSchema under it."""
    deleted = []
    fake_api = type("Api", (), {"delete_collection_namespaced_custom_object":
                                lambda self, *args, **kwargs: deleted.append(args)})()
    monkeypatch.setattr(bench_operator, "api", lambda kubeconfig: fake_api)
    seen = []

    def wait_for(what, condition, timeout, interval):
        seen.append(condition())
        if not seen[-1]:
            raise TimeoutError(what)
        return seen[-1]

    bench_operator.delete_fleet("ns", FailingGets(), wait_for)

    assert deleted and seen == [False]
    assert "not yet deleted" in capsys.readouterr().out


def test_a_restarted_operators_start_is_not_over_before_its_relist_has_read_every_page():
    """The thousands bench waits for the restarted operator's relist before it measures the
    start. The watches' own LISTs are paged too (handlers.configure: Kopf's chunk_size is
    kube.PAGE_SIZE), so 2000 relays' children take ceil(2000 / PAGE_SIZE) LISTs per kind
    before the relist begins, and the relist as many again: counting the watch's LIST as
    one request ended the wait at the relist's first page."""
    relays = 2000
    pages = math.ceil(relays / kube.PAGE_SIZE)
    assert pages > 1  # else this test shows nothing
    before = {k: 7.0 for k in bench_operator.CHILDREN}

    def after(lists: int) -> dict[str, float]:
        return {k: 7.0 + lists for k in bench_operator.CHILDREN}

    assert not bench_operator.restart_relisted(before, after(pages), relays)  # the watches' LISTs only
    assert not bench_operator.restart_relisted(before, after(pages + 1), relays)  # and the relist's first page
    assert not bench_operator.restart_relisted(before, after(2 * pages - 1), relays)
    assert bench_operator.restart_relisted(before, after(2 * pages), relays)
    # One kind behind is not over.
    assert not bench_operator.restart_relisted(before, {**after(2 * pages), "services": 7.0 + pages}, relays)


def test_the_operators_watches_list_in_the_pages_the_bench_counts():
    """The page count above holds only while the operator sets Kopf's chunk_size to PAGE_SIZE."""
    source = inspect.getsource(handlers.configure)
    assert "settings.watching.chunk_size = kube.PAGE_SIZE" in source
