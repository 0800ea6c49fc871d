"""The test nginx (tests/relay/nginx_site.py) is only "started" once it is the one listening."""

import socket

import pytest

from tests import ports
from tests.relay import nginx_site

pytestmark = pytest.mark.skipif(nginx_site.nginx_binary() is None, reason="nginx is not installed (apt-get install nginx-light)")


def test_a_port_another_process_took_after_the_pick_is_not_mistaken_for_nginxs(tmp_path, monkeypatch):
    """Two concurrent tests can pick the same unused port (tests/ports.py: no reservation). nginx
    then retries its bind for seconds before it exits, and the "is it listening" check connected
    to the other process's listener meanwhile: the test talked to a stranger. The pick must be
    retried with another port instead."""
    with socket.socket() as stranger:
        stranger.bind(("127.0.0.1", 0))
        stranger.listen()
        taken = stranger.getsockname()[1]
        picks = iter([taken])
        monkeypatch.setattr(nginx_site, "free_port", lambda: next(picks, None) or ports.unused_port())
        site = nginx_site.Nginx(tmp_path).start()
        try:
            assert site.port != taken
            with socket.create_connection(("127.0.0.1", site.port), timeout=5):
                pass
        finally:
            site.stop()
