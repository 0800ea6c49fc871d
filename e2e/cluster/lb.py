"""LoadBalancer stand-in: a TEST controller giving `type: LoadBalancer` Services an address.

There is no cloud here, so nothing fills `status.loadBalancer.ingress`. This controller
(like MetalLB's address allocator, minus any announcing) hands out addresses from a pool
and takes them back; kube-proxy then programs the address, and the host routes test-host
traffic to it. Real clusters use their cloud's controller; nothing in the project depends
on this.

What it touches, so that it can run beside a real load-balancer controller:
- Services of its class (`spec.loadBalancerClass: LB_CLASS`); and, only on the harness's
  own cluster where nothing else allocates (`claim_unclassed`), Services without a class.
- It records each address it assigns in an annotation (`ANNOTATION`), and who assigned it
  (`OWNER_ANNOTATION`: `LOCAL_OWNER` on the harness's cluster, a per-session id for a stand-in
  thread on a shared cluster). It changes or clears an ingress only if it is empty or exactly
  the one it recorded itself: an ingress written by anyone else (a cloud controller, another
  test session's stand-in) is never overwritten or cleared.
- When it stops, it gives back every address it assigned (clears those ingresses), and only
  those: another session's Services keep theirs.
`spec.loadBalancerIP` (deprecated upstream, handy in tests) is honoured when in the pool.

Run by `up` as a host process (`python -m e2e.cluster.lb --kubeconfig PATH`), or in a thread
with `run(..., stop=event)` for other backends (there with claim_unclassed=False).
"""

import argparse
import ipaddress
import logging
import signal
import threading
from collections.abc import Iterable

logger = logging.getLogger("zt-e2e-lb")

Key = tuple[str, str]
LB_CLASS = "e2e.zt-relay.test/lb-standin"
ANNOTATION = "e2e.zt-relay.test/lb-standin-address"
OWNER_ANNOTATION = "e2e.zt-relay.test/lb-standin-owner"
LOCAL_OWNER = "local-cluster"
"""The owner of the harness's own stand-in (one per local cluster, restarts included)."""


def _ingress_ips(svc: dict) -> list[str]:
    ingress = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    return [i.get("ip") or i.get("hostname") or "" for i in ingress]


def _mine(svc: dict, owner: str) -> str | None:
    """The address this stand-in (`owner`) assigned, if the Service's ingress is still exactly that."""
    annotations = (svc.get("metadata") or {}).get("annotations") or {}
    recorded = annotations.get(ANNOTATION)
    if annotations.get(OWNER_ANNOTATION) != owner:
        return None
    return recorded if recorded and _ingress_ips(svc) == [recorded] else None


def _key(svc: dict) -> Key:
    return svc["metadata"]["namespace"], svc["metadata"]["name"]


def plan(
    services: Iterable[dict], pool: list[str], claim_unclassed: bool = True, owner: str = LOCAL_OWNER
) -> dict[Key, str | None]:
    """Which Services get an address (str) or give theirs back (None). Pure.

    Older Services keep their addresses first, so a conflict (two Services claiming one
    address) is resolved in favour of the older. Ingresses not assigned by this stand-in
    are left alone, and their pool addresses count as taken."""
    in_pool = set(pool)
    ordered = sorted(services, key=lambda s: (s["metadata"].get("creationTimestamp") or "", *_key(s)))
    taken = {ip for s in ordered if not _mine(s, owner) for ip in _ingress_ips(s) if ip in in_pool}
    wanting: list[tuple[Key, str | None]] = []
    changes: dict[Key, str | None] = {}
    for svc in ordered:
        spec = svc.get("spec") or {}
        mine, ingress = _mine(svc, owner), _ingress_ips(svc)
        cls = spec.get("loadBalancerClass")
        served = spec.get("type") == "LoadBalancer" and (cls == LB_CLASS or (cls is None and claim_unclassed))
        if not served:
            if mine:
                changes[_key(svc)] = None  # no longer ours to serve: give the address back
            continue
        if ingress and not mine:
            continue  # someone else's ingress
        requested = spec.get("loadBalancerIP") or None
        if mine and mine in in_pool and mine not in taken and requested in (None, mine):
            taken.add(mine)
            continue
        wanting.append((_key(svc), requested))
    free = [ip for ip in pool if ip not in taken]
    for key, requested in wanting:
        if requested is not None:
            if requested in free:
                free.remove(requested)
                changes[key] = requested
            else:
                logger.warning("%s/%s: loadBalancerIP %s is not free in the pool", *key, requested)
            continue
        if not free:
            logger.warning("%s/%s: LB pool exhausted", *key)
            continue
        changes[key] = free.pop(0)
    return changes


def release_all(services: Iterable[dict], owner: str = LOCAL_OWNER) -> dict[Key, None]:
    """Every Service whose ingress this stand-in (`owner`) assigned: give it back (on stop)."""
    return {_key(s): None for s in services if _mine(s, owner)}


def pool_addresses(cidr: str) -> list[str]:
    return [str(ip) for ip in ipaddress.ip_network(cidr).hosts()]


class Stopped(Exception):
    """Raised by `main`'s signal handler: the first SIGTERM or SIGINT ends a blocking read of the
    watch at once instead of at its timeout (5 s, which `down` waited out)."""


def run(
    kubeconfig: str, pool_cidr: str, stop: threading.Event | None = None, claim_unclassed: bool = True,
    owner: str = LOCAL_OWNER,
) -> None:
    """Reconcile on every Service event until `stop` is set (or forever, or until `Stopped` is
    raised in it); then give back every address it assigned."""
    from kubernetes import client, config

    api_client = config.new_client_from_config(config_file=kubeconfig)
    v1 = client.CoreV1Api(api_client)
    stop = stop or threading.Event()
    try:
        _serve(api_client, v1, pool_addresses(pool_cidr), stop, claim_unclassed, owner)
    except Stopped:
        pass
    try:
        listing = v1.list_service_for_all_namespaces()
        _apply(v1, release_all((api_client.sanitize_for_serialization(s) for s in listing.items), owner), owner)
    except Exception:  # noqa: BLE001 - the cluster may be going away with us
        logger.exception("LB stand-in: could not give the addresses back")


def _serve(api_client, v1, pool: list[str], stop: threading.Event, claim_unclassed: bool, owner: str) -> None:
    from kubernetes import watch  # the [operator] extra; only needed here

    services: dict[Key, dict] = {}
    while not stop.is_set():
        try:
            listing = v1.list_service_for_all_namespaces()
            services = {_key(d): d for d in (api_client.sanitize_for_serialization(s) for s in listing.items)}
            _apply(v1, plan(services.values(), pool, claim_unclassed, owner), owner)
            stream = watch.Watch().stream(
                v1.list_service_for_all_namespaces, resource_version=listing.metadata.resource_version, timeout_seconds=5
            )
            for event in stream:
                obj = api_client.sanitize_for_serialization(event["object"])
                if event["type"] == "DELETED":
                    services.pop(_key(obj), None)
                    logger.info("%s/%s deleted: its address (if any) is free again", *_key(obj))
                else:
                    services[_key(obj)] = obj
                _apply(v1, plan(services.values(), pool, claim_unclassed, owner), owner)
                if stop.is_set():
                    break
        except Stopped:
            raise
        except Exception:  # noqa: BLE001 - keep serving; the next list resyncs
            logger.exception("LB stand-in: reconcile failed; retrying")
            stop.wait(1)


def _apply(v1, changes: dict[Key, str | None], owner: str) -> None:
    from kubernetes.client.rest import ApiException

    for (namespace, name), ip in changes.items():
        try:
            if ip:
                # Annotation first: if the status patch then fails, the next round sees an
                # empty ingress and a stale record, and assigns again.
                v1.patch_namespaced_service(name, namespace, {"metadata": {"annotations": {ANNOTATION: ip, OWNER_ANNOTATION: owner}}})
                v1.patch_namespaced_service_status(name, namespace, {"status": {"loadBalancer": {"ingress": [{"ip": ip}]}}})
                logger.info("%s/%s: assigned %s", namespace, name, ip)
            else:
                v1.patch_namespaced_service_status(name, namespace, {"status": {"loadBalancer": {"ingress": None}}})
                v1.patch_namespaced_service(name, namespace, {"metadata": {"annotations": {ANNOTATION: None, OWNER_ANNOTATION: None}}})
                logger.info("%s/%s: released its address", namespace, name)
        except ApiException as exc:
            if exc.status != 404:
                raise


def main(argv: list[str] | None = None) -> int:
    from e2e.cluster.layout import Layout

    parser = argparse.ArgumentParser(prog="python -m e2e.cluster.lb", description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--pool", default=Layout.lb_pool, help="CIDR to hand addresses out from (default %(default)s)")
    parser.add_argument(
        "--only-own-class", action="store_true",
        help=f"serve only Services with loadBalancerClass {LB_CLASS} (default: also those without a class)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    stop = threading.Event()

    def on_signal(*_) -> None:
        if not stop.is_set():  # the first one only: a second must not cut the release short
            stop.set()
            raise Stopped

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        run(args.kubeconfig, args.pool, stop, claim_unclassed=not args.only_own_class)
    except Stopped:  # before it served: nothing assigned to give back
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
