"""/v2/lm/deployments/{id}/logs: a deployment's log lines, from its running replicas (through
the context's backend methods), or the last lines the state kept of a DEAD one; secrets the
deployment was given are redacted, so that they never leave through the API."""

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request

from ...core.record import read_snapshot
from ..context import ApiContext, CallerDep, ContextDep
from ..errors import ApiError
from .deployments import deployment_or_404

router = APIRouter(prefix="/v2/lm")


@router.get("/deployments/{deploymentId}/logs")
def deployment_logs(
    request: Request,
    deploymentId: str,
    ctx: ContextDep,
    who: CallerDep,
    start: datetime | None = None,
    end: datetime | None = None,
    top: Annotated[int, Query(alias="$top", ge=1, le=5000)] = 1000,
    order: Annotated[Literal["asc", "desc"], Query(alias="$order")] = "asc",
) -> dict[str, Any]:
    deployment_or_404(ctx, request, who, deploymentId)
    until = _utc(end) if end else None  # None: up to now, this second's lines included
    start = _utc(start) if start else (until or datetime.now(UTC)) - timedelta(hours=1)
    if until is not None and start > until:
        raise ApiError(400, "start is after end")
    lines = log_lines(ctx, deploymentId, start, until)
    lines.sort(key=lambda line: line["timestamp"], reverse=order == "desc")
    return {"data": {"result": lines[:top]}}


def log_lines(
    ctx: ApiContext, deployment_id: str, start: datetime, end: datetime | None
) -> list[dict[str, Any]]:
    """The deployment's lines between start and end, AI Core's shape, in no particular order."""
    state = ctx.state()
    lines = ctx.log_lines(state, deployment_id, start, end)
    if lines is not None:
        return [
            {
                "timestamp": _micro(line.time),
                "msg": line.text,
                "container": line.replica,
                "stream": line.stream,
            }
            for line in lines
        ]
    # None runs (a DEAD deployment): the lines kept in the state.
    record = read_snapshot(ctx.root, state.repo.instance).records.get(deployment_id)
    if not record or not record.last_logs:
        return []
    when = record.completion_time or record.modified_at or ""
    return [{"timestamp": when, "msg": line, "stream": "stdout"} for line in record.last_logs]


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _micro(stamp: str) -> str:
    """Docker's nanosecond RFC 3339 time with microseconds, as AI Core (and its SDK) write it."""
    head, dot, rest = stamp.rstrip("Z").partition(".")
    return f"{head}.{(rest + '000000')[:6]}Z" if dot else f"{head}Z"
