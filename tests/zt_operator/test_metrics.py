"""The operator's own Prometheus metrics, rendered and served."""

from __future__ import annotations

import asyncio

import aiohttp

from zt_operator import metrics
from tests import ports


def test_reconciliations_are_counted_by_result_and_relays_by_readiness():
    counted = metrics.Metrics()
    counted.record("a/x", "ok", 0.25, True)
    counted.record("a/y", "invalid", 0.5, False)
    counted.record("a/x", "ok", 0.25, None)
    text = counted.render()
    assert 'zt_operator_reconciliations_total{result="ok"} 2' in text
    assert 'zt_operator_reconciliations_total{result="invalid"} 1' in text
    assert 'zt_operator_reconciliations_total{result="error"} 0' in text
    assert "zt_operator_reconcile_seconds_sum 1.000000" in text
    assert "zt_operator_reconcile_seconds_count 3" in text
    assert 'zt_operator_relays{ready="true"} 1' in text and 'zt_operator_relays{ready="false"} 1' in text
    counted.forget("a/y")
    assert 'zt_operator_relays{ready="false"} 0' in counted.render()


def free_port() -> int:
    return ports.unused_port()  # outside the ephemeral range: see tests/ports.py


async def test_metrics_are_served_over_http():
    counted = metrics.Metrics()
    counted.record("a/x", "error", 0.1, False)
    port, ready = free_port(), asyncio.Event()
    task = asyncio.create_task(metrics.serve(counted, "127.0.0.1", port, ready))
    try:
        await asyncio.wait_for(ready.wait(), timeout=5)
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/metrics") as response:
            assert response.status == 200
            assert 'zt_operator_reconciliations_total{result="error"} 1' in await response.text()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_the_readiness_gauge_counts_a_relay_seen_ready_without_a_status_change():
    # After an operator restart the status does not change, but the relay is ready.
    counted = metrics.Metrics()
    counted.record("a/x", "ok", 0.1, True)
    assert 'zt_operator_relays{ready="true"} 1' in counted.render()


def test_api_errors_are_counted_by_reason():
    counted = metrics.Metrics()
    counted.api_error("Timeout")
    counted.api_error("Timeout")
    counted.api_error("TooManyRequests")
    text = counted.render()
    assert 'zt_operator_api_errors_total{reason="Timeout"} 2' in text
    assert 'zt_operator_api_errors_total{reason="TooManyRequests"} 1' in text
