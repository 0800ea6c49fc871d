"""A real single-node Kubernetes assembled on this machine for the e2e tests.

`python -m e2e.cluster deps|build|docker-up|up|down|status|logs|stop|start` (see `__main__`).
Modules, one job each:
  versions, paths     pinned versions; where binaries, state, logs and the kubeconfig live
  build               the pinned binaries from the Go module proxy (plus the helm plugin dir)
  layout              the address plan (pods, Services, LB pool, test hosts, sink)
  components          THE list of cluster processes: order, commands, readiness probes
  configs             config files and command lines of every process (pure)
  pki                 certificates and kubeconfigs (kubeadm init phases)
  startup             `up`, and `start`/`stop` of one component
  teardown            `down`: removes every trace of ours, and only ours
  health              `status`; ok / slow / broken / absent
  locks               one up/down at a time; test runs hold the cluster shared
  cgroups, firewall   the harness's markers: own cgroups; own ZTR-E2E-* chains (no egress)
  kube_router_view    what kube-router sees of the firewall and may write: its own chains and
                      ipsets only (pure); kube_router_shim and kube_router_bin/ run it on its PATH
  network             sink namespace and routes, test-host namespaces
  sysctls             kernel settings recorded by `up`, restored by `down`
  processes           pid files and logs of the host processes
  inventory           every trace of ours on the machine (what `down` must have removed)
  control             `stopped("kube-apiserver")` for tests that take a component away
  lb                  the LoadBalancer stand-in controller (a test stand-in)
  archives, pause, testimages, image_import   images without a registry
  kubectl             kubectl wrapper with timeouts, and deadline polling
  deps, docker        Debian packages; starting dockerd
"""
