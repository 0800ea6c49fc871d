"""Operator settings from ``ZT_OPERATOR_*`` environment variables (the chart sets them)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from importlib import metadata

ENV_PREFIX = "ZT_OPERATOR_"
PULL_POLICIES = ("Always", "IfNotPresent", "Never")


class SettingsError(ValueError):
    """A ``ZT_OPERATOR_*`` variable has a value the operator cannot use."""


def _default_image() -> str:
    try:
        return f"zt-relay:{metadata.version('zt-relay')}"
    except metadata.PackageNotFoundError:  # running from a source tree without install
        return "zt-relay:latest"


@dataclasses.dataclass(frozen=True)
class OperatorSettings:
    relay_image: str = dataclasses.field(default_factory=_default_image)
    """Image of relay pods when a ZeroTierRelay names none: normally the operator's own
    image (the chart passes it), so operator and relay versions move together."""

    relay_image_pull_policy: str = "IfNotPresent"
    """Pull policy of relay pods when a ZeroTierRelay names none."""

    resync_seconds: float = 300.0
    """Seconds between full reconciliations of each relay, spread over the interval. Only
    a safety net: changes to a relay or its children arrive by watch and are handled at
    once, so a slow resync keeps the API load of a large fleet low."""

    metrics_listen: str = "0.0.0.0:8081"
    """HOST:PORT of the operator's own Prometheus /metrics ("off" disables). Not the
    liveness port: Kopf's liveness server owns that one."""

    log_level: str = "INFO"
    """Python log level of the operator process."""


def from_environment(env: Mapping[str, str]) -> OperatorSettings:
    """Read settings from ``env``; raises ``SettingsError`` naming the variable."""
    defaults = OperatorSettings()
    values: dict[str, object] = {}
    for field in dataclasses.fields(OperatorSettings):
        name = ENV_PREFIX + field.name.upper()
        raw = env.get(name, "").strip()
        if not raw:
            continue
        if field.name == "resync_seconds":
            try:
                seconds = float(raw)
            except ValueError:
                raise SettingsError(f"{name}: {raw!r} is not a number") from None
            if not 1 <= seconds <= 3600:
                raise SettingsError(f"{name}: {raw} is outside 1..3600 seconds")
            values[field.name] = seconds
        elif field.name == "relay_image_pull_policy" and raw not in PULL_POLICIES:
            raise SettingsError(f"{name}: {raw!r} is not one of {', '.join(PULL_POLICIES)}")
        elif field.name == "log_level" and raw.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise SettingsError(f"{name}: {raw!r} is not DEBUG, INFO, WARNING or ERROR")
        else:
            values[field.name] = raw.upper() if field.name == "log_level" else raw
    return dataclasses.replace(defaults, **values)
