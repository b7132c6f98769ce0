"""The AI API's request shapes: bodies (pydantic models, which also document the API in its
OpenAPI document), paging, and the ids the API makes up.

Ids, patterns and limits that the manifests also have come from the manifests' JSON Schemas
(reconciler.manifests.schema), never from a copy here: what the API accepts, the manifest it
writes must accept too. Limits the manifests lack (labels, a version id, a list's length) are
AI Core's, the API's own.
"""

import re
import secrets
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from ..manifests.schema import definition, field

# An AI Core id (a manifest's metadata.name): configurations, artifacts, deployments,
# executables and scenarios alike.
ID_PATTERN: str = definition("name")["pattern"]
TTL_PATTERN: str = field("deployment", "spec", "ttl")["pattern"]
_BINDING_KEY = field("configuration", "spec", "parameterBindings", "key")
_BINDING_VALUE = field("configuration", "spec", "parameterBindings", "value")
_ARTIFACT_KEY = field("configuration", "spec", "inputArtifactBindings", "key")
_DESCRIPTION = field("artifact", "spec", "description")

# The schema's enum, spelled out because a type must be static; tests/test_ai_api_models.py
# holds it equal to field("artifact", "spec", "kind")["enum"].
ArtifactKind = Literal["model", "dataset", "resultset", "other"]

# AI Core's form of an artifact URL (scheme://...): narrower than the manifests' (which also
# take file:relative/path), because an API caller has no GitOps root to be relative to.
ARTIFACT_URL_PATTERN = r"^[a-zA-Z][a-zA-Z0-9+.-]*://?[^\s]*$"


# -- request bodies -----------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ParameterBinding(_Body):
    key: str = Field(min_length=_BINDING_KEY["minLength"], max_length=_BINDING_KEY["maxLength"])
    value: str = Field(max_length=_BINDING_VALUE["maxLength"])


class ArtifactBinding(_Body):
    key: str = Field(min_length=_ARTIFACT_KEY["minLength"], max_length=_ARTIFACT_KEY["maxLength"])
    artifactId: str = Field(pattern=ID_PATTERN)


class ConfigurationIn(_Body):
    name: str = Field(min_length=1, max_length=256)
    executableId: str = Field(pattern=ID_PATTERN)
    scenarioId: str = Field(pattern=ID_PATTERN)
    versionId: str | None = Field(default=None, max_length=256)
    parameterBindings: list[ParameterBinding] = Field(default_factory=list, max_length=1000)
    inputArtifactBindings: list[ArtifactBinding] = Field(default_factory=list, max_length=1000)


class Label(_Body):
    key: str = Field(min_length=1, max_length=256)
    value: str = Field(max_length=5000)


class ArtifactIn(_Body):
    name: str = Field(min_length=1, max_length=256)
    kind: ArtifactKind
    url: str = Field(pattern=ARTIFACT_URL_PATTERN, max_length=1024)
    scenarioId: str = Field(pattern=ID_PATTERN)
    description: str | None = Field(default=None, max_length=_DESCRIPTION["maxLength"])
    labels: list[Label] = Field(default_factory=list, max_length=100)


class DeploymentIn(_Body):
    configurationId: str = Field(pattern=ID_PATTERN)
    ttl: str | None = Field(default=None, pattern=TTL_PATTERN)


class DeploymentPatch(_Body):
    targetStatus: Literal["STOPPED"] | None = None
    configurationId: str | None = Field(default=None, pattern=ID_PATTERN)


class BulkItem(_Body):
    id: str = Field(pattern=ID_PATTERN)
    targetStatus: Literal["STOPPED", "DELETED"]


class BulkPatch(_Body):
    deployments: list[BulkItem] = Field(min_length=1, max_length=100)


# -- paging (AI Core documents $top/$skip; SAP's SDK sends top/skip) ----------------------------


@dataclass(frozen=True)
class Paging:
    top: int | None
    skip: int

    def page(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return items[self.skip :] if self.top is None else items[self.skip : self.skip + self.top]


def paging(
    top: Annotated[int | None, Query(alias="$top", ge=0, le=10000)] = None,
    top_plain: Annotated[int | None, Query(alias="top", ge=0, le=10000)] = None,
    skip: Annotated[int | None, Query(alias="$skip", ge=0)] = None,
    skip_plain: Annotated[int | None, Query(alias="skip", ge=0)] = None,
) -> Paging:
    return Paging(top if top is not None else top_plain, skip or skip_plain or 0)


PagingDep = Annotated[Paging, Depends(paging)]

# -- ids the API makes up -------------------------------------------------------------------------

# The id pattern's parts: one character class and a length range. Read from the schema's pattern
# (so the ids made here follow it), and loud at import if the schema's pattern takes another
# shape that free_id could not honour.
_ID_SHAPE = re.fullmatch(r"\^\[([^\]]+)\]\{(\d+),(\d+)\}\$", ID_PATTERN)
if _ID_SHAPE is None:
    raise RuntimeError(f"free_id cannot follow the schema's id pattern {ID_PATTERN!r}")
_ID = re.compile(ID_PATTERN)
_NOT_ID = re.compile(f"[^{_ID_SHAPE[1]}]+")
_ID_MIN, _ID_MAX = int(_ID_SHAPE[2]), int(_ID_SHAPE[3])
_SUFFIX = 7  # "-" and secrets.token_hex(3)


def free_id(wanted: str, taken: Callable[[str], bool]) -> str:
    """`wanted` (a display name) made a valid id, with a random suffix when it is taken.
    Accents are dropped ("Modèle" -> "Modele") and other characters the id pattern refuses
    become "-", so an id is ASCII like every manifest name."""
    ascii_only = unicodedata.normalize("NFKD", wanted).encode("ascii", "ignore").decode()
    base = _NOT_ID.sub("-", ascii_only).strip("-")[: _ID_MAX - _SUFFIX - 1] or "item"
    if len(base) < _ID_MIN:
        base = f"{base}-{secrets.token_hex(2)}"
    candidate = base
    # Bounded: a clash after this many random suffixes means something else is wrong, and an
    # endless loop would hold the request (and its worker thread) forever.
    for _ in range(100):
        if not taken(candidate) and _ID.match(candidate):
            return candidate
        candidate = f"{base}-{secrets.token_hex(3)}"
    raise RuntimeError(f"no free id for {wanted!r}")
