"""OpenTelemetry: one span per tunnel and the relay's counters as OTel metrics.

Configured only by the standard variables: nothing is set up (and nothing costs) unless an
OTLP endpoint is given (``OTEL_EXPORTER_OTLP_ENDPOINT`` or the per-signal
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``..._METRICS_ENDPOINT``) or an exporter is named
(``OTEL_TRACES_EXPORTER`` / ``OTEL_METRICS_EXPORTER`` = ``otlp`` or ``console``), and
``OTEL_SDK_DISABLED`` is not true. The exporter reads the rest (headers, timeouts,
``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_METRIC_EXPORT_INTERVAL``).

Spans are per tunnel, never per packet. Metrics are observable instruments whose callbacks
read the relay's snapshot at export time, so the hot path doesn't call the OTel API.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from relay import __version__, metrics as metrics_mod

# The SDK is imported only once telemetry is asked for: importing it costs every relay
# process (and each worker) about 0.1 s of start-up for nothing otherwise.
if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, Observation
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger("zt_relay.telemetry")


class TelemetryConfigError(ValueError):
    """An OTEL_* variable asks for something this build can't do."""


def wanted(env: Mapping[str, str], signal: str) -> str | None:
    """The exporter to use for ``signal`` (traces or metrics): otlp, console or None."""
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return None
    exporter = env.get(f"OTEL_{signal.upper()}_EXPORTER", "").strip().lower()
    if exporter == "none":
        return None
    if not exporter:
        endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT")
        return "otlp" if endpoint else None
    if exporter not in ("otlp", "console"):
        raise TelemetryConfigError(f"OTEL_{signal.upper()}_EXPORTER={exporter!r}: supported are otlp, console, none")
    return exporter


def _check_protocol(env: Mapping[str, str], signal: str) -> None:
    proto = env.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf"
    if proto != "http/protobuf":
        raise TelemetryConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={proto!r}: this relay ships the http/protobuf exporter only "
            "(port 4318 on a collector); gRPC would add grpcio to the image"
        )


class Telemetry:
    """The tunnel lifecycle hooks the relay calls when telemetry is on."""

    def __init__(self, tracer_provider: TracerProvider | None, meter_provider: MeterProvider | None) -> None:
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.tracer = tracer_provider.get_tracer("zt_relay", __version__) if tracer_provider else None

    def opened(self, tunnel) -> None:
        if self.tracer is None:
            return
        from opentelemetry import trace

        tunnel.span = self.tracer.start_span(
            "tunnel",
            kind=trace.SpanKind.SERVER,
            attributes={"client.address": tunnel.client[0], "client.port": tunnel.client[1]},
        )

    def closed(self, tunnel) -> None:
        span = tunnel.span
        if span is None:
            return
        tunnel.span = None
        span.set_attributes({
            "zt_relay.client_version": tunnel.version or "",
            "zt_relay.close_reason": tunnel.reason or "",
            "zt_relay.frames_to_udp": tunnel.frames_to_udp,
            "zt_relay.frames_to_tcp": tunnel.frames_to_tcp,
            "zt_relay.bytes_to_udp": tunnel.bytes_to_udp,
            "zt_relay.bytes_to_tcp": tunnel.bytes_to_tcp,
        })
        if tunnel.reason not in ("client_closed", "idle_timeout", "drain_timeout"):
            from opentelemetry import trace

            span.set_status(trace.Status(trace.StatusCode.ERROR, tunnel.reason))
        span.end()

    def observe(self, snapshot: Callable[[], dict[str, int]]) -> None:
        """Registers observable instruments that read ``snapshot`` at each export."""
        if self.meter_provider is None:
            return
        from opentelemetry.metrics import Observation

        meter = self.meter_provider.get_meter("zt_relay", __version__)

        def series(key: str, label: str | None = None) -> Callable[[CallbackOptions], list[Observation]]:
            def callback(_: CallbackOptions) -> list[Observation]:
                snap = snapshot()
                if label is None:
                    return [Observation(snap.get(key, 0))]
                if label == "direction":
                    directions = metrics_mod.DIRECTIONS.get(key, ("to_udp", "to_tcp"))
                    return [Observation(snap.get(f"{key}_{d}", 0), {"direction": d}) for d in directions]
                prefix = key + ":"
                return [Observation(v, {label: k[len(prefix):]}) for k, v in snap.items() if k.startswith(prefix)]
            return callback

        meter.create_observable_gauge("zt_relay.tunnels.active", [series("tunnels_active")], description="Tunnels currently open.")
        meter.create_observable_counter("zt_relay.tunnels.opened", [series("tunnels_opened")])
        meter.create_observable_counter("zt_relay.tunnels.closed", [series("closed", "reason")])
        meter.create_observable_counter("zt_relay.frames", [series("frames", "direction")])
        meter.create_observable_counter("zt_relay.bytes", [series("bytes", "direction")], unit="By")
        meter.create_observable_counter("zt_relay.dropped", [series("dropped", "reason")])
        meter.create_observable_counter("zt_relay.connections.refused", [series("refused", "reason")], description="Connections refused at accept, by reason.")
        meter.create_observable_counter("zt_relay.udp.send_errors", [series("udp_send_errors")])
        meter.create_observable_gauge("zt_relay.fallback.active", [series("fallback_active")],
                                      description="Connections spliced to the --fallback backend now.")
        meter.create_observable_counter("zt_relay.fallback.connections", [series("fallback", "result")])
        meter.create_observable_counter("zt_relay.fallback.closed", [series("fallback_closed", "reason")])
        meter.create_observable_counter("zt_relay.fallback.bytes", [series("fallback_bytes", "direction")], unit="By")
        meter.create_observable_counter("zt_relay.fallback.dns_failures", [series("fallback_dns_failures", "reason")])
        # The resource gauges (what open connections hold), as on /metrics.
        help_text = {key: text for key, _, _, text, _ in metrics_mod._SERIES}
        for key, name, unit in (("connections_open", "zt_relay.connections.open", "1"),
                                ("client_addresses", "zt_relay.client_addresses", "1"),
                                ("write_buffer_bytes", "zt_relay.write_buffer.bytes", "By"),
                                ("udp_sockets_open", "zt_relay.udp_sockets.open", "1"),
                                ("memory_bytes", "zt_relay.memory.bytes", "By")):
            meter.create_observable_gauge(name, [series(key)], unit=unit, description=help_text[key])

    def shutdown(self) -> None:
        """Flushes pending spans and metrics (called once at exit)."""
        for provider in (self.tracer_provider, self.meter_provider):
            if provider is not None:
                try:
                    provider.shutdown()
                except Exception as exc:  # exporting must never fail the shutdown
                    log.warning("telemetry shutdown: %s", exc)


def check_environment(env: Mapping[str, str] | None = None) -> None:
    """Raises ``TelemetryConfigError`` for what ``from_environment`` would refuse, without
    setting anything up (the worker supervisor: each worker sets up its own)."""
    env = os.environ if env is None else env
    for signal in ("traces", "metrics"):
        if wanted(env, signal) == "otlp":
            _check_protocol(env, signal)


def instance_id(env: Mapping[str, str], worker: int | None = None) -> str:
    """``service.instance.id``: unique per process, so that the series of two workers (or
    two pods) never merge. The one given in OTEL_RESOURCE_ATTRIBUTES (a pod name, say) is
    kept, with the worker index appended; else host name and process id."""
    given = None
    for item in env.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip() == "service.instance.id" and value.strip():
            given = value.strip()
    base = given or f"{socket.gethostname()}-{os.getpid()}"
    return base if worker is None else f"{base}-worker-{worker}"


def from_environment(env: Mapping[str, str] | None = None, worker: int | None = None) -> Telemetry | None:
    """Builds telemetry from OTEL_* variables, or returns None when nothing is asked for.
    ``worker``: the index of this ``--workers`` process, for its ``service.instance.id``."""
    env = os.environ if env is None else env
    traces, metrics_ = wanted(env, "traces"), wanted(env, "metrics")
    if traces is None and metrics_ is None:
        return None
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    attributes = {
        "service.name": env.get("OTEL_SERVICE_NAME", "zt-relay"),
        "service.version": __version__,
        "service.instance.id": instance_id(env, worker),
    }
    if worker is not None:
        attributes["zt_relay.worker"] = worker
    resource = Resource.create(attributes)
    tracer_provider = meter_provider = None
    if traces == "otlp":
        _check_protocol(env, "traces")
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        tracer_provider = TracerProvider(resource=resource)
        tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    elif traces == "console":
        tracer_provider = TracerProvider(resource=resource)
        tracer_provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    if metrics_ == "otlp":
        _check_protocol(env, "metrics")
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        meter_provider = MeterProvider(resource=resource, metric_readers=[PeriodicExportingMetricReader(OTLPMetricExporter())])
    elif metrics_ == "console":
        meter_provider = MeterProvider(resource=resource, metric_readers=[PeriodicExportingMetricReader(ConsoleMetricExporter())])
    log.info("OpenTelemetry on: traces=%s metrics=%s", traces, metrics_)
    return Telemetry(tracer_provider, meter_provider)
