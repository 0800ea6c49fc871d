"""Review finding: "Reconciles of one relay never overlap" does not hold across a relay
deleted and re-created under the same name (``kubectl replace --force``, a GitOps
re-create, ``helm uninstall``/``install``).

``Runner.forget`` cancels the worker task, but its pass runs in a thread
(``asyncio.to_thread``) and cannot be cancelled: it goes on applying children with the old
relay's ownerReference and writing its status while the new relay's worker starts a
second pass of the same key."""

from __future__ import annotations

import asyncio
import threading

from zt_operator import runner


async def test_a_pass_of_a_forgotten_relay_never_overlaps_the_pass_of_its_successor():
    running = 0
    most = 0
    lock = threading.Lock()
    release = threading.Event()

    def blocking_pass():
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        release.wait(2)  # a slow apply in flight
        with lock:
            running -= 1

    async def work(key):
        await asyncio.to_thread(blocking_pass)
        return True

    work_runner = runner.Runner(work)
    work_runner.request("ns/edge")
    await asyncio.sleep(0.05)
    work_runner.forget("ns/edge")  # DELETED
    work_runner.request("ns/edge")  # re-created with the same name
    await asyncio.sleep(0.05)
    release.set()
    await asyncio.sleep(0.05)
    await work_runner.close()
    assert most == 1
