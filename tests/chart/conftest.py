"""Fixtures for chart tests: helm, helm-unittest and kubeconform, run for real.

The binaries come from `python -m e2e.cluster build` (built from the Go module proxy into
the project cache). Without them the tests skip locally and fail under CI=true.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from e2e.cluster import paths, versions

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "zt-relay"
CRD_FILE = CHART / "crds" / "zerotierrelays.yaml"
RBAC_RULES_FILE = CHART / "files" / "operator-rbac.yaml"
"""The operator's RBAC rules, written once: the chart renders them, the e2e install reads them."""
RELEASE = "zt-relay"
NAMESPACE = "relays"

# Every optional object on, so lint, schema and kubeconform see all templates.
ALL_TOGGLES = (
    "defaultRelay.enabled=true",
    "monitoring.podMonitor.enabled=true",
    "monitoring.serviceMonitor.enabled=true",
    "monitoring.prometheusRule.enabled=true",
    "networkPolicy.enabled=true",
    "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.team=monitoring",
    "operator.extraArgs[0]=--namespace=relays",
)


def skip_unless_ci(reason: str) -> None:
    """A missing prerequisite skips a local run but fails CI, which must check everything."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def require_operator_file(path: Path) -> Path:
    """Files the operator's author delivers (CRD, RBAC); the chart is checked against them."""
    if not path.exists():
        skip_unless_ci(f"{path.relative_to(REPO)} (from the operator's author) is not in the repo yet")
    return path


def tool(name: str) -> str:
    path = Path(paths.binary(name))
    if not path.exists():
        skip_unless_ci(f"{path} is missing: build it with `python -m e2e.cluster build`")
    return str(path)


@pytest.fixture(scope="session")
def helm() -> Callable[..., subprocess.CompletedProcess]:
    """Runs helm (with the unittest plugin available); returns the finished process."""
    binary = tool("helm")
    env = paths.helm_env()

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([binary, *args], capture_output=True, text=True, env=env, timeout=120, cwd=REPO)
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    return run


@pytest.fixture(scope="session")
def kubeconform() -> str:
    return tool("kubeconform")


# libyaml's safe loader where PyYAML has it: the same documents for ~10x less CPU (a render with
# the CRD took ~60 ms to parse in pure Python).
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def set_args(values: tuple[str, ...]) -> list[str]:
    return [arg for value in values for arg in ("--set", value)]


@pytest.fixture(scope="session")
def render(helm) -> Callable[..., list[dict]]:
    """`helm template` of the chart as parsed documents (CRDs included)."""

    def run(*values: str, include_crds: bool = True) -> list[dict]:
        args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE,
                "--kube-version", versions.KUBERNETES.removeprefix("v"), *set_args(values)]
        if include_crds:
            args.append("--include-crds")
        return [doc for doc in yaml.load_all(helm(*args).stdout, Loader=SAFE_LOADER) if doc]

    return run


@pytest.fixture(scope="session")
def render_text(helm) -> Callable[..., str]:
    def run(*values: str) -> str:
        return helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--include-crds",
                    "--kube-version", versions.KUBERNETES.removeprefix("v"), *set_args(values)).stdout

    return run
