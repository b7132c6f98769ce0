"""The AI API of `reconciler serve`: AI Core's `/v2/lm` endpoints and `/oauth/token`.

Reads answer from the manifests (the desired state, reloaded when a file changes) merged with
the deployment statuses, exactly as `reconciler status` shows them. Writes are GitOps
write-back (reconciler.writeback): validated, written to a manifest, committed, then a
reconcile is triggered; the API never changes Docker behind the manifests' back.

Field names, status codes and the error body `{"error": {code, message, requestId, target,
details}}` follow AI Core's AI API so that its scripts and SAP's Python SDK work unchanged.
"""

# No `from __future__ import annotations` here: FastAPI reads the endpoints' annotations at
# runtime, and they refer to names local to create_app.
import base64
import contextlib
import re
import secrets
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..backends.docker.engine import Engine, EngineUnreachable
from ..core.observe import observe
from ..core.plan import DEAD_RETENTION
from ..core.record import parse_iso, read_snapshot
from ..core.status import deployment_statuses
from ..errors import ManifestError, UserError
from ..files import FileVersion, file_version
from ..manifests.crosscheck import ttl_minutes
from ..manifests.desired import DesiredDeployment, DesiredState, desired_state
from ..manifests.kinds import Deployment
from ..manifests.render import artifact_url_problem
from ..manifests.sources import API_FOLDER, yaml_paths
from ..manifests.spec import redact
from . import resources as res
from .auth import TOKEN_SECONDS, AuthError, Credentials, Identity, Throttled, TokenDesk
from .errors import error_body, request_id
from .writeback import WriteBack, Written

API_VERSION = "2.42.0"
ID_PATTERN = r"^[\w.-]{4,64}$"
_ID = re.compile(ID_PATTERN)
ANONYMOUS = Identity("anonymous", "anonymous", ("*",))


class ApiError(Exception):
    def __init__(self, status: int, message: str, details: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details or []


# -- request bodies (they also document the API in its OpenAPI document) -------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ParameterBinding(_Body):
    key: str = Field(min_length=1, max_length=256)
    value: str = Field(max_length=5000)


class ArtifactBinding(_Body):
    key: str = Field(min_length=1, max_length=256)
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
    kind: Literal["model", "dataset", "resultset", "other"]
    url: str = Field(pattern=r"^[a-zA-Z][a-zA-Z0-9+.-]*://?[^\s]*$", max_length=1024)
    scenarioId: str = Field(pattern=ID_PATTERN)
    description: str | None = Field(default=None, max_length=5000)
    labels: list[Label] = Field(default_factory=list, max_length=100)


class DeploymentIn(_Body):
    configurationId: str = Field(pattern=ID_PATTERN)
    ttl: str | None = Field(default=None, pattern=r"^[0-9]+[mhdMHD]$")


class DeploymentPatch(_Body):
    targetStatus: Literal["STOPPED"] | None = None
    configurationId: str | None = Field(default=None, pattern=ID_PATTERN)


class BulkItem(_Body):
    id: str = Field(pattern=ID_PATTERN)
    targetStatus: Literal["STOPPED", "DELETED"]


class BulkPatch(_Body):
    deployments: list[BulkItem] = Field(min_length=1, max_length=100)


# -- paging (AI Core documents $top/$skip; SAP's SDK sends top/skip) ------------------------


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


# -- context ----------------------------------------------------------------------------------


@dataclass
class Caller:
    identity: Identity
    resource_group: str


class ApiContext:
    """What the endpoints share: the root, its current desired state, writes and reconciles."""

    def __init__(
        self,
        root: Path,
        engine: Engine,
        credentials: Credentials | None,
        trigger: Callable[[str], None],
        api_url: str | None = None,
    ) -> None:
        self.root = root
        self.engine = engine
        self.credentials = credentials  # None: --no-auth
        self.trigger = trigger
        self.api_url = api_url
        self.writeback = WriteBack(root)
        self._lock = threading.Lock()
        self._stamp: tuple[tuple[str, FileVersion | None], ...] | None = None
        self._state: DesiredState | None = None
        self.problems: tuple[str, ...] = ()

    def _files_stamp(self) -> tuple[tuple[str, FileVersion | None], ...]:
        """Which manifest files exist, and which version of each: a cheap change detector."""
        out = []
        for path in yaml_paths(self.root):
            with contextlib.suppress(OSError):  # unreadable: the next look sees it again
                out.append((str(path), file_version(path)))
        return tuple(out)

    def state(self) -> DesiredState:
        """The desired state, reloaded when a manifest file changed; the last valid one (and
        its problems noted) while the manifests are broken."""
        with self._lock:
            stamp = self._files_stamp()
            if stamp != self._stamp:
                try:
                    self._state = desired_state(self.root)
                    self.problems = ()
                except ManifestError as exc:
                    self.problems = tuple(exc.lines())
                self._stamp = stamp
            if self._state is None:
                raise ApiError(
                    503,
                    "the manifests are invalid; fix them (reconciler validate): "
                    + "; ".join(self.problems[:3]),
                )
            return self._state

    def adopt(self, written: Written) -> None:
        with self._lock:
            self._state = written.desired
            self._stamp = self._files_stamp()
            self.problems = ()

    def statuses(self, state: DesiredState, base_url: str) -> list[dict[str, Any]]:
        snapshot = read_snapshot(self.root, state.repo.instance)
        observed, problem = None, None
        try:
            observed = observe(self.engine, state.repo.instance, images=False)
        except EngineUnreachable as exc:
            problem = str(exc)
        api_url = self.api_url or state.repo.settings.api_url or base_url
        return deployment_statuses(snapshot, state, observed, problem, api_url=api_url)


def _base_url(request: Request) -> str:
    """This server's URL as the relay names it (server.ApiRelay): its own host:port, or what a
    trusted proxy said; never a caller's Host."""
    return str(request.base_url).rstrip("/")


# -- the app ----------------------------------------------------------------------------------


def create_app(ctx: ApiContext) -> FastAPI:
    app = FastAPI(
        title="reconciler AI API",
        version=API_VERSION,
        description="SAP AI Core's AI API (serving: scenarios, executables, configurations, "
        "artifacts, deployments) over a GitOps repository; writes become commits.",
    )
    _install_errors(app)

    def caller(
        authorization: Annotated[str | None, Header()] = None,
        ai_resource_group: Annotated[
            str | None, Header(alias="AI-Resource-Group", max_length=253)
        ] = None,
    ) -> Caller:
        identity = authenticate(ctx.credentials, authorization)
        group = ai_resource_group or "default"
        if not identity.may_use(group):
            raise ApiError(403, f"client {identity.name} may not use resource group {group}")
        return Caller(identity, group)

    CallerDep = Annotated[Caller, Depends(caller)]
    lm = APIRouter(prefix="/v2/lm")

    # -- scenarios and executables ------------------------------------------------------------

    @lm.get("/scenarios")
    def list_scenarios(who: CallerDep) -> dict[str, Any]:
        items = res.scenarios(ctx.state())
        return {"count": len(items), "resources": items}

    def scenario_or_404(state: DesiredState, scenario_id: str) -> dict[str, Any]:
        found = [s for s in res.scenarios(state) if s["id"] == scenario_id]
        if not found:
            raise ApiError(404, f"Scenario {scenario_id} not found")
        return found[0]

    @lm.get("/scenarios/{scenarioId}")
    def get_scenario(scenarioId: str, who: CallerDep) -> dict[str, Any]:
        return scenario_or_404(ctx.state(), scenarioId)

    @lm.get("/scenarios/{scenarioId}/executables")
    def list_executables(scenarioId: str, who: CallerDep) -> dict[str, Any]:
        state = ctx.state()
        scenario_or_404(state, scenarioId)
        items = res.executables(state, scenarioId)
        return {"count": len(items), "resources": items}

    @lm.get("/scenarios/{scenarioId}/executables/{executableId}")
    def get_executable(scenarioId: str, executableId: str, who: CallerDep) -> dict[str, Any]:
        state = ctx.state()
        template = state.repo.templates.get(executableId)
        if template is None or template.scenario_id != scenarioId:
            raise ApiError(404, f"Executable {executableId} not found in scenario {scenarioId}")
        return res.executable(state, template)

    @lm.get("/scenarios/{scenarioId}/models")
    def list_models(scenarioId: str, who: CallerDep) -> dict[str, Any]:
        """The generative model catalog (kind Model), e.g. of scenario foundation-models."""
        state = ctx.state()
        scenario_or_404(state, scenarioId)
        items = res.models(state, scenarioId)
        return {"count": len(items), "resources": items}

    @lm.get("/scenarios/{scenarioId}/versions")
    def list_versions(scenarioId: str, who: CallerDep) -> dict[str, Any]:
        state = ctx.state()
        scenario_or_404(state, scenarioId)
        items = res.versions(state, scenarioId)
        return {"count": len(items), "resources": items}

    # -- configurations -----------------------------------------------------------------------

    def configurations(
        who: Caller, scenario_id: str | None, executable_ids: str | None, search: str | None
    ) -> list[dict[str, Any]]:
        state = ctx.state()
        wanted = set(executable_ids.split(",")) if executable_ids else None
        items = [
            res.configuration(state, c)
            for (group, _), c in sorted(state.repo.configurations.items())
            if group == who.resource_group
            and (scenario_id is None or c.scenario_id == scenario_id)
            and (wanted is None or c.executable_id in wanted)
            and (search is None or search.lower() in c.name.lower())
        ]
        return items

    @lm.get("/configurations")
    def list_configurations(
        who: CallerDep,
        paging: PagingDep,
        scenarioId: str | None = None,
        executableIds: str | None = None,
        search: Annotated[str | None, Query(alias="$search", max_length=256)] = None,
    ) -> dict[str, Any]:
        items = configurations(who, scenarioId, executableIds, search)
        return {"count": len(items), "resources": paging.page(items)}

    @lm.get("/configurations/$count", response_class=PlainTextResponse)
    def count_configurations(
        who: CallerDep,
        scenarioId: str | None = None,
        executableIds: str | None = None,
        search: Annotated[str | None, Query(alias="$search", max_length=256)] = None,
    ) -> str:
        return str(len(configurations(who, scenarioId, executableIds, search)))

    @lm.get("/configurations/{configurationId}")
    def get_configuration(configurationId: str, who: CallerDep) -> dict[str, Any]:
        state = ctx.state()
        c = state.repo.configurations.get((who.resource_group, configurationId))
        if c is None:
            raise ApiError(404, f"Configuration {configurationId} not found")
        return res.configuration(state, c)

    @lm.post("/configurations", status_code=201)
    def create_configuration(body: ConfigurationIn, who: CallerDep) -> dict[str, Any]:
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
        new_id = _free_id(body.name, lambda i: (who.resource_group, i) in state.repo.configurations)
        spec: dict[str, Any] = {"executableId": body.executableId, "scenarioId": body.scenarioId}
        if body.versionId:
            spec["versionId"] = body.versionId
        if body.parameterBindings:
            spec["parameterBindings"] = [b.model_dump() for b in body.parameterBindings]
        if body.inputArtifactBindings:
            spec["inputArtifactBindings"] = [b.model_dump() for b in body.inputArtifactBindings]
        _create(ctx, who, "Configuration", new_id, spec, "POST /v2/lm/configurations")
        return {"id": new_id, "message": "Configuration created"}

    # -- artifacts ----------------------------------------------------------------------------

    def artifacts(
        who: Caller, scenario_id: str | None, name: str | None, kind: str | None, search: str | None
    ) -> list[dict[str, Any]]:
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

    @lm.get("/artifacts")
    def list_artifacts(
        who: CallerDep,
        paging: PagingDep,
        scenarioId: str | None = None,
        name: Annotated[str | None, Query(max_length=256)] = None,
        kind: Literal["model", "dataset", "resultset", "other"] | None = None,
        search: Annotated[str | None, Query(alias="$search", max_length=256)] = None,
    ) -> dict[str, Any]:
        items = artifacts(who, scenarioId, name, kind, search)
        return {"count": len(items), "resources": paging.page(items)}

    @lm.get("/artifacts/$count", response_class=PlainTextResponse)
    def count_artifacts(
        who: CallerDep,
        scenarioId: str | None = None,
        name: Annotated[str | None, Query(max_length=256)] = None,
        kind: Literal["model", "dataset", "resultset", "other"] | None = None,
        search: Annotated[str | None, Query(alias="$search", max_length=256)] = None,
    ) -> str:
        return str(len(artifacts(who, scenarioId, name, kind, search)))

    @lm.get("/artifacts/{artifactId}")
    def get_artifact(artifactId: str, who: CallerDep) -> dict[str, Any]:
        state = ctx.state()
        a = state.repo.artifacts.get((who.resource_group, artifactId))
        if a is None:
            raise ApiError(404, f"Artifact {artifactId} not found")
        return res.artifact(state, a)

    @lm.post("/artifacts", status_code=201)
    def create_artifact(body: ArtifactIn, who: CallerDep) -> dict[str, Any]:
        state = ctx.state()
        # A tenant's file: URL may point only into the root's models/ folder or an operator's
        # Settings artifactRoots (symlinks followed): never at the host's other files.
        problem = artifact_url_problem(state.repo, body.url, tenant=True)
        if problem is not None:
            raise ApiError(400, f"Artifact url {body.url!r} {problem}")
        new_id = _free_id(body.name, lambda i: (who.resource_group, i) in state.repo.artifacts)
        spec: dict[str, Any] = {"kind": body.kind, "url": body.url, "scenarioId": body.scenarioId}
        if body.description:
            spec["description"] = body.description
        labels = {label.key: label.value for label in body.labels}
        _create(ctx, who, "Artifact", new_id, spec, "POST /v2/lm/artifacts", labels)
        return {"id": new_id, "message": "Artifact acknowledged", "url": body.url}

    # -- deployments --------------------------------------------------------------------------

    def deployments(request: Request, who: Caller) -> list[dict[str, Any]]:
        state = ctx.state()
        return [
            res.deployment(s, state)
            for s in ctx.statuses(state, _base_url(request))
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

    Status = Literal["PENDING", "RUNNING", "COMPLETED", "DEAD", "STOPPING", "STOPPED", "UNKNOWN"]

    @lm.get("/deployments")
    def list_deployments(
        request: Request,
        who: CallerDep,
        paging: PagingDep,
        executableIds: str | None = None,
        configurationId: str | None = None,
        scenarioId: str | None = None,
        status: Status | None = None,
        select: Annotated[Literal["status"] | None, Query(alias="$select")] = None,
    ) -> dict[str, Any]:
        items = filtered(
            deployments(request, who), executableIds, configurationId, scenarioId, status
        )
        page = paging.page(items)
        if select == "status":
            page = [_status_only(d) for d in page]
        return {"count": len(items), "resources": page}

    @lm.get("/deployments/$count", response_class=PlainTextResponse)
    def count_deployments(
        request: Request,
        who: CallerDep,
        executableIds: str | None = None,
        configurationId: str | None = None,
        scenarioId: str | None = None,
        status: Status | None = None,
    ) -> str:
        items = filtered(
            deployments(request, who), executableIds, configurationId, scenarioId, status
        )
        return str(len(items))

    def deployment_or_404(request: Request, who: Caller, deployment_id: str) -> dict[str, Any]:
        found = [d for d in deployments(request, who) if d["id"] == deployment_id]
        if not found:
            raise ApiError(404, f"Deployment {deployment_id} not found")
        return found[0]

    @lm.get("/deployments/{deploymentId}")
    def get_deployment(
        request: Request,
        deploymentId: str,
        who: CallerDep,
        select: Annotated[Literal["status"] | None, Query(alias="$select")] = None,
    ) -> dict[str, Any]:
        found = deployment_or_404(request, who, deploymentId)
        return _status_only(found) if select == "status" else found

    @lm.post("/deployments", status_code=202)
    def create_deployment(request: Request, body: DeploymentIn, who: CallerDep) -> dict[str, Any]:
        state = ctx.state()
        config = state.repo.configurations.get((who.resource_group, body.configurationId))
        if config is None:
            raise ApiError(400, f"Configuration {body.configurationId} does not exist")
        if body.ttl and ttl_minutes(body.ttl.lower()) < 10:
            raise ApiError(400, f"ttl {body.ttl} is shorter than the minimum of 10m")
        names = {d.name for d in state.repo.deployments if d.resource_group == who.resource_group}
        name = _free_id(f"{config.id[:56]}-{secrets.token_hex(3)}", names.__contains__)
        spec: dict[str, Any] = {"configurationId": config.id}
        if body.ttl:
            spec["ttl"] = body.ttl.lower()
        written = _create(ctx, who, "Deployment", name, spec, "POST /v2/lm/deployments")
        created = next(
            d
            for d in written.desired.deployments
            if d.name == name and d.deployment.resource_group == who.resource_group
        )
        base = ctx.api_url or state.repo.settings.api_url or _base_url(request)
        out = {
            "id": created.id,
            "message": "Deployment scheduled.",
            "deploymentUrl": f"{base}/v2/inference/deployments/{created.id}",
            "status": "UNKNOWN",
        }
        if body.ttl:
            out["ttl"] = body.ttl.lower()
        return out

    def declared(who: Caller, deployment_id: str) -> DesiredDeployment:
        d = ctx.state().find_declared(deployment_id)
        if d is None or d.deployment.resource_group != who.resource_group:
            raise ApiError(404, f"Deployment {deployment_id} not found")
        return d

    def stop(request: Request, who: Caller, deployment_id: str, call: str) -> None:
        current = deployment_or_404(request, who, deployment_id)
        d = declared(who, deployment_id)
        if (
            current["status"] not in ("PENDING", "RUNNING")
            or d.deployment.target_status == "STOPPED"
        ):
            raise ApiError(
                412,
                f"Deployment {deployment_id} is {current['status']} "
                f"(targetStatus {d.deployment.target_status}): only a PENDING or RUNNING "
                "deployment can be stopped",
            )
        _edit(ctx, who, d.deployment, {"targetStatus": "STOPPED"}, call)

    def delete(request: Request, who: Caller, deployment_id: str, call: str) -> None:
        current = deployment_or_404(request, who, deployment_id)
        if current["status"] not in ("STOPPED", "DEAD", "UNKNOWN"):
            raise ApiError(
                412,
                f"Deployment {deployment_id} is {current['status']}: stop it first "
                "(PATCH targetStatus STOPPED); only STOPPED, DEAD or UNKNOWN deployments "
                "can be deleted",
            )
        d = declared(who, deployment_id)
        written = ctx.writeback.remove(d.deployment.doc, _message(call, who), who.identity.name)
        ctx.adopt(written)
        ctx.trigger(call)

    @lm.patch("/deployments/{deploymentId}", status_code=202)
    def modify_deployment(
        request: Request, deploymentId: str, body: DeploymentPatch, who: CallerDep
    ) -> dict[str, Any]:
        call = f"PATCH /v2/lm/deployments/{deploymentId}"
        if (body.targetStatus is None) == (body.configurationId is None):
            raise ApiError(400, "give either targetStatus (STOPPED) or configurationId")
        if body.targetStatus == "STOPPED":
            stop(request, who, deploymentId, call)
            return {"id": deploymentId, "message": "Deployment modification scheduled"}
        assert body.configurationId is not None
        current = deployment_or_404(request, who, deploymentId)
        d = declared(who, deploymentId)
        state = ctx.state()
        new = state.repo.configurations.get((who.resource_group, body.configurationId))
        if new is None:
            raise ApiError(400, f"Configuration {body.configurationId} does not exist")
        if (new.scenario_id, new.executable_id) != (
            current.get("scenarioId"),
            current.get("executableId"),
        ):
            raise ApiError(
                400,
                f"Configuration {new.id} uses executable {new.executable_id} of scenario "
                f"{new.scenario_id}; deployment {deploymentId} runs executable "
                f"{current.get('executableId')} of scenario {current.get('scenarioId')}. A new "
                "configuration must keep both",
            )
        status = current["status"]
        dead_since = parse_iso(current.get("completionTime")) if status == "DEAD" else None
        too_old = dead_since is not None and dead_since + DEAD_RETENTION <= datetime.now(UTC)
        if (
            status not in ("PENDING", "RUNNING", "DEAD")
            or too_old
            or d.deployment.target_status == "STOPPED"
        ):
            raise ApiError(
                412,
                f"Deployment {deploymentId} is {status}: only a PENDING or RUNNING deployment, "
                "or one DEAD for less than 7 days, can get a new configuration",
            )
        _edit(ctx, who, d.deployment, {"configurationId": new.id}, call)
        return {"id": deploymentId, "message": "Deployment modification scheduled"}

    @lm.delete("/deployments/{deploymentId}", status_code=202)
    def delete_deployment(request: Request, deploymentId: str, who: CallerDep) -> dict[str, Any]:
        delete(request, who, deploymentId, f"DELETE /v2/lm/deployments/{deploymentId}")
        return {"id": deploymentId, "message": "Deletion scheduled", "targetStatus": "DELETED"}

    @lm.patch("/deployments", status_code=202)
    def bulk_modify(request: Request, body: BulkPatch, who: CallerDep) -> dict[str, Any]:
        results: list[dict[str, Any]] = []
        for item in body.deployments:
            call = f"PATCH /v2/lm/deployments (bulk: {item.id} → {item.targetStatus})"
            try:
                if item.targetStatus == "STOPPED":
                    stop(request, who, item.id, call)
                    results.append({"id": item.id, "message": "Deployment modification scheduled"})
                else:
                    delete(request, who, item.id, call)
                    results.append({"id": item.id, "message": "Deletion scheduled"})
            except ApiError as exc:
                results.append(
                    {"id": item.id, "error": error_body(exc.status, exc.message)["error"]}
                )
        return {"deployments": results}

    @lm.get("/deployments/{deploymentId}/logs")
    def deployment_logs(
        request: Request,
        deploymentId: str,
        who: CallerDep,
        start: datetime | None = None,
        end: datetime | None = None,
        top: Annotated[int, Query(alias="$top", ge=1, le=5000)] = 1000,
        order: Annotated[Literal["asc", "desc"], Query(alias="$order")] = "asc",
    ) -> dict[str, Any]:
        deployment_or_404(request, who, deploymentId)
        until = _utc(end) if end else None  # None: up to now, this second's lines included
        start = _utc(start) if start else (until or datetime.now(UTC)) - timedelta(hours=1)
        if until is not None and start > until:
            raise ApiError(400, "start is after end")
        lines = _log_lines(ctx, deploymentId, start, until)
        lines.sort(key=lambda line: line["timestamp"], reverse=order == "desc")
        return {"data": {"result": lines[:top]}}

    # -- meta ---------------------------------------------------------------------------------

    @lm.get("/meta")
    def meta(who: CallerDep) -> dict[str, Any]:
        return {
            "runtimeIdentifier": "reconciler",
            "runtimeApiVersion": API_VERSION,
            "description": "GitOps reconciler for AI Core-style model deployments on Docker",
            "aiApi": {
                "version": API_VERSION,
                "capabilities": {
                    "multitenant": True,
                    "shareable": False,
                    "staticDeployments": True,
                    "userDeployments": True,
                    "userExecutions": False,
                    "timeToLiveDeployments": True,
                    "executionSchedules": False,
                    "logs": {"deployments": True, "executions": False},
                    "bulkUpdates": {"deployments": True, "executions": False},
                },
                "limits": {
                    "deployments": {"maxRunningCount": -1},
                    "executions": {"maxRunningCount": 0},
                    "minimumFrequencyHour": 0,
                    "timeToLiveDeployments": {"minimum": "10m", "maximum": "-1"},
                },
            },
            "extensions": {},
        }

    app.include_router(lm)
    desk = TokenDesk(ctx.credentials) if ctx.credentials is not None else None

    @app.post(
        "/oauth/token",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/x-www-form-urlencoded": {
                        "schema": {
                            "type": "object",
                            "required": ["grant_type"],
                            "properties": {
                                "grant_type": {"type": "string", "enum": ["client_credentials"]},
                                "client_id": {"type": "string"},
                                "client_secret": {"type": "string"},
                            },
                        }
                    }
                },
            }
        },
    )
    async def token(request: Request) -> JSONResponse:
        """OAuth2 client credentials (form fields, or HTTP Basic for the client)."""
        raw = await request.body()
        form = {k: v[-1] for k, v in urllib.parse.parse_qs(raw.decode("latin-1")).items()}
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        basic = request.headers.get("authorization", "")
        if basic.lower().startswith("basic "):
            try:
                pair = base64.b64decode(basic[6:]).decode()
                client_id, _, client_secret = pair.partition(":")
            except ValueError:
                return _oauth_error(401, "invalid_client", "malformed Basic credentials")
        if form.get("grant_type") != "client_credentials":
            return _oauth_error(400, "unsupported_grant_type", "only client_credentials")
        if desk is None:
            return _oauth_error(400, "invalid_request", "this server runs without auth")
        if not client_id or not client_secret:
            return _oauth_error(401, "invalid_client", "client_id and client_secret are needed")
        # The caller's address as the relay gave it (X-Forwarded-For: the peer, or what a
        # trusted proxy said), for the limit on failed attempts per source address.
        address = request.client.host if request.client else ""
        try:
            token = await desk.issue(client_id, client_secret, address)
        except Throttled as exc:
            return _oauth_error(429, "temporarily_unavailable", str(exc), exc.retry_after)
        except AuthError as exc:
            return _oauth_error(401, "invalid_client", str(exc))
        return JSONResponse(
            {
                "access_token": token,
                "token_type": "bearer",
                "expires_in": TOKEN_SECONDS - 1,
                "scope": "",
            },
            headers={"Cache-Control": "no-store"},
        )

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


# -- helpers ----------------------------------------------------------------------------------


def authenticate(credentials: Credentials | None, authorization: str | None) -> Identity:
    if credentials is None:
        return ANONYMOUS
    if not authorization or not authorization.lower().startswith("bearer "):
        raise ApiError(401, "missing bearer token: get one at /oauth/token")
    try:
        return credentials.verify(authorization[7:].strip())
    except AuthError as exc:
        raise ApiError(401, str(exc)) from None


def _status_only(d: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "status", "statusMessage", "targetStatus", "deploymentUrl")
    return {k: d[k] for k in keys if k in d}


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _free_id(wanted: str, taken: Callable[[str], bool]) -> str:
    """`wanted` made a valid id (`^[\\w.-]{4,64}$`), with a suffix when it is taken."""
    base = re.sub(r"[^\w.-]+", "-", wanted).strip("-")[:56] or "item"
    if len(base) < 4:
        base = f"{base}-{secrets.token_hex(2)}"
    candidate = base
    while taken(candidate) or not _ID.match(candidate):
        candidate = f"{base}-{secrets.token_hex(3)}"
    return candidate


def _message(call: str, who: Caller) -> str:
    return (
        f"AI API: {call}\n\nBy client {who.identity.name} ({who.identity.client_id}), "
        f"resource group {who.resource_group}."
    )


def _create(
    ctx: ApiContext,
    who: Caller,
    kind: str,
    name: str,
    spec: dict[str, Any],
    call: str,
    labels: dict[str, str] | None = None,
) -> Written:
    metadata: dict[str, Any] = {"name": name}
    if who.resource_group != "default":
        metadata["resourceGroup"] = who.resource_group
    if labels:
        metadata["labels"] = labels
    body = {"apiVersion": "reconciler/v1", "kind": kind, "metadata": metadata, "spec": spec}
    path = f"{API_FOLDER}/{who.resource_group}/{kind.lower()}-{name}.yaml"
    try:
        written = ctx.writeback.create(path, body, _message(call, who), who.identity.name)
    except ManifestError as exc:
        raise ApiError(
            400,
            f"the {kind} would make the manifests invalid: {exc.lines()[0]}",
            [{"code": "400", "message": line} for line in exc.lines()],
        ) from None
    ctx.adopt(written)
    if kind == "Deployment":
        ctx.trigger(call)
    return written


def _edit(
    ctx: ApiContext, who: Caller, deployment: Deployment, changes: dict[str, str], call: str
) -> None:
    def change(body: Any) -> None:
        for key, value in changes.items():
            body["spec"][key] = value

    try:
        written = ctx.writeback.edit(deployment.doc, change, _message(call, who), who.identity.name)
    except ManifestError as exc:
        raise ApiError(
            400,
            f"the change would make the manifests invalid: {exc.lines()[0]}",
            [{"code": "400", "message": line} for line in exc.lines()],
        ) from None
    ctx.adopt(written)
    ctx.trigger(call)


def _log_lines(
    ctx: ApiContext, deployment_id: str, start: datetime, end: datetime | None
) -> list[dict[str, Any]]:
    state = ctx.state()
    containers = (
        observe(ctx.engine, state.repo.instance, images=False)
        .by_deployment()
        .get(deployment_id, [])
    )
    out: list[dict[str, Any]] = []
    declared = state.find_declared(deployment_id)
    for c in containers:
        for stream, raw in ctx.engine.log_streams(c.id, since=start, until=end):
            lines = raw.decode(errors="replace").splitlines()
            if declared is not None:  # secrets never leave through the API
                lines = list(redact(lines, declared.spec))
            for line in lines:
                stamp, _, msg = line.partition(" ")
                out.append(
                    {"timestamp": _micro(stamp), "msg": msg, "container": c.name, "stream": stream}
                )
    if not containers:  # a DEAD deployment: the lines kept in the state
        record = read_snapshot(ctx.root, state.repo.instance).records.get(deployment_id)
        if record and record.last_logs:
            when = record.completion_time or record.modified_at or ""
            out = [
                {"timestamp": when, "msg": line, "stream": "stdout"} for line in record.last_logs
            ]
    return out


def _micro(stamp: str) -> str:
    """Docker's nanosecond RFC 3339 time with microseconds, as AI Core (and its SDK) write it."""
    head, dot, rest = stamp.rstrip("Z").partition(".")
    return f"{head}.{(rest + '000000')[:6]}Z" if dot else f"{head}Z"


def _oauth_error(
    status: int, code: str, description: str, retry_after: int | None = None
) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Basic realm="oauth"'} if status == 401 else {}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return JSONResponse({"error": code, "error_description": description}, status, headers)


def _install_errors(app: FastAPI) -> None:
    def respond(request: Request, status: int, message: str, details: Any = None) -> Response:
        body = error_body(status, message, request.url.path, request_id(), details)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse(body, status, headers)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        return respond(request, exc.status, exc.message, exc.details)

    @app.exception_handler(UserError)
    async def user_error(request: Request, exc: UserError) -> Response:
        return respond(request, 400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        details = [
            {"code": "400", "message": f"{'.'.join(map(str, e['loc']))}: {e['msg']}"}
            for e in exc.errors()
        ]
        first = details[0]["message"] if details else "invalid request"
        return respond(request, 400, f"Bad request: {first}", details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return respond(request, exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception) -> Response:
        import logging

        logging.getLogger("reconciler.api").exception("%s %s failed", request.method, request.url)
        return respond(request, 500, f"internal error: {type(exc).__name__}: {exc}")
