"""The image runs as a fixed non-root user, on a read-only root, with no build tools."""

from __future__ import annotations

import pytest

from tests.container.conftest import docker

pytestmark = pytest.mark.docker


def test_the_image_declares_a_numeric_non_root_user(image):
    assert docker("image", "inspect", "--format", "{{.Config.User}}", image).stdout.strip() == "10001:10001"


def test_the_relay_process_runs_as_uid_10001_with_a_read_only_root(run_relay):
    relay = run_relay()

    assert docker("exec", relay.name, "id", "-u").stdout.strip() == "10001"
    write = docker("exec", relay.name, "touch", "/opt/zt-relay/probe", check=False)
    assert write.returncode != 0
    assert "Read-only file system" in write.stderr
    assert relay.inspect()["HostConfig"]["ReadonlyRootfs"] is True


def test_the_image_carries_no_pip_and_no_compiler(image):
    probe = docker(
        "run", "--rm", "--read-only", image, "python3", "-c",
        "import importlib.util, shutil;"
        "print(importlib.util.find_spec('pip'), shutil.which('gcc'), shutil.which('cc'))",
    )
    assert probe.stdout.split() == ["None", "None", "None"]


def test_the_default_command_is_the_relay_on_8443_and_9090(image):
    config = docker("image", "inspect", "--format", "{{json .Config}}", image).stdout
    assert '"Cmd":["zt-relay"]' in config
    assert '"8443/tcp":{}' in config and '"9090/tcp":{}' in config
