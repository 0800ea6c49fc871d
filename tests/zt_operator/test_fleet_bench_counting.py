"""The fleet benchmark (e2e/bench_operator.py) must be able to fail: its request rate is
the operator's FlowSchema counter, and a FlowSchema that matched nothing (a renamed
ServiceAccount, a typo, a priority level that does not exist) has no series at all, which
read as 0 requests/s and passed the <= 2 target whatever the operator did."""

from __future__ import annotations

import pytest

from e2e import bench_operator

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
