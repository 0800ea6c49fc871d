"""Operating the real process: probes, metrics, draining, workers, sockets, telemetry, logs."""

import asyncio
import gzip
import json
import os
import signal
import subprocess
import sys

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests import ports
from tests.relay.conftest import Client, RelayProcess

LOOPBACK = ("--allow-destination", "127.0.0.0/8", "--min-destination-port", "1")


async def test_probes_answer_and_unknown_paths_are_404(relay):
    assert await relay.http("/healthz") == (200, "ok\n")
    assert await relay.http("/readyz") == (200, "ready\n")
    status, body = await relay.http("/nope")
    assert status == 404 and "/metrics" in body


async def test_metrics_count_frames_bytes_and_tunnels(relay, echo, connect):
    client = await connect(relay.port)
    for size in (100, 200):
        client.send(echo.host, echo.port, b"m" * size)
        await client.recv()
    await client.close()
    await relay.wait_metric('zt_relay_tunnels_closed_total{reason="client_closed"}', lambda v: v == 1)
    samples = await relay.metrics()
    assert samples['zt_relay_frames_total{direction="to_udp"}'] == 2
    assert samples['zt_relay_frames_total{direction="to_tcp"}'] == 2
    assert samples['zt_relay_bytes_total{direction="to_udp"}'] == 300
    assert samples['zt_relay_bytes_total{direction="to_tcp"}'] == 300
    assert samples["zt_relay_tunnels_opened_total"] == 1
    assert samples["zt_relay_tunnels_active"] == 0


async def test_sigterm_drains_live_tunnels_then_exits_0(start_relay, echo, connect):
    relay = await start_relay(*LOOPBACK, "--drain-timeout", "20")
    client = await connect(relay.port)
    client.send(echo.host, echo.port, b"before" * 5)
    await client.recv()
    relay.signal(signal.SIGTERM)
    await asyncio.sleep(0.3)
    status, _ = await relay.http("/readyz")
    assert status == 503  # out of the load balancer at once
    try:
        late = await Client.connect(relay.port)
        assert await late.closed()  # no new tunnels
    except ConnectionRefusedError:
        pass
    client.send(echo.host, echo.port, b"during" * 5)  # the live tunnel keeps relaying
    assert (await client.recv())[2] == b"during" * 5
    await client.close()
    assert await relay.wait(timeout=5) == 0  # exits as soon as the last tunnel closed


async def test_the_drain_timeout_closes_remaining_tunnels_and_exits_0(start_relay, echo, connect):
    relay = await start_relay(*LOOPBACK, "--drain-timeout", "1")
    client = await connect(relay.port)
    client.send(echo.host, echo.port, b"x" * 20)
    await client.recv()
    relay.signal(signal.SIGINT)
    assert await client.closed(timeout=5)
    assert await relay.wait(timeout=5) == 0
    assert relay.logged("drain_timeout")


def udp_sockets(pid: int) -> int:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    with open(f"/proc/{pid}/net/udp") as f, open(f"/proc/{pid}/net/udp6") as g:
        rows = [line.split() for line in f.readlines()[1:] + g.readlines()[1:]]
    return sum(1 for row in rows if row[9] in inodes)


async def test_closed_tunnels_leave_no_udp_socket_behind(relay, echo, connect):
    pid = relay.proc.pid
    baseline = udp_sockets(pid)
    clients = [await connect(relay.port) for _ in range(20)]
    for c in clients:
        c.send(echo.host, echo.port, b"v4" * 10)
        c.send("::1", echo.port, b"v6" * 10)  # opens the IPv6 socket too
        await c.recv()
    await relay.wait_metric("zt_relay_tunnels_active", lambda v: v == 20)
    assert udp_sockets(pid) == baseline + 40
    for c in clients:
        await c.close()
    await relay.wait_metric("zt_relay_tunnels_active", lambda v: v == 0)
    assert udp_sockets(pid) == baseline


async def test_workers_share_the_port_and_metrics_add_up(start_relay, echo):
    port = ports.unused_port()  # for both workers; outside the ephemeral range (tests/ports.py)
    relay = await start_relay(*LOOPBACK, "--workers", "2", listen=f"127.0.0.1:{port}")
    clients = [await Client.connect(port) for _ in range(16)]
    for c in clients:
        c.send(echo.host, echo.port, b"w" * 30)
        await c.recv()
    assert len({addr for _, addr in echo.received}) == 16
    assert await relay.wait_metric("zt_relay_tunnels_active", lambda v: v == 16) == 16
    # Each worker publishes its counters every PUBLISH_INTERVAL: a report taken after a tunnel
    # opened can predate its reply (13 of 16 seen under load), so the sum is waited for too.
    frames = 'zt_relay_frames_total{direction="to_tcp"}'
    assert await relay.wait_metric(frames, lambda v: v >= 16) == 16
    samples = await relay.metrics()
    assert samples["zt_relay_workers"] == 2
    pids = {int(p) for p in subprocess.run(["pgrep", "-P", str(relay.proc.pid)], capture_output=True, text=True).stdout.split()}
    assert len(pids) == 2
    for c in clients:
        await c.close()
    relay.signal(signal.SIGTERM)
    assert await relay.wait(timeout=10) == 0
    assert not any(os.path.exists(f"/proc/{p}") for p in pids)


class Collector:
    """A minimal OTLP/HTTP receiver: records every export request it gets."""

    def __init__(self) -> None:
        self.spans = []
        self.metric_posts = 0
        #: (resource attributes, {metric name: [(attributes, value)]}) per metrics export
        self.metric_exports: list[tuple[dict, dict]] = []

    async def handle(self, reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        headers = dict(
            line.split(": ", 1) for line in head.decode().split("\r\n")[1:] if ": " in line
        )
        headers = {k.lower(): v for k, v in headers.items()}
        body = await reader.readexactly(int(headers["content-length"]))
        if headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        path = head.split(b" ")[1]
        if path == b"/v1/traces":
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            for rs in request.resource_spans:
                for ss in rs.scope_spans:
                    self.spans.extend(ss.spans)
        elif path == b"/v1/metrics":
            self.metric_posts += 1
            request = ExportMetricsServiceRequest()
            request.ParseFromString(body)
            for rm in request.resource_metrics:
                resource = {a.key: (a.value.string_value or a.value.int_value) for a in rm.resource.attributes}
                series = {}
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        points = m.sum.data_points or m.gauge.data_points
                        series[m.name] = [({a.key: a.value.string_value for a in p.attributes}, p.as_int) for p in points]
                self.metric_exports.append((resource, series))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()


async def test_each_tunnel_becomes_one_span_exported_over_otlp(start_relay, echo, connect):
    collector = Collector()
    server = await asyncio.start_server(collector.handle, "127.0.0.1", 0)
    endpoint = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_METRIC_EXPORT_INTERVAL": "200"}
    try:
        relay = await start_relay(*LOOPBACK, env=env)
        client = await connect(relay.port)
        for _ in range(3):
            client.send(echo.host, echo.port, b"t" * 50)
            await client.recv()
        await client.close()
        for _ in range(100):
            if collector.spans and collector.metric_posts:
                break
            await asyncio.sleep(0.05)
        assert len(collector.spans) == 1  # one span per tunnel, none per packet
        span = collector.spans[0]
        attrs = {a.key: (a.value.string_value or a.value.int_value) for a in span.attributes}
        assert span.name == "tunnel"
        assert attrs["zt_relay.client_version"] == "1.14.2"
        assert attrs["zt_relay.close_reason"] == "client_closed"
        assert attrs["zt_relay.frames_to_udp"] == 3 and attrs["zt_relay.frames_to_tcp"] == 3
        assert attrs["client.address"] == "127.0.0.1"
        assert collector.metric_posts >= 1
    finally:
        server.close()


def test_without_otel_variables_the_relay_does_not_load_opentelemetry():
    """The SDK is imported only when telemetry is asked for (each process, each worker, paid
    about 0.1 s of start-up for it): the runtime's modules load none of it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    code = ("import sys; import relay.app, relay.cli, relay.workers, relay.worker; "
            "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout


async def test_an_unsupported_otlp_protocol_fails_at_start_naming_the_variable(start_relay):
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    try:
        await RelayProcess.start(env=env)
        raise AssertionError("the relay started")
    except RuntimeError as exc:
        assert "OTEL_EXPORTER_OTLP_PROTOCOL='grpc'" in str(exc)


async def test_json_logs_are_one_object_per_line(start_relay, connect):
    relay = await start_relay("--log-format", "json", "--drain-timeout", "0")
    await connect(relay.port)
    await relay.wait_metric("zt_relay_tunnels_active", lambda v: v == 1)
    relay.signal()
    await relay.wait()
    entries = [json.loads(line) for line in relay.log if line.strip()]
    assert {"time", "level", "logger", "message"} <= set(entries[0])
    assert any("client version 1.14.2" in e["message"] for e in entries)


async def otlp_collector():
    collector = Collector()
    server = await asyncio.start_server(collector.handle, "127.0.0.1", 0)
    endpoint = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_METRIC_EXPORT_INTERVAL": "200", "OTEL_TRACES_EXPORTER": "none"}
    return collector, server, env


async def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_refused_connections_are_counted_in_otel_too(start_relay):
    collector, server, env = await otlp_collector()
    try:
        relay = await start_relay(*LOOPBACK, "--max-connections", "1", env=env)
        first = await Client.connect(relay.port)
        await relay.wait_metric("zt_relay_tunnels_active", lambda v: v == 1)
        second = await Client.connect(relay.port)
        assert await second.closed()

        def refused():
            return [v for _, series in collector.metric_exports for attrs, v in series.get("zt_relay.connections.refused", [])
                    if attrs.get("reason") == "max_connections"]
        await wait_for(lambda: refused() and max(refused()) == 1)
        await first.close()
        await second.close()
    finally:
        server.close()


async def test_each_worker_reports_to_otel_with_its_own_service_instance_id(start_relay):
    collector, server, env = await otlp_collector()
    port = ports.unused_port()  # for both workers; outside the ephemeral range (tests/ports.py)
    try:
        relay = await start_relay(*LOOPBACK, "--workers", "2", env={**env, "OTEL_RESOURCE_ATTRIBUTES": "service.instance.id=pod-a"},
                                  listen=f"127.0.0.1:{port}")
        await wait_for(lambda: len({r.get("service.instance.id") for r, _ in collector.metric_exports}) >= 2)
        assert {r["service.instance.id"] for r, _ in collector.metric_exports} == {"pod-a-worker-0", "pod-a-worker-1"}
        relay.signal(signal.SIGTERM)
        assert await relay.wait(timeout=15) == 0
    finally:
        server.close()
