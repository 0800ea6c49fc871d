"""kubeconform -strict accepts every rendered object, checked against offline schemas:
Kubernetes' own (from the release's OpenAPI document), the chart's CRD, and the Prometheus
Operator CRDs for the monitoring objects."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from e2e.cluster import versions
from tests.chart import kubeschemas
from tests.chart.conftest import ALL_TOGGLES, CHART, CRD_FILE, require_operator_file

PROMETHEUS_OPERATOR = ("github.com/prometheus-operator/prometheus-operator", "v0.85.0")
MONITORING_CRDS = ("podmonitors", "servicemonitors", "prometheusrules")
EXAMPLE_FILE = CHART / "examples" / "zerotierrelay.yaml"

# One xdist worker runs this module: `schema_dir` (parsing Kubernetes' whole OpenAPI document)
# is made once, not once on every worker that runs one of these tests.
pytestmark = pytest.mark.xdist_group("test_rendered_manifests")


@pytest.fixture(scope="session")
def schema_dir(tmp_path_factory, render) -> Path:
    """Strict schemas for every kind the chart can render."""
    directory = tmp_path_factory.mktemp("schemas")
    needed = {
        kubeschemas.schema_filename(*_group_version(doc["apiVersion"]), doc["kind"])
        for doc in render(*ALL_TOGGLES)
    }
    k8s = kubeschemas.go_module_dir("k8s.io/kubernetes", versions.KUBERNETES)
    swagger = json.loads((k8s / "api" / "openapi-spec" / "swagger.json").read_text())
    kubeschemas.write_schemas(directory, kubeschemas.builtin_schemas(swagger), only=needed)
    crds = [yaml.safe_load(CRD_FILE.read_text())] if CRD_FILE.exists() else []
    prom = kubeschemas.go_module_dir(*PROMETHEUS_OPERATOR) / "example" / "prometheus-operator-crd"
    crds += [yaml.safe_load((prom / f"monitoring.coreos.com_{name}.yaml").read_text()) for name in MONITORING_CRDS]
    for crd in crds:
        kubeschemas.write_schemas(directory, kubeschemas.crd_schemas(crd))
    return directory


def _group_version(api_version: str) -> tuple[str, str]:
    group, _, version = api_version.rpartition("/")
    return group, version


def _kubeconform(binary: str, schema_dir: Path, manifests: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [binary, "-strict", "-summary", "-output", "text",
         "-schema-location", f"{schema_dir}/{{{{ .ResourceKind }}}}{{{{ .KindSuffix }}}}.json", "-"],
        input=manifests, capture_output=True, text=True, timeout=120,
    )


@pytest.mark.parametrize("values", [(), ALL_TOGGLES], ids=["defaults", "all-toggles"])
def test_kubeconform_strict_accepts_every_rendered_object(kubeconform, schema_dir, render_text, values):
    if "defaultRelay.enabled=true" in values:
        require_operator_file(CRD_FILE)
    result = _kubeconform(kubeconform, schema_dir, render_text(*values))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Invalid: 0, Errors: 0, Skipped: 0" in result.stdout


def test_kubeconform_strict_rejects_an_unknown_field(kubeconform, schema_dir, render_text):
    # The check must be able to fail: a misspelt field in a rendered Deployment.
    manifests = render_text().replace("  strategy:\n", "  stratgy:\n", 1)
    assert "stratgy" in manifests
    result = _kubeconform(kubeconform, schema_dir, manifests)
    assert result.returncode != 0
    assert "stratgy" in result.stdout


def test_the_default_relay_is_checked_against_the_crd_schema(schema_dir):
    crd = yaml.safe_load(require_operator_file(CRD_FILE).read_text())
    names = [name for name, _ in kubeschemas.crd_schemas(crd)]
    assert names and all((schema_dir / name).exists() for name in names)


@pytest.mark.parametrize("example", sorted(EXAMPLE_FILE.parent.glob("*.yaml")), ids=lambda p: p.stem)
def test_the_readme_example_relays_pass_the_crd_schema(kubeconform, schema_dir, example):
    require_operator_file(CRD_FILE)
    result = _kubeconform(kubeconform, schema_dir, example.read_text())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Valid: 1, Invalid: 0, Errors: 0" in result.stdout
