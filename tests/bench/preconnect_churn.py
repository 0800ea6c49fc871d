"""Backend connections ``--fallback-preconnect`` opens after a visit: what the site sees.

    python -m tests.bench.preconnect_churn                          # N = 4, 20 s, this tree
    python -m tests.bench.preconnect_churn --baseline-tree /tmp/old # and another tree's relay, same run

Each relay (a subprocess of its tree, side by side) fronts its own counting echo backend on
loopback; one visit goes through each, then the backend's accepted connections are counted
over the window (one of them is the visit's). A pooled connection that ages out unused is one
the site accepted and saw closed without a byte.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

_LISTEN = re.compile(r"relay listening on (\S+):(\d+)")


async def _count(tree: Path, size: int, seconds: float) -> int:
    accepts = 0

    async def serve(reader, writer):
        nonlocal accepts
        accepts += 1
        while data := await reader.read(65536):
            writer.write(data)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", "127.0.0.1:0", "--health-listen", "127.0.0.1:0",
        "--fallback", f"127.0.0.1:{server.sockets[0].getsockname()[1]}", "--fallback-preconnect", str(size),
        cwd=tree, env=dict(os.environ, PYTHONPATH=str(tree)), stderr=subprocess.PIPE)
    drain = None
    try:
        port = None
        while port is None:
            line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
            if not line:
                raise SystemExit(f"the relay of {tree} exited")
            if m := _LISTEN.search(line):
                port = int(m.group(2))
        drain = asyncio.ensure_future(proc.stderr.read())
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /one")
        await asyncio.wait_for(reader.readexactly(8), 10)
        writer.close()
        await asyncio.sleep(seconds)  # the window measured, not a wait for a condition
        return accepts
    finally:
        proc.terminate()
        await proc.wait()
        if drain is not None:
            await drain
        server.close()


async def _main(trees: list[Path], size: int, seconds: float) -> None:
    counts = await asyncio.gather(*(_count(tree, size, seconds) for tree in trees))
    for tree, count in zip(trees, counts):
        print(f"{tree}: {count} backend connections in {seconds:g} s after one visit (N = {size}; 1 is the visit's)")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.preconnect_churn", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=4, help="--fallback-preconnect (default 4)")
    parser.add_argument("--seconds", type=float, default=20.0, help="window after the visit (default 20)")
    parser.add_argument("--baseline-tree", metavar="DIR", help="another checkout whose relay runs beside this one")
    args = parser.parse_args()
    trees = [Path(__file__).resolve().parents[2]] + ([Path(args.baseline_tree).resolve()] if args.baseline_tree else [])
    asyncio.run(_main(trees, args.size, args.seconds))


if __name__ == "__main__":
    main()
