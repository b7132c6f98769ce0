"""/v2/admin/objectStoreSecrets: AI Core's object-store secrets of a resource group, kept in the
secrets file outside git (reconciler.stores.secrets), not written back to the manifests.

What may be read is AI Core's listing: names and `metadata` (bucket, endpoint, region, path
prefix), never the credentials. Writes are the tenant's own group's. A tenant's secret may
name only an endpoint the operator allowed (`Settings.spec.objectStoreEndpoints`; none: AWS
S3 only): the reconciler sends requests to it, and a tenant must not make it call anything
else on its network (reconciler.manifests.store_urls.endpoint_problem, which checks a tenant's
https:// artifacts too).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path
from pydantic import BaseModel, ConfigDict, Field

from ...errors import UserError
from ...manifests.store_urls import endpoint_problem
from ...stores.secrets import ObjectStoreSecret, ObjectStoreSecrets, default_path
from ..context import ApiContext, Caller, CallerDep, ContextDep
from ..errors import ApiError

router = APIRouter(prefix="/v2/admin")
_META = "storage.ai.sap.com/"
Name = Annotated[str, Path(max_length=233)]


class SecretIn(BaseModel):
    """AI Core's body (SAP's SDK sends `path_prefix`; the API documents `pathPrefix`)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str = Field(max_length=233)
    type: str = Field(max_length=16)
    data: dict[str, str] = Field(max_length=8)
    bucket: str | None = Field(default=None, max_length=63)
    endpoint: str | None = Field(default=None, max_length=2048)
    region: str | None = Field(default=None, max_length=64)
    pathPrefix: str | None = Field(default=None, max_length=1024, alias="path_prefix")
    verifyssl: str | None = Field(default=None, max_length=8)
    usehttps: str | None = Field(default=None, max_length=8)


def _store(ctx: ApiContext) -> ObjectStoreSecrets:
    return ObjectStoreSecrets(default_path(ctx.state().repo.instance))


def _shown(secret: ObjectStoreSecret) -> dict[str, Any]:
    metadata = {
        f"{_META}bucket": secret.bucket,
        f"{_META}endpoint": secret.endpoint or "",
        f"{_META}region": secret.region or "",
        f"{_META}pathPrefix": secret.path_prefix,
    }
    return {"name": secret.name, "metadata": metadata}


def _secret(ctx: ApiContext, who: Caller, body: SecretIn, name: str) -> ObjectStoreSecret:
    if body.type.upper() != "S3":
        raise ApiError(400, f"type {body.type!r}: only S3 object stores are supported")
    if not body.bucket:
        raise ApiError(400, "bucket is required")
    endpoint = (body.endpoint or "").strip().rstrip("/") or None
    if endpoint and "://" not in endpoint:
        scheme = "http" if (body.usehttps or "1").lower() in ("0", "false") else "https"
        endpoint = f"{scheme}://{endpoint}"
    allowed = ctx.state().repo.settings.object_store_endpoints
    problem = endpoint_problem(allowed, endpoint) if endpoint is not None else None
    if problem is not None:
        raise ApiError(400, problem)
    data = body.data
    secret = ObjectStoreSecret(
        name=name,
        resource_group=who.resource_group,
        bucket=body.bucket,
        access_key_id=data.get("AWS_ACCESS_KEY_ID", ""),
        secret_access_key=data.get("AWS_SECRET_ACCESS_KEY", ""),
        endpoint=endpoint,
        region=body.region or None,
        path_prefix=(body.pathPrefix or "").strip("/"),
        verify_ssl=(body.verifyssl or "1").lower() not in ("0", "false"),
    )
    return secret


def _put(ctx: ApiContext, secret: ObjectStoreSecret, replace: bool) -> None:
    try:
        _store(ctx).put(secret, replace=replace)
    except UserError as exc:
        status = 409 if "exists" in str(exc) else 400
        raise ApiError(status, str(exc)) from None


@router.get("/objectStoreSecrets")
def list_secrets(ctx: ContextDep, who: CallerDep) -> dict[str, Any]:
    items = [_shown(s) for s in _store(ctx).list(who.resource_group)]
    return {"count": len(items), "resources": items}


@router.get("/objectStoreSecrets/{name}")
def get_secret(ctx: ContextDep, who: CallerDep, name: Name) -> dict[str, Any]:
    secret = _store(ctx).get(who.resource_group, name)
    if secret is None:
        raise ApiError(404, f"Object store secret {name} not found")
    return _shown(secret)


@router.post("/objectStoreSecrets", status_code=202)
def create_secret(ctx: ContextDep, who: CallerDep, body: SecretIn) -> dict[str, Any]:
    _put(ctx, _secret(ctx, who, body, body.name), replace=False)
    return {"id": body.name, "message": "Secret has been created"}


@router.patch("/objectStoreSecrets/{name}", status_code=202)
def update_secret(
    ctx: ContextDep, who: CallerDep, name: Name, body: Annotated[SecretIn, Body()]
) -> dict[str, Any]:
    if _store(ctx).get(who.resource_group, name) is None:
        raise ApiError(404, f"Object store secret {name} not found")
    _put(ctx, _secret(ctx, who, body, name), replace=True)
    ctx.trigger(f"object-store secret {name} changed")  # its deployments may start now
    return {"id": name, "message": "Secret has been modified"}


@router.delete("/objectStoreSecrets/{name}", status_code=202)
def delete_secret(ctx: ContextDep, who: CallerDep, name: Name) -> dict[str, Any]:
    if not _store(ctx).remove(who.resource_group, name):
        raise ApiError(404, f"Object store secret {name} not found")
    return {"id": name, "message": "Secret has been deleted"}
