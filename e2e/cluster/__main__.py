"""`python -m e2e.cluster COMMAND` - the local single-node Kubernetes for the e2e tests.

  deps        install the Debian packages (containerd, runc, CNI plugins, iptables, ...)
  build       build the pinned binaries into the cache (15-25 min cold on 2 cores, 1 s when cached)
  docker-up   start dockerd if it is not running
  up          start the cluster (idempotent; a broken one is rebuilt unless another run holds it)
  down        stop it and remove every trace of ours (processes, mounts, netns, routes, rules,
              sysctls, state); refuses while another test run holds the cluster (--force)
  status      show processes and node health (exit 1 unless ok)
  logs        print the last lines of every cluster process's log (for CI failures)
  stop NAME   stop one component (e.g. kube-apiserver) of a running cluster
  start NAME  start it again and wait until it is ready
  restart NAME...  stop these components at once, start each again in order, wait until ready
"""

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m e2e.cluster", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["deps", "build", "docker-up", "up", "down", "status", "logs", "stop", "start", "restart"])
    parser.add_argument("component", nargs="*", help="with stop/start: the component, with restart: one or more (see e2e.cluster.components)")
    parser.add_argument("--lines", type=int, default=40, help="with `logs`: lines per log (default %(default)s)")
    parser.add_argument("--force", action="store_true", help="with `down`: even if another test run holds the cluster")
    parser.add_argument(
        "--kube-chains", action="store_true",
        help="with `down`: also remove kube-proxy's and the kubelet's fixed KUBE-* chains when no cluster of "
        "ours ran (traces of a crashed older run; never use it beside another cluster)",
    )
    args = parser.parse_args(argv)
    if args.command in ("stop", "start", "restart") and not args.component:
        parser.error(f"{args.command} needs a component name")
    if args.command in ("stop", "start") and len(args.component) > 1:
        parser.error(f"{args.command} takes one component name")
    if args.command not in ("stop", "start", "restart") and args.component:
        parser.error(f"{args.command} takes no component name")
    from e2e.cluster import locks

    locks.adopt_inherited_fd()
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
    if args.command == "down":
        return node.down(kube_chains=True if args.kube_chains else None, force=args.force)
    if args.command in ("stop", "start"):
        return getattr(node, args.command)(args.component[0])
    if args.command == "restart":
        return node.restart(args.component)
    return {"up": node.up, "status": node.status}[args.command]()


if __name__ == "__main__":
    sys.exit(main())
