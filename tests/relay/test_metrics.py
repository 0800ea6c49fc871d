"""Stats snapshots and their Prometheus rendering."""

from types import SimpleNamespace

from relay import metrics, stats


def tunnel(**counts):
    base = dict(frames_to_udp=0, bytes_to_udp=0, frames_to_tcp=0, bytes_to_tcp=0)
    base.update(counts)
    return SimpleNamespace(**base)


def test_a_snapshot_adds_closed_and_live_tunnels():
    s = stats.Stats()
    s.opened = 3
    s.tunnel_closed(tunnel(frames_to_udp=5, bytes_to_udp=500), "idle_timeout")
    s.dropped["destination_port"] += 2
    snap = s.snapshot([tunnel(frames_to_udp=1, bytes_to_udp=100, frames_to_tcp=4), tunnel(frames_to_tcp=1)])
    assert snap["frames_to_udp"] == 6 and snap["bytes_to_udp"] == 600 and snap["frames_to_tcp"] == 5
    assert snap["tunnels_active"] == 2 and snap["tunnels_opened"] == 3
    assert snap["closed:idle_timeout"] == 1 and snap["dropped:destination_port"] == 2


def test_rendering_gives_one_sample_per_label_value():
    text = metrics.render({"tunnels_active": 2, "frames_to_udp": 7, "frames_to_tcp": 3, "dropped:destination_port": 4, "closed:idle_timeout": 1})
    lines = text.splitlines()
    assert "zt_relay_tunnels_active 2" in lines
    assert 'zt_relay_frames_total{direction="to_udp"} 7' in lines
    assert 'zt_relay_frames_total{direction="to_tcp"} 3' in lines
    assert 'zt_relay_dropped_total{reason="destination_port"} 4' in lines
    assert 'zt_relay_tunnels_closed_total{reason="idle_timeout"} 1' in lines
    assert "# TYPE zt_relay_tunnels_opened_total counter" in lines
    assert "zt_relay_udp_send_errors_total 0" in lines


def test_worker_snapshots_merge_by_sum():
    assert stats.merge([{"a": 1, "b:x": 2}, {"a": 3, "c": 1}]) == {"a": 4, "b:x": 2, "c": 1}
