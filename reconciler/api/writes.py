"""The AI API's writes as manifest changes (through reconciler.api.writeback): which file a
new resource goes to, the commit message that names the call and the caller, the 400 when the
change would make the manifests invalid, and the reconcile that a deployment change triggers.
"""

from __future__ import annotations

from typing import Any

from ..errors import ManifestError
from ..manifests.kinds import Deployment
from ..manifests.sources import API_FOLDER
from .context import ApiContext, Caller
from .errors import ApiError
from .writeback import Written


def message(call: str, who: Caller) -> str:
    return (
        f"AI API: {call}\n\nBy client {who.identity.name} ({who.identity.client_id}), "
        f"resource group {who.resource_group}."
    )


def _invalid(what: str, exc: ManifestError) -> ApiError:
    return ApiError(
        400,
        f"the {what} would make the manifests invalid: {exc.lines()[0]}",
        [{"code": "400", "message": line} for line in exc.lines()],
    )


def create(
    ctx: ApiContext,
    who: Caller,
    kind: str,
    name: str,
    spec: dict[str, Any],
    call: str,
    labels: dict[str, str] | None = None,
) -> Written:
    """A new manifest, manifests/api/<group>/<kind>-<name>.yaml, committed; a Deployment is
    reconciled at once."""
    metadata: dict[str, Any] = {"name": name}
    if who.resource_group != "default":
        metadata["resourceGroup"] = who.resource_group
    if labels:
        metadata["labels"] = labels
    body = {"apiVersion": "reconciler/v1", "kind": kind, "metadata": metadata, "spec": spec}
    path = f"{API_FOLDER}/{who.resource_group}/{kind.lower()}-{name}.yaml"
    try:
        written = ctx.writeback.create(path, body, message(call, who), who.identity.name)
    except ManifestError as exc:
        raise _invalid(kind, exc) from None
    ctx.adopt(written)
    if kind == "Deployment":
        ctx.trigger(call)
    return written


def edit(
    ctx: ApiContext, who: Caller, deployment: Deployment, changes: dict[str, str], call: str
) -> None:
    """Fields of a deployment's spec changed in its own manifest (wherever it lives), then a
    reconcile."""

    def change(body: Any) -> None:
        for key, value in changes.items():
            body["spec"][key] = value

    try:
        written = ctx.writeback.edit(deployment.doc, change, message(call, who), who.identity.name)
    except ManifestError as exc:
        raise _invalid("change", exc) from None
    ctx.adopt(written)
    ctx.trigger(call)


def remove(ctx: ApiContext, who: Caller, deployment: Deployment, call: str) -> None:
    """A deployment's manifest document removed, then a reconcile (which removes what runs)."""
    written = ctx.writeback.remove(deployment.doc, message(call, who), who.identity.name)
    ctx.adopt(written)
    ctx.trigger(call)
