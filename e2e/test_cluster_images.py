"""An image built with Docker on this machine runs in the cluster after `load_image`."""

import subprocess

from e2e.cluster import docker, testimages

DOCKER_TAG = "zt-relay-e2e/from-docker:1"


def test_a_docker_image_loaded_into_the_cluster_runs_in_a_pod(cluster, kubectl, namespace, load_image, wait_for_pods_ready):
    if cluster.backend == "local":
        docker.up()  # idempotent; CI runs `python -m e2e.cluster docker-up` before the tests
    subprocess.run(["docker", "load"], input=testimages.busybox_archive(DOCKER_TAG), check=True, capture_output=True, timeout=120)
    image = load_image(DOCKER_TAG)  # on --cluster=existing: the reference pushed to --image-registry
    # Never pulled where it was loaded into the node (local, kind); pulled from the registry otherwise.
    policy = "IfNotPresent" if cluster.backend == "existing" else "Never"
    kubectl("run", "from-docker", "-n", namespace, "--labels=app=from-docker", f"--image={image}",
            f"--image-pull-policy={policy}", "--", "sh", "-c", "echo loaded-from-docker && sleep 3600")
    (pod,) = wait_for_pods_ready(namespace, "app=from-docker")
    assert kubectl("logs", "-n", namespace, pod["metadata"]["name"]).stdout.strip() == "loaded-from-docker"
