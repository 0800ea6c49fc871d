"""`python -m e2e.cluster COMMAND` - the local single-node Kubernetes for the e2e tests.

  deps       install the Debian packages (containerd, runc, CNI plugins, iptables, ...)
  build      build the pinned binaries into the cache (15-25 min cold on 2 cores, 1 s when cached)
  docker-up  start dockerd if it is not running
  up         start the cluster (idempotent; clears stale state first); prints KUBECONFIG
  down       stop it and remove every trace (processes, mounts, netns, routes, rules, state)
  status     show processes and node readiness (exit 1 if not Ready)
  logs       print the last lines of every cluster process's log (for CI failures)
"""

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m e2e.cluster", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["deps", "build", "docker-up", "up", "down", "status", "logs"])
    parser.add_argument("--lines", type=int, default=40, help="with `logs`: lines per log (default %(default)s)")
    args = parser.parse_args(argv)
    if args.command == "deps":
        from e2e.cluster import deps

        return deps.install()
    if args.command == "build":
        from e2e.cluster import build

        build.build_all()
        return 0
    if args.command == "docker-up":
        from e2e.cluster import docker

        return docker.up()
    from e2e.cluster import node

    if args.command == "logs":
        return node.print_logs(args.lines)
    return {"up": node.up, "down": node.down, "status": node.status}[args.command]()


if __name__ == "__main__":
    sys.exit(main())
