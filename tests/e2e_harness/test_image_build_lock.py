"""e2e.images.build_image from several processes at once (xdist workers, the two parts of
`.ci/run`): one builds, the others wait and reuse its image, instead of two docker builds and
prunes at once (seen under -n 3: 'a prune operation is already running', two tests in error)."""

import threading
import time

from e2e import images


def test_concurrent_builds_of_one_image_run_one_at_a_time_and_build_once(monkeypatch, tmp_path):
    monkeypatch.setattr(images, "CACHE_DIR", tmp_path)
    monkeypatch.setattr(images, "ensure_docker", lambda: None)
    monkeypatch.setattr(images, "build_base", lambda: "base")
    monkeypatch.setattr(images, "inputs_digest", lambda base: "digest")
    monkeypatch.setattr(images, "build_wheels", lambda: None)
    labels: dict[str, str] = {}
    monkeypatch.setattr(images, "image_label", lambda tag, label: labels.get(tag))
    running, overlaps, builds = [0], [], []
    lock = threading.Lock()

    def fake_run(cmd, **kwargs):
        with lock:
            running[0] += 1
            overlaps.append(running[0])
        time.sleep(0.2)  # a build's span, for the other thread to arrive in
        if cmd[:2] == ["docker", "build"]:
            builds.append(cmd)
            labels[cmd[cmd.index("--tag") + 1]] = "digest"
        with lock:
            running[0] -= 1

    monkeypatch.setattr(images, "_run", fake_run)
    # _built is per process: each thread plays a process that has not built yet.
    monkeypatch.setattr(images, "_built", type("PerCall", (set,), {"__contains__": lambda self, tag: False})())
    threads = [threading.Thread(target=images.build_image, args=("zt-relay:test",)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert max(overlaps) == 1, overlaps
    assert len(builds) == 1, builds
