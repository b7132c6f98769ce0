"""/v2/lm/deployments: a resource group's deployments with their statuses; POST, PATCH and
DELETE change the deployment manifests (reconciler.api.writes), each under AI Core's lifecycle
rules (reconciler.core.lifecycle, which the planner applies to manifest edits too)."""

import secrets
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import PlainTextResponse

from ...core.lifecycle import (
    TTL_MINIMUM_MINUTES,
    Status,
    delete_refusal,
    executable_change_refusal,
    reconfigure_refusal,
    stop_refusal,
)
from ...core.record import parse_iso, read_snapshot
from ...manifests.crosscheck import ttl_minutes
from ...manifests.desired import DesiredDeployment, DesiredState
from .. import resources as res
from .. import writes
from ..context import ApiContext, Caller, CallerDep, ContextDep, base_url
from ..errors import ApiError, error_body
from ..models import BulkPatch, DeploymentIn, DeploymentPatch, PagingDep, free_id

router = APIRouter(prefix="/v2/lm")

# The statuses a list may be filtered by: AI Core's, which has COMPLETED too (for executions).
StatusFilter = Literal["PENDING", "RUNNING", "COMPLETED", "DEAD", "STOPPING", "STOPPED", "UNKNOWN"]
Select = Annotated[Literal["status"] | None, Query(alias="$select")]


# -- reading ------------------------------------------------------------------------------------


def deployments(ctx: ApiContext, request: Request, who: Caller) -> list[dict[str, Any]]:
    """The caller's group's deployments, with their statuses as `reconciler status` has them."""
    state = ctx.state()
    return [
        res.deployment(s, state)
        for s in ctx.statuses(state, base_url(request))
        if s["resourceGroup"] == who.resource_group
    ]


def filtered(
    items: list[dict[str, Any]],
    executable_ids: str | None,
    configuration_id: str | None,
    scenario_id: str | None,
    status: str | None,
) -> list[dict[str, Any]]:
    wanted = set(executable_ids.split(",")) if executable_ids else None
    return [
        d
        for d in items
        if (wanted is None or d.get("executableId") in wanted)
        and (configuration_id is None or d.get("configurationId") == configuration_id)
        and (scenario_id is None or d.get("scenarioId") == scenario_id)
        and (status is None or d.get("status") == status)
    ]


def deployment_or_404(
    ctx: ApiContext, request: Request, who: Caller, deployment_id: str
) -> dict[str, Any]:
    found = [d for d in deployments(ctx, request, who) if d["id"] == deployment_id]
    if not found:
        raise ApiError(404, f"Deployment {deployment_id} not found")
    return found[0]


def status_only(d: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "status", "statusMessage", "targetStatus", "deploymentUrl")
    return {k: d[k] for k in keys if k in d}


@router.get("/deployments")
def list_deployments(
    request: Request,
    ctx: ContextDep,
    who: CallerDep,
    paging: PagingDep,
    executableIds: str | None = None,
    configurationId: str | None = None,
    scenarioId: str | None = None,
    status: StatusFilter | None = None,
    select: Select = None,
) -> dict[str, Any]:
    items = filtered(
        deployments(ctx, request, who), executableIds, configurationId, scenarioId, status
    )
    page = paging.page(items)
    if select == "status":
        page = [status_only(d) for d in page]
    return {"count": len(items), "resources": page}


# Before /deployments/{deploymentId}, which would take "$count" for an id.
@router.get("/deployments/$count", response_class=PlainTextResponse)
def count_deployments(
    request: Request,
    ctx: ContextDep,
    who: CallerDep,
    executableIds: str | None = None,
    configurationId: str | None = None,
    scenarioId: str | None = None,
    status: StatusFilter | None = None,
) -> str:
    items = filtered(
        deployments(ctx, request, who), executableIds, configurationId, scenarioId, status
    )
    return str(len(items))


@router.get("/deployments/{deploymentId}")
def get_deployment(
    request: Request, deploymentId: str, ctx: ContextDep, who: CallerDep, select: Select = None
) -> dict[str, Any]:
    found = deployment_or_404(ctx, request, who, deploymentId)
    return status_only(found) if select == "status" else found


# -- creating -----------------------------------------------------------------------------------


@router.post("/deployments", status_code=202)
def create_deployment(
    request: Request, body: DeploymentIn, ctx: ContextDep, who: CallerDep
) -> dict[str, Any]:
    state = ctx.state()
    config = state.repo.configurations.get((who.resource_group, body.configurationId))
    if config is None:
        raise ApiError(400, f"Configuration {body.configurationId} does not exist")
    ttl = body.ttl.lower() if body.ttl else None
    if ttl and ttl_minutes(ttl) < TTL_MINIMUM_MINUTES:
        raise ApiError(400, f"ttl {body.ttl} is shorter than the minimum of {TTL_MINIMUM_MINUTES}m")
    names = {d.name for d in state.repo.deployments if d.resource_group == who.resource_group}
    name = free_id(f"{config.id[:56]}-{secrets.token_hex(3)}", names.__contains__)
    spec: dict[str, Any] = {"configurationId": config.id}
    if ttl:
        spec["ttl"] = ttl
    written = writes.create(ctx, who, "Deployment", name, spec, "POST /v2/lm/deployments")
    created = next(
        d
        for d in written.desired.deployments
        if d.name == name and d.deployment.resource_group == who.resource_group
    )
    base = ctx.api_url or state.repo.settings.api_url or base_url(request)
    out = {
        "id": created.id,
        "message": "Deployment scheduled.",
        "deploymentUrl": f"{base}/v2/inference/deployments/{created.id}",
        "status": Status.UNKNOWN.value,
    }
    if ttl:
        out["ttl"] = ttl
    return out


# -- changing: AI Core's lifecycle rules, refused with 412 ----------------------------------------


def declared(ctx: ApiContext, who: Caller, deployment_id: str) -> DesiredDeployment:
    d = ctx.state().find_declared(deployment_id)
    if d is None or d.deployment.resource_group != who.resource_group:
        raise ApiError(404, f"Deployment {deployment_id} not found")
    return d


def refuse(code: int, deployment_id: str, reason: str | None) -> None:
    """The lifecycle rule's reason, if it has one, as the API's answer."""
    if reason is not None:
        raise ApiError(code, f"Deployment {deployment_id} {reason}")


def dead_since(ctx: ApiContext, state: DesiredState, deployment_id: str) -> datetime | None:
    """When the deployment died, as the state records it: the moment the planner counts
    DEAD_RETENTION from too, so that the API and a manifest edit agree."""
    record = read_snapshot(ctx.root, state.repo.instance).records.get(deployment_id)
    return parse_iso(record.dead_since) if record is not None else None


def stop(ctx: ApiContext, request: Request, who: Caller, deployment_id: str, call: str) -> None:
    current = deployment_or_404(ctx, request, who, deployment_id)
    d = declared(ctx, who, deployment_id)
    refuse(412, deployment_id, stop_refusal(current["status"], d.deployment.target_status))
    writes.edit(ctx, who, d.deployment, {"targetStatus": Status.STOPPED.value}, call)


def delete(ctx: ApiContext, request: Request, who: Caller, deployment_id: str, call: str) -> None:
    current = deployment_or_404(ctx, request, who, deployment_id)
    refuse(412, deployment_id, delete_refusal(current["status"]))
    writes.remove(ctx, who, declared(ctx, who, deployment_id).deployment, call)


def reconfigure(
    ctx: ApiContext,
    request: Request,
    who: Caller,
    deployment_id: str,
    configuration_id: str,
    call: str,
) -> None:
    """A new configuration for a deployment: one of the same executable and scenario (else
    400), for a deployment in a status that allows it (else 412)."""
    current = deployment_or_404(ctx, request, who, deployment_id)
    d = declared(ctx, who, deployment_id)
    state = ctx.state()
    new = state.repo.configurations.get((who.resource_group, configuration_id))
    if new is None:
        raise ApiError(400, f"Configuration {configuration_id} does not exist")
    running = (current.get("executableId"), current.get("scenarioId"))
    wanted = (new.executable_id, new.scenario_id)
    refuse(400, deployment_id, executable_change_refusal(running, wanted, configuration=new.id))
    status = current["status"]
    died = dead_since(ctx, state, deployment_id) if status == Status.DEAD else None
    reason = reconfigure_refusal(status, d.deployment.target_status, died, datetime.now(UTC))
    refuse(412, deployment_id, reason)
    writes.edit(ctx, who, d.deployment, {"configurationId": new.id}, call)


@router.patch("/deployments/{deploymentId}", status_code=202)
def modify_deployment(
    request: Request, deploymentId: str, body: DeploymentPatch, ctx: ContextDep, who: CallerDep
) -> dict[str, Any]:
    call = f"PATCH /v2/lm/deployments/{deploymentId}"
    if (body.targetStatus is None) == (body.configurationId is None):
        raise ApiError(400, "give either targetStatus (STOPPED) or configurationId")
    if body.configurationId is not None:
        reconfigure(ctx, request, who, deploymentId, body.configurationId, call)
    else:  # targetStatus STOPPED, the only one the model accepts
        stop(ctx, request, who, deploymentId, call)
    return {"id": deploymentId, "message": "Deployment modification scheduled"}


@router.delete("/deployments/{deploymentId}", status_code=202)
def delete_deployment(
    request: Request, deploymentId: str, ctx: ContextDep, who: CallerDep
) -> dict[str, Any]:
    delete(ctx, request, who, deploymentId, f"DELETE /v2/lm/deployments/{deploymentId}")
    return {"id": deploymentId, "message": "Deletion scheduled", "targetStatus": "DELETED"}


# Stops or deletes several deployments; each answers on its own (an error for one does not
# stop the others).
@router.patch("/deployments", status_code=202)
def bulk_modify(
    request: Request, body: BulkPatch, ctx: ContextDep, who: CallerDep
) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    for item in body.deployments:
        call = f"PATCH /v2/lm/deployments (bulk: {item.id} → {item.targetStatus})"
        try:
            if item.targetStatus == Status.STOPPED:
                stop(ctx, request, who, item.id, call)
                results.append({"id": item.id, "message": "Deployment modification scheduled"})
            else:
                delete(ctx, request, who, item.id, call)
                results.append({"id": item.id, "message": "Deletion scheduled"})
        except ApiError as exc:
            results.append({"id": item.id, "error": error_body(exc.status, exc.message)["error"]})
    return {"deployments": results}
