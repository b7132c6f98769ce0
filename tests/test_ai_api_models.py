"""The AI API's request models take their ids, patterns and limits from the manifests' JSON
Schemas, so that the API accepts nothing a manifest would refuse (no Docker, no server)."""

from __future__ import annotations

import re
from typing import get_args

import pytest
from pydantic import ValidationError

from reconciler.api import models
from reconciler.api.models import (
    ArtifactBinding,
    ArtifactIn,
    BulkItem,
    ConfigurationIn,
    DeploymentIn,
    DeploymentPatch,
    ParameterBinding,
    free_id,
)
from reconciler.manifests.schema import definition, field


def _pattern(model: type, name: str) -> str | None:
    """The pattern pydantic enforces on one field of a model (from its JSON Schema)."""
    prop = model.model_json_schema()["properties"][name]
    if "pattern" in prop:
        return prop["pattern"]
    found = [b["pattern"] for b in prop.get("anyOf", []) if "pattern" in b]
    return found[0] if found else None


def test_the_models_patterns_are_the_schemas():
    id_pattern = definition("name")["pattern"]
    assert id_pattern == models.ID_PATTERN
    for model, name in [
        (ConfigurationIn, "executableId"),
        (ConfigurationIn, "scenarioId"),
        (ArtifactBinding, "artifactId"),
        (ArtifactIn, "scenarioId"),
        (DeploymentIn, "configurationId"),
        (DeploymentPatch, "configurationId"),
        (BulkItem, "id"),
    ]:
        assert _pattern(model, name) == id_pattern, (model.__name__, name)
    assert _pattern(DeploymentIn, "ttl") == field("deployment", "spec", "ttl")["pattern"]
    for model, binding in [
        (ParameterBinding, "parameterBindings"),
        (ArtifactBinding, "inputArtifactBindings"),
    ]:
        key = field("configuration", "spec", binding, "key")
        prop = model.model_json_schema()["properties"]["key"]
        assert (prop["minLength"], prop["maxLength"]) == (key["minLength"], key["maxLength"])
    assert get_args(models.ArtifactKind) == tuple(field("artifact", "spec", "kind")["enum"])


@pytest.mark.parametrize("bad", ["modèle-v1", "тест-конфиг", "conf\u0660\u0661\u0662"])
def test_a_unicode_id_is_refused(bad):
    # Python's and pydantic's \w take these; the manifests' schema does not.
    assert re.fullmatch(r"[\w.-]{4,64}", bad)
    with pytest.raises(ValidationError):
        DeploymentIn(configurationId=bad)
    with pytest.raises(ValidationError):
        BulkItem(id=bad, targetStatus="STOPPED")
    assert DeploymentIn(configurationId="tiny-v1").configurationId == "tiny-v1"


@pytest.mark.parametrize(
    ("wanted", "expected"),
    [
        ("tiny-v2 from the sdk", "tiny-v2-from-the-sdk"),
        ("Modèle über", "Modele-uber"),
        ("x" * 100, "x" * 56),
    ],
)
def test_free_id_follows_the_schemas_pattern(wanted, expected):
    assert free_id(wanted, lambda _: False) == expected


@pytest.mark.parametrize("wanted", ["模型", "a", "--", "é", "ab cd", "x" * 100, "İstanbul"])
def test_a_made_up_id_always_matches(wanted):
    pattern = re.compile(definition("name")["pattern"])
    taken = {free_id(wanted, lambda _: False)}
    for _ in range(3):
        made = free_id(wanted, taken.__contains__)
        assert pattern.match(made) and made not in taken, made
        taken.add(made)


@pytest.mark.parametrize("ttl", ["9999999d", "9" * 5000 + "m"])
def test_a_ttl_beyond_any_date_is_refused_not_a_crash(ttl):
    # Before, the pattern took any number of digits and int() of 4301 digits raised: a 500.
    with pytest.raises(ValidationError):
        DeploymentIn(configurationId="tiny-v1", ttl=ttl)
    assert DeploymentIn(configurationId="tiny-v1", ttl="999999d").ttl == "999999d"
