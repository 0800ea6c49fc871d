"""The control plane's command lines (e2e/cluster/configs.py): what they leave out to save CPU
must be nothing a test or the chart relies on."""

import json
from pathlib import Path

from e2e.cluster import configs
from e2e.cluster.layout import Layout

LAYOUT = Layout(primary_interface="eth0")
STATE = configs.StatePaths(Path("/var/lib/zt-relay-e2e"))


def _controllers() -> list[str]:
    argv = configs.controller_manager_command(LAYOUT, STATE, Path("/bin"))
    (flag,) = [arg for arg in argv if arg.startswith("--controllers=")]
    return flag.removeprefix("--controllers=").split(",")


def test_the_controller_manager_runs_the_controllers_the_tests_rely_on():
    controllers = _controllers()
    assert "*" not in controllers and not [c for c in controllers if c.startswith("-")], controllers
    assert len(controllers) == len(set(controllers)), controllers
    for needed in (
        "deployment-controller", "replicaset-controller",  # every workload under test
        "garbage-collector-controller",  # a relay's children go with it; foreground deletion
        "namespace-controller",  # every test's namespace is deleted
        "endpointslice-controller", "endpoints-controller",  # Services (kube-proxy, kube-router)
        "horizontal-pod-autoscaler-controller", "disruption-controller",  # relays' HPA and PDB
        "serviceaccount-controller", "serviceaccount-token-controller",  # a new namespace's default account
        "root-ca-certificate-publisher-controller",  # kube-root-ca.crt, in every pod's token volume
        "node-lifecycle-controller",  # takes the new node's not-ready taint off
        "node-ipam-controller",  # --allocate-node-cidrs
    ):
        assert needed in controllers, needed


def test_the_controller_manager_runs_no_controller_for_kinds_nothing_creates():
    controllers = set(_controllers())
    for unused in (
        "job-controller", "cronjob-controller", "statefulset-controller", "daemonset-controller",
        "replicationcontroller-controller", "resourcequota-controller", "persistentvolume-binder-controller",
        "persistentvolume-attach-detach-controller", "certificatesigningrequest-signing-controller",
        "ttl-controller", "endpointslice-mirroring-controller",
    ):
        assert unused not in controllers, unused


def test_the_kubelet_posts_an_unchanged_node_status_only_every_5_minutes():
    """Left unset, nodeStatusReportFrequency follows nodeStatusUpdateFrequency (the kubelet's
    defaulting, for backward compatibility): the whole Node was PATCHed every 4 s."""
    config = json.loads(configs.kubelet_config(LAYOUT, STATE))
    assert config["nodeStatusUpdateFrequency"] == "4s"  # a change (Ready, images) is still posted at once
    assert config.get("nodeStatusReportFrequency") == "5m", config.get("nodeStatusReportFrequency")
