"""A real single-node Kubernetes assembled on this machine for the e2e tests.

`python -m e2e.cluster deps|build|docker-up|up|down|status` (see `__main__`). Pieces:
`build` (pinned binaries from the Go module proxy), `paths` (where things live), `network`
(sink routes, test hosts, forward rules), `node` (the processes), `lb` (LoadBalancer stand-in),
`image_import` (Docker image -> the cluster's containerd).
"""
