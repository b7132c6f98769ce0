"""/v2/lm/scenarios: scenarios and their executables, models (the generative catalog) and
versions, all read from the manifests (a scenario is declared by the templates in it)."""

from typing import Any

from fastapi import APIRouter

from ...manifests.desired import DesiredState
from .. import resources as res
from ..context import CallerDep, ContextDep
from ..errors import ApiError

router = APIRouter(prefix="/v2/lm")


def scenario_or_404(state: DesiredState, scenario_id: str) -> dict[str, Any]:
    found = [s for s in res.scenarios(state) if s["id"] == scenario_id]
    if not found:
        raise ApiError(404, f"Scenario {scenario_id} not found")
    return found[0]


@router.get("/scenarios")
def list_scenarios(ctx: ContextDep, who: CallerDep) -> dict[str, Any]:
    items = res.scenarios(ctx.state())
    return {"count": len(items), "resources": items}


@router.get("/scenarios/{scenarioId}")
def get_scenario(scenarioId: str, ctx: ContextDep, who: CallerDep) -> dict[str, Any]:
    return scenario_or_404(ctx.state(), scenarioId)


@router.get("/scenarios/{scenarioId}/executables")
def list_executables(scenarioId: str, ctx: ContextDep, who: CallerDep) -> dict[str, Any]:
    state = ctx.state()
    scenario_or_404(state, scenarioId)
    items = res.executables(state, scenarioId)
    return {"count": len(items), "resources": items}


@router.get("/scenarios/{scenarioId}/executables/{executableId}")
def get_executable(
    scenarioId: str, executableId: str, ctx: ContextDep, who: CallerDep
) -> dict[str, Any]:
    state = ctx.state()
    template = state.repo.templates.get(executableId)
    if template is None or template.scenario_id != scenarioId:
        raise ApiError(404, f"Executable {executableId} not found in scenario {scenarioId}")
    return res.executable(state, template)


@router.get("/scenarios/{scenarioId}/models")
def list_models(scenarioId: str, ctx: ContextDep, who: CallerDep) -> dict[str, Any]:
    """The generative model catalog (kind Model), e.g. of scenario foundation-models."""
    state = ctx.state()
    scenario_or_404(state, scenarioId)
    items = res.models(state, scenarioId)
    return {"count": len(items), "resources": items}


@router.get("/scenarios/{scenarioId}/versions")
def list_versions(scenarioId: str, ctx: ContextDep, who: CallerDep) -> dict[str, Any]:
    state = ctx.state()
    scenario_or_404(state, scenarioId)
    items = res.versions(state, scenarioId)
    return {"count": len(items), "resources": items}
