"""Reconciles of one relay never overlap, requests coalesce, failures are retried."""

from __future__ import annotations

import asyncio

from zt_operator import runner


async def test_reconciles_of_one_relay_never_overlap_and_the_last_pass_sees_the_last_spec():
    spec = {"image": "v1"}
    seen: list[str] = []
    running = 0
    overlapped = False
    release = asyncio.Event()

    async def work(key):
        nonlocal running, overlapped
        running += 1
        overlapped |= running > 1
        image = spec["image"]
        if not seen:
            await release.wait()  # the first pass is slow (a resync in flight)
        seen.append(image)
        running -= 1
        return True

    work_runner = runner.Runner(work)
    work_runner.request("ns/edge")
    await asyncio.sleep(0)
    spec["image"] = "v2"  # an edit while the first pass runs
    work_runner.request("ns/edge")
    work_runner.request("ns/edge")
    release.set()
    for _ in range(100):
        if len(seen) >= 2:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    await work_runner.close()
    assert not overlapped
    assert seen == ["v1", "v2"]  # three requests during one pass: one more pass, with v2


async def test_a_failed_pass_is_retried_after_the_backoff():
    results = [False, False, True]
    attempts: list[int] = []

    async def work(key):
        attempts.append(1)
        return results[len(attempts) - 1]

    waits: list[int] = []

    def backoff(n):
        waits.append(n)
        return 0.01

    work_runner = runner.Runner(work, backoff)
    work_runner.request("ns/edge")
    for _ in range(100):
        if len(attempts) >= 3:
            break
        await asyncio.sleep(0.01)
    await work_runner.close()
    assert len(attempts) == 3 and waits == [1, 2]


async def test_an_exception_in_a_pass_counts_as_a_failure_and_the_worker_lives_on():
    attempts: list[int] = []

    async def work(key):
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("bug")
        return True

    work_runner = runner.Runner(work, lambda n: 0.01)
    work_runner.request("ns/edge")
    for _ in range(100):
        if len(attempts) >= 2:
            break
        await asyncio.sleep(0.01)
    await work_runner.close()
    assert len(attempts) == 2


async def test_forgetting_a_relay_stops_its_worker():
    async def work(key):
        return False

    work_runner = runner.Runner(work, lambda n: 60)
    work_runner.request("ns/edge")
    await asyncio.sleep(0.01)
    work_runner.forget("ns/edge")
    assert work_runner.keys() == []
    await work_runner.close()
