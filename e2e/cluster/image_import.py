"""Put images into the local cluster's containerd (namespace k8s.io), where pods find them.

There is no registry: pods must use a non-`latest` tag with `imagePullPolicy: IfNotPresent`
(or `Never`). The kubelet is configured never to garbage-collect images.
"""

import subprocess

from e2e.cluster import paths
from e2e.cluster.configs import StatePaths


def _ctr(*args: str) -> list[str]:
    sock = StatePaths(paths.state_dir()).containerd_socket
    return ["ctr", "--address", str(sock), "--namespace", "k8s.io", *args]


def import_archive(archive: bytes, timeout: float = 300) -> None:
    """Import a `docker save`-format tar (bytes)."""
    subprocess.run(_ctr("images", "import", "-"), input=archive, check=True, capture_output=True, timeout=timeout)


def import_docker_image(tag: str, timeout: float = 600) -> None:
    """`docker save TAG | ctr images import -`: a Docker image built here, into the cluster.

    Raises ValueError for a `latest` or untagged reference (it would be pulled, and fail).
    """
    name, _, version = tag.rpartition(":")
    if not name or "/" in version or version in ("", "latest"):
        raise ValueError(f"image {tag!r}: give an explicit, non-latest tag (pods cannot pull it back)")
    # The context manager closes both pipes and waits for `docker save`.
    with subprocess.Popen(["docker", "save", tag], stdout=subprocess.PIPE, stderr=subprocess.PIPE) as save:
        imp = subprocess.run(_ctr("images", "import", "-"), stdin=save.stdout, capture_output=True, timeout=timeout)
        save.stdout.close()
        save_err = save.stderr.read().decode(errors="replace")
    if save.returncode != 0:
        raise RuntimeError(f"docker save {tag} failed: {save_err.strip()}")
    if imp.returncode != 0:
        raise RuntimeError(f"ctr images import of {tag} failed: {imp.stderr.decode(errors='replace').strip()}")


def has_image(tag: str) -> bool:
    """True if containerd holds `tag` (short Docker names are normalised like the kubelet does)."""
    ref = tag if "/" in tag.split(":")[0] and "." in tag.split("/")[0] else f"docker.io/{tag if '/' in tag else 'library/' + tag}"
    out = subprocess.run(_ctr("images", "ls", "-q"), capture_output=True, text=True, check=True).stdout
    return ref in out.split()
