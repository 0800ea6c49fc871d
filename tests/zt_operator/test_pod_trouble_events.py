"""A relay whose pods can't start is looked at every 2-10 s (the recheck), and the kubelet
cycles the container's state meanwhile: a failed pull shows as ErrImagePull until the next
sync, then ImagePullBackOff, again at every retry; a crash-looping container runs between its
back-offs. Each such flip changed the Degraded reason, and each change posted a new Warning
Event (one Event object each, never aggregated): an image typo posted Degraded
ErrImagePull / ImagePullBackOff in turn for as long as it lasted."""

from __future__ import annotations

from tests.zt_operator.conftest import relay_body
from tests.zt_operator.test_status import deployment
from zt_operator import status

NOW = "2026-01-01T00:00:00Z"


def pod(waiting=None, running=False):
    state = {"waiting": {"reason": waiting, "message": f"{waiting} of relay"}} if waiting else {"running": {}} if running else {}
    return {"metadata": {"name": "edge-1"}, "status": {"containerStatuses": [{"name": "relay", "state": state}]}}


def warnings_over(pod_states, **short):
    """Warning Events posted over passes that see the relay's one pod in ``pod_states``."""
    current: dict = {}
    posted = []
    for pods in pod_states:
        wanted = status.observe(relay_body(**current), deployment(**short), None, pods=pods, previous=current)
        wanted["conditions"] = status.merge_conditions(current.get("conditions"), wanted["conditions"], NOW)
        posted += [reason for kind, reason, _ in status.events(current, wanted) if kind == "Warning"]
        current = {k: v for k, v in {**current, **status.changes(current, wanted)}.items() if v is not None}
    return posted


def test_a_pull_that_keeps_failing_is_one_warning_not_one_per_retry():
    cycle = [[pod("ErrImagePull")], [pod("ImagePullBackOff")]]
    posted = warnings_over(cycle * 4, desired=1, ready=0, updated=1, replicas=1)
    assert posted.count("ErrImagePull") + posted.count("ImagePullBackOff") == 1, posted


def test_a_crash_loop_seen_running_between_back_offs_is_one_warning_not_one_per_restart():
    cycle = [[pod("CrashLoopBackOff")], [pod(running=True)]]
    posted = warnings_over(cycle * 4, desired=1, ready=0, updated=1, replicas=1)
    assert posted == ["CrashLoopBackOff"], posted


def test_pods_that_recover_clear_it_and_a_new_failure_warns_again():
    stuck, fine = [pod("CrashLoopBackOff")], [pod(running=True)]
    current: dict = {}
    posted = []
    for pods, ready in ((stuck, 0), (fine, 1), (stuck, 0)):
        wanted = status.observe(relay_body(**current), deployment(desired=1, ready=ready, updated=1, replicas=1), None,
                                pods=pods, previous=current)
        wanted["conditions"] = status.merge_conditions(current.get("conditions"), wanted["conditions"], NOW)
        posted += [reason for kind, reason, _ in status.events(current, wanted) if kind == "Warning" and reason != "NoReadyReplicas"]
        current = {k: v for k, v in {**current, **status.changes(current, wanted)}.items() if v is not None}
    assert posted == ["CrashLoopBackOff", "CrashLoopBackOff"], posted


def test_a_crash_loop_reason_is_not_kept_for_pods_it_did_not_name():
    # The crash-looping pods were replaced (a fixed image rolled out; the old pods deleted):
    # the new ones, not ready yet (starting, or Pending with no room), are not crash-looping.
    crashing = pod("CrashLoopBackOff")
    before = status.observe(relay_body(), deployment(desired=1, ready=0, updated=1, replicas=1), None, pods=[crashing])
    before["conditions"] = status.merge_conditions(None, before["conditions"], NOW)
    replacement = {"metadata": {"name": "edge-2"}, "status": {"phase": "Pending"}}
    after = status.observe(relay_body(**before), deployment(desired=1, ready=0, updated=1, replicas=1), None,
                           pods=[replacement], previous=before)
    degraded = {c["type"]: c for c in after["conditions"]}["Degraded"]
    assert degraded["reason"] != "CrashLoopBackOff", degraded
