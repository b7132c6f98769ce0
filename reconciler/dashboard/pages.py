"""What each page shows, built from the statuses (as `reconciler status` has them), the
desired state, the recorded snapshot and a plan: plain data for the templates, filtered to the
resource groups the viewer may see. Pure functions: no engine, no request."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..core.plan import Plan
from ..core.record import Snapshot
from ..manifests.catalog import parse_date, retirement_notice
from ..manifests.desired import DesiredState
from ..manifests.kinds import Model
from .session import Viewer

STATUSES = ("RUNNING", "PENDING", "STOPPING", "STOPPED", "DEAD", "UNKNOWN")
SORTS = {
    "name": lambda r: (r.name, r.resource_group),
    "group": lambda r: (r.resource_group, r.name),
    "status": lambda r: (STATUSES.index(r.status) if r.status in STATUSES else 99, r.name),
    "changed": lambda r: (r.modified_at or "", r.name),
}


@dataclass(frozen=True)
class Row:
    id: str
    name: str
    resource_group: str
    status: str
    target_status: str
    message: str
    sync: str
    replicas: str
    configuration: str
    executable: str
    model: str
    model_version: str
    url: str
    modified_at: str
    revision: str
    warning: str


@dataclass(frozen=True)
class Listing:
    rows: list[Row]
    groups: list[str]  # the groups the viewer may see that have deployments (the filter's)
    counts: dict[str, int]  # per status, of the rows before filtering
    status: str
    group: str
    sort: str
    descending: bool
    total: int


def visible(statuses: Iterable[Mapping[str, Any]], viewer: Viewer) -> list[Mapping[str, Any]]:
    return [s for s in statuses if viewer.may_see(str(s.get("resourceGroup")))]


def deployment_rows(
    statuses: Iterable[Mapping[str, Any]],
    state: DesiredState,
    snapshot: Snapshot,
    viewer: Viewer,
    now: datetime,
) -> list[Row]:
    rows = []
    days = state.repo.settings.retirement_warning_days
    declared = {d.id: d for d in state.deployments}  # (not find_declared per row: O(n²))
    for s in visible(statuses, viewer):
        d = declared.get(str(s["id"]))
        rec = snapshot.records.get(str(s["id"]))
        details = s.get("details") or {}
        scaling = details.get("scaling") or {}
        current, desired = scaling.get("currentReplicas"), scaling.get("desiredReplicas")
        replicas = f"{current if current is not None else '?'}/{desired}" if desired else ""
        model, version = "", ""
        if d is not None and d.model is not None:  # a catalog model (generative)
            model, version = d.model.label, ""
        elif d is not None and d.spec.model_uri:
            model = d.spec.model_uri.split("?", 1)[0]  # (a query may hold a signature)
        if (details.get("model") or {}).get("version"):
            version = str(details["model"]["version"])[:12]
        notice = retirement_notice(d, now, days) if d is not None else None
        rows.append(
            Row(
                id=str(s["id"]),
                name=str(s["name"]),
                resource_group=str(s["resourceGroup"]),
                status=str(s["status"]),
                target_status=str(s.get("targetStatus") or ""),
                message=str(s.get("statusMessage") or ""),
                sync=str(s.get("syncStatus") or ""),
                replicas=replicas,
                configuration=str(s.get("configurationId") or ""),
                executable=str(s.get("executableId") or ""),
                model=model,
                model_version=version,
                url=str(s.get("deploymentUrl") or ""),
                modified_at=(rec.modified_at if rec else None) or "",
                revision=((rec.revision if rec else None) or "")[:12],
                warning=notice or "",
            )
        )
    return rows


def listing(rows: list[Row], status: str, group: str, sort: str, descending: bool) -> Listing:
    counts = {name: sum(1 for r in rows if r.status == name) for name in STATUSES}
    groups = sorted({r.resource_group for r in rows})
    status = status if status in STATUSES else ""
    group = group if group in groups else ""
    sort = sort if sort in SORTS else "name"
    shown = [
        r
        for r in rows
        if (not status or r.status == status) and (not group or r.resource_group == group)
    ]
    shown.sort(key=SORTS[sort], reverse=descending)
    return Listing(shown, groups, counts, status, group, sort, descending, len(rows))


@dataclass(frozen=True)
class PlanLine:
    deployment_id: str
    name: str
    resource_group: str
    action: str
    symbol: str
    cause: str
    failure: str = ""


@dataclass(frozen=True)
class PlanView:
    lines: list[PlanLine]
    warnings: list[str]
    drift: list[PlanLine]
    summary: str
    problems: list[str] = field(default_factory=list)


def plan_view(plan: Plan, state: DesiredState, viewer: Viewer) -> PlanView:
    """The plan in `reconciler plan`'s words, only the viewer's resource groups: a warning is
    shown to a tenant only when it is about one of its deployments (warnings name them)."""
    lines = [
        PlanLine(
            c.deployment_id, c.name, c.resource_group, c.action.value, c.symbol, c.cause,
            c.failure or "",
        )
        for c in plan.changes
        if viewer.may_see(c.resource_group)
    ]  # fmt: skip
    # A name is unique in its resource group only: a warning that names a deployment of the
    # viewer's is theirs only when no group they may not see has a deployment of that name.
    hidden = {d.name for d in state.deployments if not viewer.may_see(d.deployment.resource_group)}
    names = {
        d.name for d in state.deployments if viewer.may_see(d.deployment.resource_group)
    } - hidden
    warnings = [
        w for w in plan.warnings if viewer.operator or w.split(":", 1)[0].split(" ")[0] in names
    ]
    groups = {d.id: d.deployment.resource_group for d in state.deployments}
    drift = [
        PlanLine(x.deployment_id, x.name, groups.get(x.deployment_id, ""), "drift", "!", x.cause)
        for x in plan.drift
        if viewer.may_see(groups.get(x.deployment_id, ""))
    ]
    counts: dict[str, int] = {}
    for line in lines:
        counts[line.action] = counts.get(line.action, 0) + 1
    summary = ", ".join(f"{n} to {a}" for a, n in counts.items()) or "no changes"
    problems = [str(p) for p in plan.problems] if viewer.operator else []
    return PlanView(lines, warnings, drift, summary, problems)


@dataclass(frozen=True)
class Sync:
    applied: str  # the revision the last pass applied
    head: str  # what the root's branch has now (+dirty: uncommitted manifest changes)
    in_sync: bool
    plan: PlanView


def sync_view(snapshot: Snapshot, head: str | None, plan: PlanView) -> Sync:
    applied = snapshot.revision or ""
    same = bool(head) and applied == head
    return Sync(applied, head or "", same and not plan.lines and not plan.drift, plan)


@dataclass(frozen=True)
class Pass:
    at: str
    trigger: str
    result: str
    revision: str
    lines: list[str]


def timeline(snapshot: Snapshot, deployment_id: str, limit: int = 30) -> list[Pass]:
    """The passes that changed or failed this deployment, newest first, each with what it did
    to it: "failed" when one of the pass's failures is this deployment's, else "applied"
    (the history's change lines name a deployment with its id in parentheses, its failure
    lines with its name)."""
    tag = f"({deployment_id})"
    name = snapshot.records[deployment_id].name if deployment_id in snapshot.records else None
    # Failure lines name a deployment by its name, which is unique in its resource group only:
    # while a deployment of another group (another tenant's) has the same name, a failure is
    # this one's only in a pass that changed this one and not the namesake.
    others = [
        f"({i})" for i, r in snapshot.records.items() if r.name == name and i != deployment_id
    ]
    out = []
    for entry in reversed(snapshot.history):
        lines = [str(line) for line in entry.get("changes") or ()]
        changes = [line for line in lines if tag in line]
        ours = not others or (changes and not any(o in line for o in others for line in lines))
        failures = [
            str(line)
            for line in entry.get("failures") or ()
            if ours and name and str(line).split(":", 1)[0].split(" ", 1)[-1] == name
        ]
        if changes or failures:
            out.append(
                Pass(
                    str(entry.get("startedAt") or ""),
                    str(entry.get("trigger") or ""),
                    "failed" if failures else "applied",
                    str(entry.get("revision") or "")[:12],
                    changes + failures,
                )
            )
        if len(out) >= limit:
            break
    return out


@dataclass(frozen=True)
class ModelRow:
    name: str
    display_name: str
    provider: str
    executable: str
    versions: list[dict[str, Any]]


def model_rows(models: Sequence[Model], now: datetime) -> list[ModelRow]:
    rows = []
    for m in sorted(models, key=lambda m: m.name):
        versions = []
        for v in m.versions:
            # Whole days, as `plan` and `status` count them (0: it retires today, so retired).
            retire = parse_date(v.retirement_date)
            days_left = (retire - now.date()).days if retire else None
            versions.append(
                {
                    "name": v.name,
                    "latest": v.is_latest,
                    "deprecated": v.deprecated,
                    "retirement": v.retirement_date or "",
                    "days_left": days_left,
                    "replacements": ", ".join(v.suggested_replacements),
                }
            )
        rows.append(
            ModelRow(m.name, m.display_name or "", m.provider or "", m.executable_id, versions)
        )
    return rows
