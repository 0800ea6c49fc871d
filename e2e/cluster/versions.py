"""Pinned versions of everything the harness builds from the Go module proxy.

One place so a bump is one edit; the cache directory is keyed by the Kubernetes version, so a
bump builds into a fresh directory instead of mixing binaries of two releases.
"""

KUBERNETES = "v1.37.2"
# The staging modules (k8s.io/api, client-go, ...) are released as v0.<minor>.<patch>.
STAGING = "v0." + KUBERNETES.removeprefix("v1.")
ETCD = "v3.7.3"
METRICS_SERVER = "v0.8.0"
COREDNS = "v1.15.0"
HELM = "v3.22.0"
KUBECONFORM = "v0.8.0"
HELM_UNITTEST = "v1.1.2"
