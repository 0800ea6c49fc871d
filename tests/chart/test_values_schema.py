"""values.schema.json is strict and in step with the documented values.yaml."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from tests.chart.conftest import CHART, RELEASE

SCHEMA = json.loads((CHART / "values.schema.json").read_text())
VALUES_TEXT = (CHART / "values.yaml").read_text()


def schema_paths(schema: dict, prefix: str = "") -> set[str]:
    """Dotted paths of every key the schema declares (not inside free-form objects)."""
    found = set()
    for key, sub in schema.get("properties", {}).items():
        path = f"{prefix}{key}"
        found.add(path)
        found |= schema_paths(sub, path + ".")
    return found


def documented_keys(text: str) -> dict[str, bool]:
    """Dotted path of every key in a values file -> whether a comment line precedes it."""
    keys: dict[str, bool] = {}
    stack: list[tuple[int, str]] = []
    previous = ""
    for line in text.splitlines():
        match = re.match(r"^(\s*)([A-Za-z][\w.-]*):", line)
        if match:
            indent = len(match[1])
            while stack and stack[-1][0] >= indent:
                stack.pop()
            path = ".".join([*(name for _, name in stack), match[2]])
            keys[path] = previous.lstrip().startswith("#")
            stack.append((indent, match[2]))
        if line.strip():
            previous = line
    return keys


def test_the_helper_reads_nesting_and_comments():
    keys = documented_keys("# a\na:\n  # b\n  b: 1\n  c: 2\nd: 3\n")
    assert keys == {"a": True, "a.b": True, "a.c": False, "d": False}


def test_every_declared_value_is_in_values_yaml_with_a_comment():
    keys = documented_keys(VALUES_TEXT)
    declared = schema_paths(SCHEMA) - {"global"}
    assert sorted(declared - keys.keys()) == []
    assert sorted(path for path in declared if not keys[path]) == []


def test_every_key_of_values_yaml_is_declared_in_the_schema():
    declared = schema_paths(SCHEMA)
    free_form = ("operator.resources.", "relayPodSelector.")
    undeclared = [k for k in documented_keys(VALUES_TEXT) if k not in declared and not k.startswith(free_form)]
    assert undeclared == []


def test_every_object_in_the_schema_rejects_unknown_keys():
    def loose(schema: dict, path: str) -> list[str]:
        found = [path] if "properties" in schema and schema.get("additionalProperties") is not False else []
        for key, sub in schema.get("properties", {}).items():
            found += loose(sub, f"{path}.{key}")
        return found

    assert loose(SCHEMA, "values") == []


def test_values_yaml_is_valid_yaml_with_the_defaults_the_readme_relies_on():
    values = yaml.safe_load(VALUES_TEXT)
    assert values["image"]["repository"] == "zt-relay"
    assert values["defaultRelay"]["enabled"] is False
    assert values["rbac"]["create"] is True


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("operator.logLevl=DEBUG", "additional properties 'logLevl' not allowed"),
        ("image.tag=latest", "/image/tag"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        ("operator.healthPort=80", "/operator/healthPort"),
        ("defaultRelay.name=Not_A_Name", "/defaultRelay/name"),
    ],
    ids=["typo", "latest-tag", "pull-policy", "privileged-port", "bad-relay-name"],
)
def test_bad_values_fail_install_naming_the_value(helm, setting, message):
    result = helm("template", RELEASE, str(CHART), "--set", setting, check=False)
    assert result.returncode != 0
    assert message in result.stderr
