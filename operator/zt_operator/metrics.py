"""The operator's own Prometheus metrics: reconciliations by result and their duration.

``Metrics`` only counts and renders text (pure); ``serve`` exposes it over HTTP on its own
port, because Kopf's liveness server owns the health port and serves only /healthz.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter

from aiohttp import web

RESULTS = ("ok", "invalid", "conflict", "error")


class Metrics:
    """Counters shared by Kopf's handler threads (hence the lock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._results: Counter[str] = Counter({result: 0 for result in RESULTS})
        self._seconds = 0.0
        self._ready: dict[str, bool] = {}
        self._api_errors: Counter[str] = Counter()
        self._list_restarts: Counter[tuple[str, str]] = Counter()

    def record(self, relay: str, result: str, seconds: float, ready: bool | None) -> None:
        """Count one reconciliation of ``relay`` (namespace/name) taking ``seconds``."""
        with self._lock:
            self._results[result] += 1
            self._seconds += seconds
            if ready is not None:
                self._ready[relay] = ready

    def api_error(self, reason: str) -> None:
        """Count one failed API call by ``reason`` (Timeout, Unreachable, TooManyRequests, ...)."""
        with self._lock:
            self._api_errors[reason] += 1

    def list_restart(self, kind: str, reason: str) -> None:
        """Count one restart of a paginated LIST of child ``kind`` (``Expired``: its continue
        token expired mid-list, a compaction) that then started over from its first page."""
        with self._lock:
            self._list_restarts[kind, reason] += 1

    def forget(self, relay: str) -> None:
        with self._lock:
            self._ready.pop(relay, None)

    def render(self) -> str:
        """Prometheus text exposition format 0.0.4."""
        with self._lock:
            total = sum(self._results.values())
            lines = [
                "# HELP zt_operator_reconciliations_total Reconciliation passes by result.",
                "# TYPE zt_operator_reconciliations_total counter",
                *(f'zt_operator_reconciliations_total{{result="{r}"}} {n}' for r, n in sorted(self._results.items())),
                "# HELP zt_operator_reconcile_seconds Time spent reconciling.",
                "# TYPE zt_operator_reconcile_seconds summary",
                f"zt_operator_reconcile_seconds_sum {self._seconds:.6f}",
                f"zt_operator_reconcile_seconds_count {total}",
                "# HELP zt_operator_relays ZeroTierRelays handled, by readiness.",
                "# TYPE zt_operator_relays gauge",
                f'zt_operator_relays{{ready="true"}} {sum(self._ready.values())}',
                f'zt_operator_relays{{ready="false"}} {len(self._ready) - sum(self._ready.values())}',
                "# HELP zt_operator_api_errors_total Failed calls to the API server, by reason.",
                "# TYPE zt_operator_api_errors_total counter",
                *(f'zt_operator_api_errors_total{{reason="{r}"}} {n}' for r, n in sorted(self._api_errors.items())),
                "# HELP zt_operator_list_restarts_total Paginated LISTs started over from their first page, by kind and reason.",
                "# TYPE zt_operator_list_restarts_total counter",
                *(f'zt_operator_list_restarts_total{{kind="{k}",reason="{r}"}} {n}'
                  for (k, r), n in sorted(self._list_restarts.items())),
            ]
        return "\n".join(lines) + "\n"


async def serve(metrics: Metrics, host: str, port: int, ready: asyncio.Event | None = None) -> None:
    """Serve ``/metrics`` until cancelled; ``ready`` is set once listening (for tests)."""
    async def handle(_: web.Request) -> web.Response:
        return web.Response(text=metrics.render(), content_type="text/plain", charset="utf-8")

    app = web.Application()
    app.router.add_get("/metrics", handle)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        if ready is not None:
            ready.set()
        await asyncio.Event().wait()
    finally:
        await asyncio.shield(runner.cleanup())
