"""Where the harness keeps binaries, state and logs.

Binaries live in a per-user cache reused across clones (`ZT_RELAY_CACHE` overrides it); the
running cluster's state lives under one state directory (`ZT_RELAY_E2E_STATE`, default
/var/lib/zt-relay-e2e) so `down` can remove it in one sweep.
"""

import hashlib
import os
from pathlib import Path

from e2e.cluster import versions


def cache_root() -> Path:
    """The cache directory for everything built from source (binaries, Go wrapper modules)."""
    default = Path.home() / ".cache" / "zt-relay"
    return Path(os.environ.get("ZT_RELAY_CACHE", default))


def tool_dir(name: str, version: str | None = None) -> Path:
    """One tool's build (its wrapper module in `src`, its binaries in `bin`), keyed by its own
    pinned version: bumping etcd rebuilds etcd only, never Kubernetes (25 min here)."""
    return cache_root() / "tools" / f"{name}-{version or versions.PINNED[name]}"


def bin_key(pinned: dict[str, str] | None = None) -> str:
    """A digest of every pinned version: the bin dir's name."""
    text = "\n".join(f"{k}={v}" for k, v in sorted((pinned or versions.PINNED).items()))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def bin_dir() -> Path:
    """The directory holding kubectl, kubelet, etcd, helm, kubeconform, ... (see `build`):
    symlinks into each tool's own dir, keyed by all pinned versions together."""
    return cache_root() / "bin" / bin_key()


def k8s_root() -> Path:
    """Helm's plugin and home dirs (keyed like the bin dir)."""
    return cache_root() / "helm" / bin_key()


def helm_plugins_dir() -> Path:
    """A HELM_PLUGINS directory in which `helm unittest` is installed."""
    return k8s_root() / "helm-plugins"


def helm_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """An environment in which `helm` is on PATH and `helm unittest` works.

    Helm's own config, cache and data go under the cache too, so tests never touch ~/.config.
    """
    env = dict(os.environ if base is None else base)
    env["PATH"] = f"{bin_dir()}{os.pathsep}{env.get('PATH', '')}"
    env["HELM_PLUGINS"] = str(helm_plugins_dir())
    for name, sub in (("HELM_CONFIG_HOME", "config"), ("HELM_CACHE_HOME", "cache"), ("HELM_DATA_HOME", "data")):
        env.setdefault(name, str(k8s_root() / "helm-home" / sub))
    return env


def state_dir() -> Path:
    """The running cluster's state: PKI, configs, data dirs, pid files, logs."""
    return Path(os.environ.get("ZT_RELAY_E2E_STATE", "/var/lib/zt-relay-e2e"))


def log_dir() -> Path:
    return state_dir() / "logs"


def kubeconfig_path() -> Path:
    """The cluster-admin kubeconfig of the local cluster (valid while it is up)."""
    return state_dir() / "admin.kubeconfig"


def binary(name: str) -> str:
    """The absolute path of one built binary, as a string ready for subprocess."""
    return str(bin_dir() / name)
