"""Operator settings from ZT_OPERATOR_* variables, and the kopf command line."""

from __future__ import annotations

import pytest

from zt_operator import cli, settings


def test_defaults_need_no_environment():
    found = settings.from_environment({})
    assert found.relay_image.startswith("zt-relay:")
    assert (found.relay_image_pull_policy, found.resync_seconds, found.metrics_listen) == ("IfNotPresent", 300.0, "0.0.0.0:8081")


def test_variables_set_the_fields():
    found = settings.from_environment({
        "ZT_OPERATOR_RELAY_IMAGE": "zt-relay:0.1.0-dev", "ZT_OPERATOR_RELAY_IMAGE_PULL_POLICY": "Never",
        "ZT_OPERATOR_RESYNC_SECONDS": "5", "ZT_OPERATOR_METRICS_LISTEN": "off", "ZT_OPERATOR_LOG_LEVEL": "debug",
    })
    assert (found.relay_image, found.relay_image_pull_policy, found.resync_seconds) == ("zt-relay:0.1.0-dev", "Never", 5.0)
    assert (found.metrics_listen, found.log_level) == ("off", "DEBUG")


@pytest.mark.parametrize("variable, value, message", [
    ("ZT_OPERATOR_RESYNC_SECONDS", "soon", "ZT_OPERATOR_RESYNC_SECONDS: 'soon' is not a number"),
    ("ZT_OPERATOR_RESYNC_SECONDS", "7200", "ZT_OPERATOR_RESYNC_SECONDS: 7200 is outside 1..3600 seconds"),
    ("ZT_OPERATOR_RELAY_IMAGE_PULL_POLICY", "Sometimes", "ZT_OPERATOR_RELAY_IMAGE_PULL_POLICY: 'Sometimes' is not one of"),
    ("ZT_OPERATOR_LOG_LEVEL", "LOUD", "ZT_OPERATOR_LOG_LEVEL: 'LOUD' is not DEBUG"),
])
def test_a_bad_variable_is_named_in_the_error(variable, value, message):
    with pytest.raises(settings.SettingsError, match="^" + message.replace("(", r"\(").replace(".", r"\.")):
        settings.from_environment({variable: value})


def test_the_operator_runs_kopf_standalone_with_liveness_on_all_namespaces_by_default():
    assert cli.kopf_arguments([]) == [
        "run", "-m", "zt_operator.handlers", "--standalone",
        "--liveness=http://0.0.0.0:8080/healthz", "--all-namespaces",
    ]


def test_given_liveness_and_namespaces_replace_the_defaults():
    args = cli.kopf_arguments(["--liveness=http://0.0.0.0:9000/healthz", "--namespace=relays", "--verbose"])
    assert args == ["run", "-m", "zt_operator.handlers", "--standalone",
                    "--liveness=http://0.0.0.0:9000/healthz", "--namespace=relays", "--verbose"]
    assert "--all-namespaces" not in cli.kopf_arguments(["-n", "relays"])
