"""Pinned versions of everything the harness builds from the Go module proxy.

One place so a bump is one edit. Each tool is built into a cache directory keyed by its own
version (`paths.tool_dir`), so bumping one tool rebuilds that tool only, and the bin dir
everybody uses is keyed by all of them (`paths.bin_dir`), so it never mixes releases.
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
# The NetworkPolicy enforcer (its firewall controller only). The only version the module
# proxy serves here: later ones answer "403 This module version is not available". Its
# advisory GHSA-phqm-jgc3-qf8g is in the service proxy (--run-service-proxy), which is off.
# SIG Network's kube-network-policies (v0.7.0, v0.8.0) cannot run here: see README.
KUBE_ROUTER = "v2.1.0"
# The CNCF distribution registry (`registry serve`): run on loopback by `up` so that the
# --cluster=existing backend (images pushed to a registry, pulled by the cluster) runs here too.
REGISTRY = "v3.1.2"

PINNED = {
    "kubernetes": KUBERNETES,
    "etcd": ETCD,
    "coredns": COREDNS,
    "metrics-server": METRICS_SERVER,
    "helm": HELM,
    "kubeconform": KUBECONFORM,
    "helm-unittest": HELM_UNITTEST,
    "kube-router": KUBE_ROUTER,
    "registry": REGISTRY,
}
"""Tool (the build's wrapper-module name) -> version: every pin, for the cache keys."""
