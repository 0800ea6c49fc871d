"""``zt-relay``: flags and ``ZT_RELAY_*`` variables mapped onto ``RelayConfig``.

A flag wins over its variable; lists in variables are comma- or space-separated. Every
error names the flag and the variable, and exits with status 2 before anything starts.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from relay import __version__
from relay.config import ConfigError, RelayConfig, parse_bytes, parse_endpoint

ENV_PREFIX = "ZT_RELAY_"


@dataclass(frozen=True)
class Option:
    field: str
    help: str
    kind: str = "str"  # str, int, float, bool, endpoint, endpoints, list
    metavar: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.field.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.field.upper()


D = RelayConfig()  # defaults, shown in --help

OPTIONS = (
    Option("health_listen", f"serve /healthz, /readyz, /metrics here ('off' disables; default {D.health_listen})", "endpoint", "HOST:PORT"),
    Option("allow_destination", "also allow UDP to this CIDR (repeatable; default: global unicast only)", "list", "CIDR"),
    Option("deny_destination", "never send UDP to this CIDR (repeatable; wins over --allow-destination)", "list", "CIDR"),
    Option("own_address", "also refuse this address as a destination, like the relay's own interface addresses (repeatable; e.g. the node's and the load balancer's)", "list", "IP"),
    Option("new_destination_rate", f"new destinations one tunnel may add per second, burst 8 s (0 = unlimited; default {D.new_destination_rate})", "int", "N"),
    Option("min_destination_port", f"lowest UDP destination port (default {D.min_destination_port})", "int", "PORT"),
    Option("max_record_size", f"largest record payload in bytes; larger closes the tunnel (default {D.max_record_size})", "int", "BYTES"),
    Option("min_packet_size", f"smallest ZeroTier packet in bytes; smaller is dropped (default {D.min_packet_size})", "int", "BYTES"),
    Option("handshake_timeout", f"seconds to complete the first record (default {D.handshake_timeout:g})", "float", "S"),
    Option("idle_timeout", f"seconds without traffic before a tunnel closes (default {D.idle_timeout:g})", "float", "S"),
    Option("reply_window", f"seconds a destination may reply after the last packet sent to it (default {D.reply_window:g})", "float", "S"),
    Option("max_connections", f"concurrent connections per process (default {D.max_connections})", "int", "N"),
    Option("max_connections_per_ip", f"concurrent connections per client address (default {D.max_connections_per_ip})", "int", "N"),
    Option("tunnel_rate_pps", "packets/s one tunnel may send (0 = unlimited, the default)", "float", "PPS"),
    Option("tunnel_rate_bps", "bytes/s one tunnel may send (0 = unlimited, the default)", "float", "BPS"),
    Option("global_rate_pps", "packets/s all tunnels may send (0 = unlimited, the default)", "float", "PPS"),
    Option("global_rate_bps", "bytes/s all tunnels may send (0 = unlimited, the default)", "float", "BPS"),
    Option("write_buffer_limit", f"bytes queued to a slow client before replies are dropped (default {D.write_buffer_limit})", "int", "BYTES"),
    Option("proxy_protocol", "require a PROXY protocol v1/v2 header on every connection", "bool"),
    Option("proxy_protocol_from", "trust PROXY headers only from this CIDR (repeatable; default: loopback and private ranges; others are refused)", "list", "CIDR"),
    Option("ipv6_per_ip_prefix", f"IPv6 clients share --max-connections-per-ip by this prefix length (default {D.ipv6_per_ip_prefix})", "int", "BITS"),
    Option("legacy_target", "send packets of pre-1.2 clients (no hello) here (default: close them)", "endpoint", "HOST:PORT"),
    Option("fallback", "send connections that aren't ZeroTier to this backend, e.g. a web server (default: close them)", "endpoint", "HOST:PORT"),
    Option("fallback_proxy_protocol", "prepend a PROXY v1 or v2 header for the fallback backend (default off)", "str", "v1|v2|off"),
    Option("sniff_timeout", f"with --fallback: seconds a silent client waits before going to the backend (default {D.sniff_timeout:g})", "float", "S"),
    Option("fallback_max_connections", f"concurrent connections to the fallback backend (default {D.fallback_max_connections})", "int", "N"),
    Option("fallback_max_connections_per_ip", "share of --fallback-max-connections one client address keeps once it is reached: "
           "beyond it, its idlest connection is closed for an address under its share (default 0: as --max-connections-per-ip)", "int", "N"),
    Option("fallback_preconnect", f"backend connections each process keeps open, unwritten and at most 2 s old, for the next site connections (0 = off; default {D.fallback_preconnect})", "int", "N"),
    Option("fallback_idle_timeout", f"seconds without traffic before a fallback connection closes (default {D.fallback_idle_timeout:g})", "float", "S"),
    Option("max_memory", "refuse new tunnels (memory_pressure) from 90%% of this many bytes used, or when what is left can't hold one more tunnel's worst case (~1.56 MiB), e.g. 256Mi (default: the cgroup's memory limit, if any; 0: off)", "bytes", "BYTES"),
    Option("shutdown_delay", f"seconds listeners keep accepting after SIGTERM while /readyz fails, before the drain (default {D.shutdown_delay:g})", "float", "S"),
    Option("drain_timeout", f"seconds tunnels keep relaying after the shutdown delay (default {D.drain_timeout:g})", "float", "S"),
    Option("workers", f"processes sharing the ports via SO_REUSEPORT (default {D.workers})", "int", "N"),
    Option("log_format", f"text or json (default {D.log_format})", "str", "FORMAT"),
    Option("log_level", f"DEBUG, INFO, WARNING or ERROR (default {D.log_level})", "str", "LEVEL"),
)
LISTEN = Option("listen", "TCP address to accept tunnels on, e.g. 0.0.0.0:443 or [::]:443 (several allowed; default 0.0.0.0:443)", "endpoints")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zt-relay",
        description="TCP fallback relay for ZeroTier. Every flag can also be set with the "
        f"environment variable {ENV_PREFIX}<FLAG> (e.g. {ENV_PREFIX}IDLE_TIMEOUT=60).",
    )
    parser.add_argument("listen", nargs="*", metavar="LISTEN", help=LISTEN.help)
    for opt in OPTIONS:
        if opt.kind == "bool":
            parser.add_argument(opt.flag, action="store_const", const="true", default=None, help=opt.help)
        elif opt.kind == "list":
            parser.add_argument(opt.flag, action="append", default=None, metavar=opt.metavar, help=opt.help)
        else:
            parser.add_argument(opt.flag, default=None, metavar=opt.metavar, help=opt.help)
    parser.add_argument("--version", action="version", version=f"zt-relay {__version__}")
    return parser


def parse_config(argv: Sequence[str], env: Mapping[str, str]) -> RelayConfig:
    """Flags, then variables, then defaults; raises ``UsageError`` naming the setting."""
    args = build_parser().parse_args(argv)
    values: dict[str, object] = {}
    for opt in (LISTEN, *OPTIONS):
        raw = getattr(args, opt.field)
        if raw in (None, []):
            raw = env.get(opt.env)
            if raw is not None and opt.kind in ("list", "endpoints"):
                raw = [part for part in raw.replace(",", " ").split() if part]
        if raw is None:
            continue
        try:
            values[opt.field] = _CONVERT[opt.kind](raw, opt.field)
        except ConfigError as exc:
            raise UsageError(opt, str(exc)) from None
    try:
        return RelayConfig(**values)
    except ConfigError as exc:
        opt = next(o for o in (LISTEN, *OPTIONS) if o.field == exc.setting)
        raise UsageError(opt, str(exc)) from None


class UsageError(Exception):
    def __init__(self, option: Option, message: str) -> None:
        name = "LISTEN" if option is LISTEN else option.flag
        super().__init__(f"{name} ({option.env}): {message}")


def _number(cast: Callable[[str], object]) -> Callable[[str, str], object]:
    def convert(raw: str, field: str) -> object:
        try:
            value = cast(raw)
        except ValueError:
            raise ConfigError(field, f"{raw!r} is not a number") from None
        if not math.isfinite(value):  # nan compares false with every bound; inf disables one
            raise ConfigError(field, f"{raw!r} is not a finite number")
        return value
    return convert


def _bool(raw: str, field: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(field, f"{raw!r} is not true or false")


def _endpoint(raw: str, field: str):
    if raw.strip().lower() in ("off", "none", ""):
        return None
    return parse_endpoint(raw, field)


_CONVERT: dict[str, Callable[[object, str], object]] = {
    "str": lambda raw, field: str(raw),
    "int": _number(int),
    "bytes": parse_bytes,
    "float": _number(float),
    "bool": _bool,
    "endpoint": _endpoint,
    "endpoints": lambda raw, field: tuple(parse_endpoint(r, field) for r in raw),
    "list": lambda raw, field: tuple(raw),
}


def main(argv: Sequence[str] | None = None) -> None:
    try:
        config = parse_config(sys.argv[1:] if argv is None else argv, os.environ)
    except UsageError as exc:
        print(f"zt-relay: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    from relay import app  # imported late: --help and config errors don't load the runtime

    raise SystemExit(app.run(config))
