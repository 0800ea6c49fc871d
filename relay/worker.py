"""One worker process of ``--workers`` (see workers.py):
``python -m relay.worker INDEX FD SUPERVISOR_PID``.

Reads its settings as JSON on stdin, serves like a single relay without a health server,
and reports its stats snapshot on pipe FD (length-prefixed JSON) twice a second and once
more on its way out, so the supervisor's totals are exact after a clean exit.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import sys

import uvloop

from relay import logs, telemetry as telemetry_mod
from relay.app import raise_file_limit, serve
from relay.config import RelayConfig
from relay.workers import PUBLISH_INTERVAL, encode_report

log = logging.getLogger("zt_relay.workers")

_PR_SET_PDEATHSIG = 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    index, fd, supervisor = int(argv[0]), int(argv[1]), int(argv[2])
    _die_with_parent(supervisor)
    config = RelayConfig.from_json(sys.stdin.read())
    logs.configure(config.log_format, config.log_level)
    raise_file_limit()
    telemetry = telemetry_mod.from_environment(worker=index)
    return uvloop.run(_worker(config, index, fd, telemetry))


def _die_with_parent(supervisor: int) -> None:
    # A supervisor killed outright (SIGKILL, OOM) must not leave workers holding the port.
    # SIGTERM: the worker drains (it is delivered once its handlers are installed).
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != supervisor:  # it died before the prctl
        os.kill(os.getpid(), signal.SIGTERM)


async def _worker(config: RelayConfig, index: int, fd: int, telemetry) -> int:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(fd, "wb", buffering=0))

    async def publish(relay) -> None:
        try:
            while True:
                transport.write(encode_report(relay.ready, relay.snapshot()))
                await asyncio.sleep(PUBLISH_INTERVAL)
        finally:
            # The last word: totals up to the exit (written to the pipe's buffer at once).
            transport.write(encode_report(False, relay.snapshot()))

    code = await serve(config.replace(health_listen=None), telemetry, publisher=publish)
    transport.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
