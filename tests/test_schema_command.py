"""`reconciler schema`: standalone JSON Schemas an editor can load from one URL or file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator

from reconciler.manifests.schema import KINDS
from tests.conftest import FIXTURES, PROJECT, cli


def printed(*args: str) -> dict:
    result = cli("schema", *args)
    assert result.code == 0, result.err
    return json.loads(result.out)


def refs(node: object) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for v in node.values() for r in refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []


def every_manifest() -> list[dict]:
    paths = [*PROJECT.glob("manifests/**/*.yaml"), *PROJECT.glob("templates/**/*.yaml")]
    paths += FIXTURES.glob("aicore/*.yaml")
    return [doc for p in paths for doc in yaml.safe_load_all(p.read_text()) if doc]


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_has_a_standalone_2020_12_schema(kind):
    schema = printed(kind)
    Draft202012Validator.check_schema(schema)
    assert all(r.startswith("#/") for r in refs(schema)), refs(schema)


def test_kind_names_are_case_insensitive():
    assert printed("deployment") == printed("Deployment")


def test_unknown_kind_is_a_clear_error():
    result = cli("schema", "Deploymnet")
    assert result.code == 1
    assert result.err.startswith("error: unknown kind 'Deploymnet'; known kinds: ServingTemplate")


def test_the_combined_schema_accepts_every_shipped_manifest_and_rejects_a_typo():
    validator = Draft202012Validator(printed())
    docs = every_manifest()
    assert {d["kind"] for d in docs} >= {
        "ServingTemplate",
        "Configuration",
        "Deployment",
        "Artifact",
    }
    for doc in docs:
        assert not list(validator.iter_errors(doc)), doc["metadata"]["name"]
    typo = {**docs[0], "spek": {}}
    assert list(validator.iter_errors(typo))


def test_both_serving_template_forms_are_in_the_kind_schema(tmp_path: Path):
    validator = Draft202012Validator(printed("ServingTemplate"))
    upstream = yaml.safe_load((FIXTURES / "aicore/greet-gpu-serving.yaml").read_text())
    assert not list(validator.iter_errors(upstream))
    simple = {
        "apiVersion": "reconciler/v1",
        "kind": "ServingTemplate",
        "metadata": {"name": "simple"},
        "spec": {"scenarioId": "demo", "container": {"image": "x"}},
    }
    assert not list(validator.iter_errors(simple))
    simple["spec"]["container"]["imgae"] = "y"
    assert list(validator.iter_errors(simple))
