"""Manifests the harness's own e2e tests deploy (plain dicts, busybox image)."""

HTTP_PORT = 8080


def web_deployment(name: str, image: str, replicas: int = 1) -> dict:
    """busybox httpd serving its own pod name on HTTP_PORT, non-root, with a readiness probe."""
    labels = {"app": name}
    script = (
        "hostname > /www/index.html && echo serving $(hostname) && "
        f"exec httpd -f -p {HTTP_PORT} -h /www"
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 10001},
                    "containers": [
                        {
                            "name": "web",
                            "image": image,
                            "imagePullPolicy": "IfNotPresent",
                            "command": ["sh", "-c", script],
                            "ports": [{"containerPort": HTTP_PORT}],
                            "readinessProbe": {"tcpSocket": {"port": HTTP_PORT}, "periodSeconds": 1},
                            "volumeMounts": [{"name": "www", "mountPath": "/www"}],
                            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
                        }
                    ],
                    "volumes": [{"name": "www", "emptyDir": {}}],
                },
            },
        },
    }


def service(name: str, type_: str = "ClusterIP", *, external_traffic_policy: str | None = None) -> dict:
    spec: dict = {"type": type_, "selector": {"app": name}, "ports": [{"port": 80, "targetPort": HTTP_PORT}]}
    if external_traffic_policy:
        spec["externalTrafficPolicy"] = external_traffic_policy
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}


def sleeper_pod(name: str, image: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001},
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {"name": "main", "image": image, "imagePullPolicy": "IfNotPresent", "command": ["sleep", "3600"]}
            ],
        },
    }
