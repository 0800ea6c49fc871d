"""What `python -m e2e.cluster` tells its user as it works: one timestamped line each."""

import time


def log(msg: str) -> None:
    print(f"[e2e.cluster {time.strftime('%H:%M:%S')}] {msg}", flush=True)
