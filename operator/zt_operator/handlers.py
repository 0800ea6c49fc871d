"""Kopf wiring: watches in, reconcile requests out.

Run with ``kopf run -m zt_operator.handlers`` (or the ``zt-relay-operator`` script, which
adds the liveness endpoint and standalone mode).

Only ``@kopf.on.event`` handlers: they need no finalizer and write nothing to the relay.
Relays need no finalizer because their children carry ownerReferences (garbage collection
deletes them); a finalizer would leave a relay Terminating forever once the operator is
gone (``helm uninstall`` deletes the operator before the relay). The finalizer that older
versions added is removed wherever it is seen.

- a relay's event stores its latest body and requests a reconcile;
- a child's event (Deployment, Service, PDB, HPA, NetworkPolicy labelled as ours) updates
  the child cache and requests a reconcile of its owner: repairs and status follow at once;
- a slow periodic resync (``ZT_OPERATOR_RESYNC_SECONDS``, 300) catches anything missed:
  each relay is reconciled once per interval, and each child kind is LISTed once per
  namespace (``relist_children``), which finds children deleted while a watch was away.

``runner.Runner`` serialises the reconciles of each relay and retries failures with backoff.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import kopf

from zt_operator import GROUP, KIND, OLD_FINALIZER, PLURAL, VERSION, builders, children, crd, kube, metrics, plan, reconcile, runner, settings

SETTINGS = settings.from_environment(os.environ)
METRICS = metrics.Metrics()
CHILD_LABELS = {"app.kubernetes.io/managed-by": builders.MANAGED_BY}



def verify_seconds(settings: settings.OperatorSettings) -> float:
    """How long a confirmed child is trusted: the relist confirms every child once per
    resync interval; past two missed relists (the API failing), the passes GET them."""
    return 2.5 * settings.resync_seconds


CACHE = children.ChildCache(verify_seconds=verify_seconds(SETTINGS))
ACCESS = children.Access(CACHE)
_relays: dict[str, dict[str, Any]] = {}
_applied_generation: dict[str, tuple[str, int]] = {}
"""relay key -> (uid, highest generation applied without error)"""
_tasks: list[asyncio.Task] = []
_rechecks: dict[str, asyncio.TimerHandle] = {}
"""relay key -> its one pending recheck (the latest pass's)"""
_runner: runner.Runner | None = None
log = logging.getLogger("zt_operator")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _key(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


GONE = "gone"
"""What ``_reconcile_blocking`` returns as its recheck for a relay that no longer exists."""


def _reconcile_blocking(key: str, body: dict[str, Any]) -> tuple[bool, dict[str, Any], float | str | None]:
    """One pass of ``body`` in a worker thread: children, status, events. Returns whether
    no call failed, the status patch written, and when to look again (or None: never while
    the API server is out; ``GONE``: never, the relay no longer exists)."""
    started = time.monotonic()
    meta = body["metadata"]
    uid, applied = _applied_generation.get(key, (None, None))
    if uid == meta.get("uid") and plan.is_stale(body, applied):
        return True, {}, None  # a newer generation was applied already; its watch event follows
    outcome = reconcile.run(body, SETTINGS, _now, ACCESS)
    if outcome.gone:
        log.info("%s: the relay %s no longer exists (deleted while its watch was away); forgetting it",
                 key, meta.get("uid"))
        return True, {}, GONE
    errors = list(outcome.errors)
    written: dict[str, Any] = {}
    status_refused = False
    if outcome.status_patch:
        try:
            kube.patch_relay_status(meta["namespace"], meta["name"], outcome.status_patch)
            written = outcome.status_patch
        except kube.KubeError as exc:
            if exc.status == 404:  # gone, with nothing to create that would have found out
                log.info("%s: the relay no longer exists (its status write: %s); forgetting it", key, exc)
                return True, {}, GONE
            errors.append(exc)
            status_refused = True
    for kind, reason, message in outcome.events:
        (log.info if kind == "Normal" else log.warning)("%s %s: %s", key, reason, message)
        try:
            kube.post_event(body, kind, reason, message, _now())
        except kube.KubeError as exc:
            errors.append(exc)
    for exc in errors:
        METRICS.api_error(exc.reason)
        log.warning("%s: %s (%s); retrying with backoff", key, exc, exc.reason)
    if not outcome.errors and meta.get("generation") is not None:
        _applied_generation[key] = (meta["uid"], max(meta["generation"], applied if uid == meta["uid"] and applied else 0))
    METRICS.record(key, "error" if errors and outcome.result == "ok" else outcome.result,
                   time.monotonic() - started, outcome.ready)
    # A failed pass sets no recheck while the API server is out (the runner's backoff
    # retries it; a recheck would cut that to 10 s for as long as the outage lasts). One
    # whose calls were answered (a denying webhook, a conflict) keeps it: such a failure
    # may last for good, and a short relay's pod reasons would refresh every 60 s at best.
    # Not one whose status write failed: the refresh can't be written, and as the stored
    # status never changes, each pass would post the same transitions' Events again.
    outage = any(exc.reason in kube.UNANSWERED for exc in errors)
    return not errors, written, None if outage or status_refused else outcome.recheck_seconds


async def _work(key: str) -> bool:
    body = _relays.get(key)
    if body is None:
        return True
    ok, written, recheck = await asyncio.to_thread(_reconcile_blocking, key, copy.deepcopy(body))
    stored = _relays.get(key)
    if recheck == GONE:
        if stored is not None and stored["metadata"].get("uid") == body["metadata"].get("uid"):
            _forget(key)  # as its DELETED event would have (another uid: its own event came)
        return True
    if key not in _relays:
        # Deleted while the pass ran: its DELETED event forgot the relay before the pass
        # recorded it, so the gauge would count a relay that is gone until the operator restarts.
        METRICS.forget(key)
        _applied_generation.pop(key, None)
    # One pending recheck per relay, the latest pass's: a timer per pass would renew itself
    # while the relay is short, so every child event's pass added a chain of passes.
    pending = _rechecks.pop(key, None)
    if pending is not None:
        pending.cancel()
    if recheck is not None and _runner is not None and key in _relays:
        _rechecks[key] = asyncio.get_running_loop().call_later(recheck, _recheck, key)
    if written and stored is not None and stored["metadata"].get("uid") == body["metadata"].get("uid"):
        # The status this pass wrote is the relay's status now (its watch event follows):
        # the next pass compares with it and does not write it again.
        status = dict(stored.get("status") or {})
        for field, value in written.items():
            if value is None:
                status.pop(field, None)
            else:
                status[field] = value
        stored["status"] = status
    return ok


def _recheck(key: str) -> None:
    _rechecks.pop(key, None)
    _request_if_known(key)


def _forget_recheck(key: str) -> None:
    pending = _rechecks.pop(key, None)
    if pending is not None:
        pending.cancel()


def _forget(key: str) -> None:
    """The relay is gone: nothing of it is kept, and its worker ends after its pass."""
    _relays.pop(key, None)
    _applied_generation.pop(key, None)
    _forget_recheck(key)
    METRICS.forget(key)
    if _runner is not None:
        _runner.forget(key)


def _request_if_known(key: str) -> None:
    if key in _relays and _runner is not None:
        _runner.request(key)


async def _resync(interval: float) -> None:
    """Request every known relay once per ``interval``, spread over it (no bursts)."""
    while True:
        keys = list(_relays) or [None]
        for key in keys:
            await asyncio.sleep(interval / len(keys))
            if key is not None and key in _relays and _runner is not None:
                _runner.request(key)


CLUSTER_LIST_RETRY_SECONDS = 600.0
"""How long a relist lists each namespace alone after the API server refused a LIST in every
namespace (403: an operator limited to its namespaces holds Roles only), before asking again
(a cluster-wide operator's denial may pass: its ClusterRole replaced by an upgrade)."""
_cluster_lists_refused_at: float | None = None


def _count_restart(kind: str, where: str) -> Callable[[str], None]:
    """What ``kube.list_children`` calls when a LIST starts over (its token expired)."""
    def restarted(reason: str) -> None:
        METRICS.list_restart(kind, reason)
        log.info("relist of %ss%s: the list expired before its last page (%s); starting over", kind, where, reason)
    return restarted


def _list_children(kind: str, namespaces: list[str], selector: str) -> dict[str, list[dict[str, Any]]]:
    """The ``kind`` children of ``namespaces`` by namespace: one LIST in every namespace
    when they are several and that is allowed, else one per namespace. A namespace whose
    LIST failed is missing from the answer (counted and logged)."""
    global _cluster_lists_refused_at
    refused = _cluster_lists_refused_at
    if len(namespaces) > 1 and (refused is None or time.monotonic() - refused >= CLUSTER_LIST_RETRY_SECONDS):
        try:
            everywhere = kube.list_children(kind, None, selector, restarted=_count_restart(kind, ""))
        except kube.KubeError as exc:
            if exc.status != 403:
                METRICS.api_error(exc.reason)
                log.warning("relist of %ss: %s (%s)", kind, exc, exc.reason)
                return {}
            _cluster_lists_refused_at = time.monotonic()  # expected with --namespace and Roles: not an error
            log.info("listing %ss in every namespace is not allowed; listing each namespace instead (asking again in %.0f s)",
                     kind, CLUSTER_LIST_RETRY_SECONDS)
        else:
            _cluster_lists_refused_at = None
            found: dict[str, list[dict[str, Any]]] = {namespace: [] for namespace in namespaces}
            for obj in everywhere:
                found.get(obj["metadata"].get("namespace"), []).append(obj)
            return found
    found = {}
    for namespace in namespaces:
        try:
            found[namespace] = kube.list_children(kind, namespace, selector,
                                                   restarted=_count_restart(kind, f" in {namespace}"))
        except kube.KubeError as exc:
            METRICS.api_error(exc.reason)
            log.warning("relist of %ss in %s: %s (%s)", kind, namespace, exc, exc.reason)
    return found


def relist_children() -> set[str]:
    """LIST each child kind in the namespaces that have relays (one LIST per kind when the
    operator watches every namespace, so the cost does not grow with the namespaces), bring
    the cache in line with it, and return the keys of relays whose children were gone or
    changed without a watch event (to reconcile). A failed LIST is counted and skipped: the children stay cached,
    unconfirmed, so the relays' next passes read them one by one."""
    selector = ",".join(f"{k}={v}" for k, v in CHILD_LABELS.items())
    gone: set[str] = set()
    namespaces = sorted({key.partition("/")[0] for key in list(_relays)})
    for kind in reconcile.CHILD_KINDS:
        mark = CACHE.mark()
        for namespace, listed in _list_children(kind, namespaces, selector).items():
            gone |= {_key(namespace, name) for name in CACHE.sync(kind, namespace, listed, mark)}
    return gone


async def _relist_now() -> None:
    for key in await asyncio.to_thread(relist_children):
        _request_if_known(key)


async def _relist(interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        await _relist_now()


RELIST_DELAY = 5.0
"""Seconds after the last relist event (type None) of any watch before the operator LISTs
the children itself (Kopf's listing of a kind comes as a burst of such events)."""
_relist_timer: asyncio.TimerHandle | None = None
_relisting: set[asyncio.Task] = set()


def _relist_soon() -> None:
    """A watch restarted with a LIST (the operator's start, a 410 after an API outage): a
    child deleted before that LIST sent no DELETED event, and the relay's own relist may
    have come before the deletion. So LIST every child kind once the relisting stops."""
    global _relist_timer
    if _relist_timer is not None:
        _relist_timer.cancel()
    loop = asyncio.get_running_loop()

    def start() -> None:
        task = loop.create_task(_relist_now())
        _relisting.add(task)  # a reference until it ends (the loop keeps only weak ones)
        task.add_done_callback(_relisting.discard)

    _relist_timer = loop.call_later(RELIST_DELAY, start)


CRD_RETRY_SECONDS = 5.0
"""First delay before the CRD upgrade is tried again after a failure (doubling, at most 60 s)."""


async def _ensure_crd(logger: logging.Logger) -> bool:
    try:
        logger.info("%s", await asyncio.to_thread(crd.ensure, kube.get_crd, kube.apply_crd))
        return True
    except kube.KubeError as exc:
        METRICS.api_error(exc.reason)
        logger.warning("could not bring the ZeroTierRelay CRD up to date: %s; retrying", exc)
        return False


async def _ensure_crd_until_done(logger: logging.Logger) -> None:
    delay = CRD_RETRY_SECONDS
    while True:
        await asyncio.sleep(delay)
        if await _ensure_crd(logger):
            return
        delay = min(2 * delay, 60.0)


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, logger: logging.Logger, **_: Any) -> None:
    global _runner
    logging.getLogger().setLevel(SETTINGS.log_level)
    # Kopf's bookkeeping would go under our own group; with event handlers only it writes none.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration")
    # Watches end server-side every few minutes and reconnect; a client timeout above
    # that catches connections that die silently.
    settings.watching.server_timeout = 240
    settings.watching.client_timeout = 270
    # A down API server's address may drop packets rather than refuse them: a connect
    # attempt must give up soon, so that the next one (a new SYN) reaches the API within
    # seconds of its return (a 30 s timeout here kept the watches away 27 s after it).
    settings.watching.connect_timeout = 5
    settings.networking.connect_timeout = 5
    # The watches' own LISTs (at start, and when a watch must relist) in pages like the
    # relist's: Kopf's default is one answer with every object of the kind (5,000 relays'
    # Deployments in one response of megabytes). Kopf does not restart a list whose continue
    # token expired (410): the watcher fails and Kopf stops the operator (the pod restarts
    # it; checked in Kopf 1.45.2's orchestrator). It fetches the pages back to back, and a
    # token lives until a compaction passes it (5 minutes or more).
    settings.watching.chunk_size = kube.PAGE_SIZE
    # Children are selected by label on the server: the operator never lists or holds
    # anybody else's Deployments and Services.
    selector = ",".join(f"{k}={v}" for k, v in CHILD_LABELS.items())
    for group, version, plural, _kind in CHILD_RESOURCES:
        settings.watching.label_selectors[group, version, plural] = selector
    # Kopf's own errors become warnings in the log, not Events: the operator posts its own.
    settings.posting.level = logging.WARNING
    # While the API server is down, Kopf's requests retry with these delays and only then
    # fail (which would end the operator): cover a 5-minute outage (with the connect
    # timeouts), and retry often enough to be back within 10 s of the API's return.
    settings.networking.error_backoffs = (1, 2, 3) + (5,) * 30
    await asyncio.to_thread(kube.login)
    if not await _ensure_crd(logger):
        # The relays still get reconciled with the schema there is; the CRD is retried (an
        # operator started mid-outage must not leave the old schema pruning new fields).
        _tasks.append(asyncio.create_task(_ensure_crd_until_done(logger)))
    _runner = runner.Runner(_work)
    _tasks.append(asyncio.create_task(_resync(SETTINGS.resync_seconds)))
    _tasks.append(asyncio.create_task(_relist(SETTINGS.resync_seconds)))
    if SETTINGS.metrics_listen.lower() != "off":
        host, _, port = SETTINGS.metrics_listen.rpartition(":")
        _tasks.append(asyncio.create_task(metrics.serve(METRICS, host.strip("[]"), int(port))))
        logger.info("operator metrics on http://%s/metrics", SETTINGS.metrics_listen)


@kopf.on.cleanup()
async def stop(**_: Any) -> None:
    for task in _tasks:
        task.cancel()
    await asyncio.gather(*_tasks, return_exceptions=True)
    if _runner is not None:
        await _runner.close()


@kopf.on.event(GROUP, VERSION, PLURAL)
async def relay_event(type: str | None, body: kopf.Body, logger: logging.Logger, **_: Any) -> None:
    meta = body.get("metadata", {})
    key = _key(meta["namespace"], meta["name"])
    finalizers = list(meta.get("finalizers") or [])
    if OLD_FINALIZER in finalizers:
        try:
            await asyncio.to_thread(kube.remove_finalizer, meta["namespace"], meta["name"], finalizers, OLD_FINALIZER)
            logger.info("removed the finalizer %s (ownerReferences delete the children)", OLD_FINALIZER)
        except kube.KubeError as exc:
            METRICS.api_error(exc.reason)
            logger.warning("could not remove the finalizer %s: %s", OLD_FINALIZER, exc)
    if type == "DELETED" or meta.get("deletionTimestamp"):
        _forget(key)
        return
    if type is None:
        # A (re)list of the relays: after an outage, a child deleted meanwhile sent no
        # DELETED event, so the cached copies of this relay's children can't be trusted.
        for kind in reconcile.CHILD_KINDS:
            CACHE.drop(kind, meta["namespace"], meta["name"])
        _relist_soon()
    _relays[key] = copy.deepcopy(dict(body))
    if _runner is not None:
        _runner.request(key)


def _child_event(kind: str):
    async def handler(type: str | None, body: kopf.Body, **_: Any) -> None:
        obj = copy.deepcopy(dict(body))
        meta = obj.get("metadata", {})
        if type == "DELETED":
            CACHE.drop(kind, meta["namespace"], meta["name"])
        else:
            CACHE.put(kind, obj)
        if type is None:
            _relist_soon()
        for ref in meta.get("ownerReferences") or []:
            if ref.get("kind") == KIND and ref.get("controller"):
                key = _key(meta["namespace"], ref["name"])
                if key in _relays and _runner is not None:
                    _runner.request(key)
    handler.__name__ = f"{kind.lower()}_event"
    return handler


CHILD_RESOURCES = (
    ("apps", "v1", "deployments", "Deployment"),
    ("", "v1", "services", "Service"),
    ("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget"),
    ("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler"),
    ("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy"),
)
for _group, _version, _plural, _kind in CHILD_RESOURCES:
    kopf.on.event(_group, _version, _plural, labels=CHILD_LABELS, id=f"{_kind.lower()}-event")(_child_event(_kind))
