"""/v2/lm/artifacts: a resource group's artifacts; POST registers one as a manifest
(reconciler.api.writes), its URL checked as a tenant's (an https:// one: its origin must be in
Settings spec.objectStoreEndpoints)."""

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import PlainTextResponse

from ...manifests.render import artifact_url_problem
from ...manifests.store_urls import endpoint_problem, is_store_url, parse_store_url
from .. import resources as res
from .. import writes
from ..context import ApiContext, Caller, CallerDep, ContextDep
from ..errors import ApiError
from ..models import ArtifactIn, ArtifactKind, PagingDep, free_id

router = APIRouter(prefix="/v2/lm")

Name = Annotated[str | None, Query(max_length=256)]
Search = Annotated[str | None, Query(alias="$search", max_length=256)]


def artifacts(
    ctx: ApiContext,
    who: Caller,
    scenario_id: str | None,
    name: str | None,
    kind: str | None,
    search: str | None,
) -> list[dict[str, Any]]:
    """The caller's group's artifacts that pass the filters (search: part of the name, any
    case)."""
    state = ctx.state()
    return [
        res.artifact(state, a)
        for (group, _), a in sorted(state.repo.artifacts.items())
        if group == who.resource_group
        and (scenario_id is None or a.scenario_id == scenario_id)
        and (name is None or a.name == name)
        and (kind is None or a.kind == kind)
        and (search is None or search.lower() in a.name.lower())
    ]


@router.get("/artifacts")
def list_artifacts(
    ctx: ContextDep,
    who: CallerDep,
    paging: PagingDep,
    scenarioId: str | None = None,
    name: Name = None,
    kind: ArtifactKind | None = None,
    search: Search = None,
) -> dict[str, Any]:
    items = artifacts(ctx, who, scenarioId, name, kind, search)
    return {"count": len(items), "resources": paging.page(items)}


# Before /artifacts/{artifactId}, which would take "$count" for an id.
@router.get("/artifacts/$count", response_class=PlainTextResponse)
def count_artifacts(
    ctx: ContextDep,
    who: CallerDep,
    scenarioId: str | None = None,
    name: Name = None,
    kind: ArtifactKind | None = None,
    search: Search = None,
) -> str:
    return str(len(artifacts(ctx, who, scenarioId, name, kind, search)))


@router.get("/artifacts/{artifactId}")
def get_artifact(artifactId: str, ctx: ContextDep, who: CallerDep) -> dict[str, Any]:
    state = ctx.state()
    a = state.repo.artifacts.get((who.resource_group, artifactId))
    if a is None:
        raise ApiError(404, f"Artifact {artifactId} not found")
    return res.artifact(state, a)


@router.post("/artifacts", status_code=201)
def create_artifact(body: ArtifactIn, ctx: ContextDep, who: CallerDep) -> dict[str, Any]:
    state = ctx.state()
    # A tenant's file: URL may point only into the root's models/ folder or an operator's
    # Settings artifactRoots (symlinks followed): never at the host's other files.
    problem = artifact_url_problem(state.repo, body.url, tenant=True)
    if problem is None and is_store_url(body.url):
        # The reconciler downloads an https:// model from its own host: a tenant may name only
        # an origin the operator allowed, as for an object-store secret's endpoint (SSRF). An
        # operator's artifact in git may name any.
        parsed = parse_store_url(body.url)
        allowed = state.repo.settings.object_store_endpoints
        refused = endpoint_problem(allowed, parsed.origin) if parsed.scheme == "https" else None
        problem = f"is refused: {refused}" if refused else None
    if problem is not None:
        raise ApiError(400, f"Artifact url {body.url!r} {problem}")
    new_id = free_id(body.name, lambda i: (who.resource_group, i) in state.repo.artifacts)
    spec: dict[str, Any] = {"kind": body.kind, "url": body.url, "scenarioId": body.scenarioId}
    if body.description:
        spec["description"] = body.description
    labels = {label.key: label.value for label in body.labels}
    writes.create(ctx, who, "Artifact", new_id, spec, "POST /v2/lm/artifacts", labels)
    return {"id": new_id, "message": "Artifact acknowledged", "url": body.url}
