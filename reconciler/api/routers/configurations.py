"""/v2/lm/configurations: a resource group's configurations; POST writes a new one as a
manifest (reconciler.api.writes)."""

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import PlainTextResponse

from .. import resources as res
from .. import writes
from ..context import ApiContext, Caller, CallerDep, ContextDep
from ..errors import ApiError
from ..models import ConfigurationIn, PagingDep, free_id

router = APIRouter(prefix="/v2/lm")

Search = Annotated[str | None, Query(alias="$search", max_length=256)]


def configurations(
    ctx: ApiContext,
    who: Caller,
    scenario_id: str | None,
    executable_ids: str | None,
    search: str | None,
) -> list[dict[str, Any]]:
    """The caller's group's configurations that pass the filters (executable_ids: a comma
    separated list; search: part of the name, any case)."""
    state = ctx.state()
    wanted = set(executable_ids.split(",")) if executable_ids else None
    return [
        res.configuration(state, c)
        for (group, _), c in sorted(state.repo.configurations.items())
        if group == who.resource_group
        and (scenario_id is None or c.scenario_id == scenario_id)
        and (wanted is None or c.executable_id in wanted)
        and (search is None or search.lower() in c.name.lower())
    ]


@router.get("/configurations")
def list_configurations(
    ctx: ContextDep,
    who: CallerDep,
    paging: PagingDep,
    scenarioId: str | None = None,
    executableIds: str | None = None,
    search: Search = None,
) -> dict[str, Any]:
    items = configurations(ctx, who, scenarioId, executableIds, search)
    return {"count": len(items), "resources": paging.page(items)}


# Before /configurations/{configurationId}, which would take "$count" for an id.
@router.get("/configurations/$count", response_class=PlainTextResponse)
def count_configurations(
    ctx: ContextDep,
    who: CallerDep,
    scenarioId: str | None = None,
    executableIds: str | None = None,
    search: Search = None,
) -> str:
    return str(len(configurations(ctx, who, scenarioId, executableIds, search)))


@router.get("/configurations/{configurationId}")
def get_configuration(configurationId: str, ctx: ContextDep, who: CallerDep) -> dict[str, Any]:
    state = ctx.state()
    c = state.repo.configurations.get((who.resource_group, configurationId))
    if c is None:
        raise ApiError(404, f"Configuration {configurationId} not found")
    return res.configuration(state, c)


@router.post("/configurations", status_code=201)
def create_configuration(body: ConfigurationIn, ctx: ContextDep, who: CallerDep) -> dict[str, Any]:
    state = ctx.state()
    template = state.repo.templates.get(body.executableId)
    if template is None:
        raise ApiError(400, f"Executable {body.executableId} does not exist")
    if template.scenario_id != body.scenarioId:
        raise ApiError(
            400,
            f"Executable {body.executableId} belongs to scenario {template.scenario_id}, "
            f"not {body.scenarioId}",
        )
    new_id = free_id(body.name, lambda i: (who.resource_group, i) in state.repo.configurations)
    spec: dict[str, Any] = {"executableId": body.executableId, "scenarioId": body.scenarioId}
    if body.versionId:
        spec["versionId"] = body.versionId
    if body.parameterBindings:
        spec["parameterBindings"] = [b.model_dump() for b in body.parameterBindings]
    if body.inputArtifactBindings:
        spec["inputArtifactBindings"] = [b.model_dump() for b in body.inputArtifactBindings]
    writes.create(ctx, who, "Configuration", new_id, spec, "POST /v2/lm/configurations")
    return {"id": new_id, "message": "Configuration created"}
