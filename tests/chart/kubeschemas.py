"""Strict JSON schemas for kubeconform, made offline from the sources we already have.

kubeconform normally downloads its schemas from GitHub, which cannot be reached here. The
same information is in the Kubernetes release's OpenAPI document
(``api/openapi-spec/swagger.json`` in the ``k8s.io/kubernetes`` Go module, which the
cluster build downloads anyway) and, for custom resources, in the CRDs themselves.

Files are named as kubeconform's ``{{ .ResourceKind }}{{ .KindSuffix }}.json`` template
expects: ``deployment-apps-v1.json``, ``service-v1.json``, ``zerotierrelay-<group>-<v>.json``.
"Strict" means every object that lists its properties rejects unknown ones, which is what
the API server's strict field validation does.
"""

from __future__ import annotations

import copy
import json
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path

INT_OR_STRING = {"oneOf": [{"type": "string"}, {"type": "integer"}]}
QUANTITY = {"oneOf": [{"type": "string"}, {"type": "number"}]}
# Types whose JSON form is looser than their declared "type: string".
LOOSE_TYPES = {
    "io.k8s.apimachinery.pkg.util.intstr.IntOrString": INT_OR_STRING,
    "io.k8s.apimachinery.pkg.api.resource.Quantity": QUANTITY,
}


def schema_filename(group: str, version: str, kind: str) -> str:
    """kubeconform's file name for a kind: the first label of the group, if any."""
    suffix = f"-{group.split('.')[0]}-{version}" if group else f"-{version}"
    return f"{kind.lower()}{suffix}.json"


def make_strict(schema: dict) -> dict:
    """A copy in which every object schema with ``properties`` forbids other keys.

    Objects that already say what extra keys may hold (``additionalProperties``), or that
    keep unknown fields (``x-kubernetes-preserve-unknown-fields``), are left as they are.
    Walks only schema positions, so a property *named* like a keyword stays a property.
    """
    out = dict(schema)
    for key in ("properties", "patternProperties", "definitions"):
        if isinstance(out.get(key), dict):
            out[key] = {name: make_strict(sub) for name, sub in out[key].items()}
    for key in ("items", "additionalProperties", "not"):
        if isinstance(out.get(key), dict):
            out[key] = make_strict(out[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if isinstance(out.get(key), list):
            out[key] = [make_strict(sub) for sub in out[key]]
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if out.get("format") == "int-or-string" or out.get("x-kubernetes-int-or-string") is True:
        for key in ("type", "format"):
            out.pop(key, None)
        out.update(INT_OR_STRING)
    return out


def builtin_schemas(swagger: dict) -> Iterator[tuple[str, dict]]:
    """(file name, strict schema) for every kind in a Kubernetes swagger.json.

    Each schema refers into a shared ``definitions`` block, so recursive types need no
    inlining.
    """
    definitions = {name: make_strict(d) for name, d in swagger["definitions"].items()}
    definitions.update(copy.deepcopy(LOOSE_TYPES))
    for name, definition in swagger["definitions"].items():
        for gvk in definition.get("x-kubernetes-group-version-kind", ()):
            schema = {"$ref": f"#/definitions/{name}", "definitions": definitions}
            yield schema_filename(gvk["group"], gvk["version"], gvk["kind"]), schema


def crd_schemas(crd: dict) -> Iterator[tuple[str, dict]]:
    """(file name, strict schema) for each served version of a CustomResourceDefinition."""
    group = crd["spec"]["group"]
    kind = crd["spec"]["names"]["kind"]
    for version in crd["spec"]["versions"]:
        if not version.get("served", True):
            continue
        schema = make_strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
        properties = schema.setdefault("properties", {})
        # The API server adds these to every custom resource, whatever the CRD says.
        properties.setdefault("apiVersion", {"type": "string"})
        properties.setdefault("kind", {"type": "string"})
        properties["metadata"] = {"type": "object"}
        schema["additionalProperties"] = False
        yield schema_filename(group, version["name"], kind), schema


def write_schemas(directory: Path, schemas: Iterable[tuple[str, dict]], only: set[str] | None = None) -> list[str]:
    """Writes the schemas (all, or those named in ``only``); returns the written names."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, schema in schemas:
        if only is None or filename in only:
            (directory / filename).write_text(json.dumps(schema))
            written.append(filename)
    return written


def go_module_dir(module: str, version: str) -> Path:
    """The module's folder in the Go module cache, downloaded through the proxy if needed."""
    result = subprocess.run(
        ["go", "mod", "download", "-json", f"{module}@{version}"],
        capture_output=True, text=True, timeout=900,
    )
    info = json.loads(result.stdout or "{}")
    if result.returncode != 0 or "Dir" not in info:
        raise RuntimeError(f"go mod download {module}@{version} failed: {info.get('Error') or result.stderr}")
    return Path(info["Dir"])
