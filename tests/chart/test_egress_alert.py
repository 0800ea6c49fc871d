"""ZtRelayUdpSendErrors says to check the pod's egress (NetworkPolicy, node firewall). A packet
a local firewall refuses is a drop in the relay (``egress_denied``), not a send error, so the
alert counts that reason too; if the relay renamed it, the alert would silently stop seeing
a NetworkPolicy that blocks the tunnels' UDP.
"""

from __future__ import annotations

import re

from relay import stats
from tests.chart.test_no_ready_pods_alert import _alert


def test_the_egress_alert_counts_send_errors_and_the_relays_egress_denied_drops(render):
    alert, _ = _alert(render, "ZtRelayUdpSendErrors")
    assert re.findall(r'zt_relay_dropped_total\{reason="([^"]*)"\}', alert["expr"]) == [stats.EGRESS_DENIED], alert["expr"]
    assert "rate(zt_relay_udp_send_errors_total[5m])" in alert["expr"], alert["expr"]
