"""A real single-node Kubernetes assembled on this machine for the e2e tests.

`python -m e2e.cluster deps|build|docker-up|up|down|status|logs` (see `__main__`). Modules:
  versions, paths   pinned versions; where binaries, state, logs and the kubeconfig live
  build             the pinned binaries from the Go module proxy (plus the helm plugin dir)
  layout            the address plan (pods, Services, LB pool, test hosts, sink)
  network           safety net (sink routes, forward rules), test-host namespaces
  configs           config files and command lines of every process (pure)
  node, processes   `up`/`down`/`status`; pid files and logs of the host processes
  inventory         every trace of the cluster on the machine (what `down` must remove)
  lb                the LoadBalancer stand-in controller (a test stand-in)
  archives, pause, testimages, image_import   images without a registry
  kubectl           kubectl wrapper with timeouts, and deadline polling
  deps, docker      Debian packages; starting dockerd
"""
