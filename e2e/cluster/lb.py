"""LoadBalancer stand-in: a TEST controller giving `type: LoadBalancer` Services an address.

There is no cloud here, so nothing fills `status.loadBalancer.ingress`. This controller
(like MetalLB's address allocator, minus any announcing) hands out addresses from the
layout's LB pool and takes them back when a Service is deleted or stops being a
LoadBalancer; kube-proxy then programs the address, and the host routes test-host traffic
to it. Real clusters use their cloud's controller; nothing in the project depends on this.

Services with `spec.loadBalancerClass` set belong to another controller and are skipped.
`spec.loadBalancerIP` (deprecated upstream, handy in tests) is honoured when in the pool.

Run by `up` as a host process (`python -m e2e.cluster.lb --kubeconfig PATH`), or in a thread
with `run(..., stop=event)` for other backends.
"""

import argparse
import ipaddress
import logging
import threading
from collections.abc import Iterable

logger = logging.getLogger("zt-e2e-lb")

Key = tuple[str, str]


def _ingress_ips(svc: dict) -> list[str]:
    ingress = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    return [i["ip"] for i in ingress if i.get("ip")]


def plan(services: Iterable[dict], pool: list[str]) -> dict[Key, str | None]:
    """Which Services need their ingress set (to an address) or cleared (None).

    Pure: `services` are Service objects as dicts. Older Services keep their addresses first,
    so a conflict (two Services claiming one address) is resolved in favour of the older.
    """
    in_pool = set(pool)
    ordered = sorted(services, key=lambda s: (s["metadata"].get("creationTimestamp") or "", s["metadata"]["namespace"], s["metadata"]["name"]))
    taken: set[str] = set()
    wanting: list[tuple[Key, str | None]] = []
    changes: dict[Key, str | None] = {}
    for svc in ordered:
        key = (svc["metadata"]["namespace"], svc["metadata"]["name"])
        spec = svc.get("spec") or {}
        current = [ip for ip in _ingress_ips(svc) if ip in in_pool]
        if spec.get("type") != "LoadBalancer" or spec.get("loadBalancerClass"):
            if current and spec.get("type") != "LoadBalancer":
                changes[key] = None  # no longer a LoadBalancer: release its address
            continue
        requested = spec.get("loadBalancerIP") or None
        if current and current[0] not in taken and (requested is None or requested == current[0]):
            taken.add(current[0])
            continue
        wanting.append((key, requested))
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


def pool_addresses(cidr: str) -> list[str]:
    return [str(ip) for ip in ipaddress.ip_network(cidr).hosts()]


def run(kubeconfig: str, pool_cidr: str, stop: threading.Event | None = None) -> None:
    """Reconcile on every Service event until `stop` is set (or forever)."""
    from kubernetes import client, config, watch  # the [operator] extra; only needed here

    api_client = config.new_client_from_config(config_file=kubeconfig)
    v1 = client.CoreV1Api(api_client)
    pool = pool_addresses(pool_cidr)
    stop = stop or threading.Event()
    while not stop.is_set():
        try:
            listing = v1.list_service_for_all_namespaces()
            services = {
                (s.metadata.namespace, s.metadata.name): api_client.sanitize_for_serialization(s) for s in listing.items
            }
            _apply(v1, plan(services.values(), pool))
            stream = watch.Watch().stream(
                v1.list_service_for_all_namespaces, resource_version=listing.metadata.resource_version, timeout_seconds=10
            )
            for event in stream:
                obj = api_client.sanitize_for_serialization(event["object"])
                key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
                if event["type"] == "DELETED":
                    services.pop(key, None)
                    logger.info("%s/%s deleted: its address (if any) is free again", *key)
                else:
                    services[key] = obj
                _apply(v1, plan(services.values(), pool))
                if stop.is_set():
                    break
        except Exception:  # noqa: BLE001 - keep serving; the next list resyncs
            logger.exception("LB stand-in: reconcile failed; retrying")
            stop.wait(1)


def _apply(v1, changes: dict[Key, str | None]) -> None:
    from kubernetes.client.rest import ApiException

    for (namespace, name), ip in changes.items():
        ingress = [{"ip": ip}] if ip else None
        try:
            v1.patch_namespaced_service_status(name, namespace, {"status": {"loadBalancer": {"ingress": ingress}}})
            logger.info("%s/%s: %s", namespace, name, f"assigned {ip}" if ip else "released its address")
        except ApiException as exc:
            if exc.status != 404:
                raise


def main(argv: list[str] | None = None) -> int:
    from e2e.cluster.layout import Layout

    parser = argparse.ArgumentParser(prog="python -m e2e.cluster.lb", description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--pool", default=Layout.lb_pool, help="CIDR to hand addresses out from (default %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    run(args.kubeconfig, args.pool)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
