"""Deployment status with AI Core's field names: the last snapshot, corrected by what runs now.

The snapshot says what the reconciler last did; the live container list says whether that is
still true. RUNNING means answering: a RUNNING deployment is shown RUNNING only while at least
one replica of its configuration is ready (`routable`: the replicas the gateway relays to).
Otherwise it is shown PENDING with the reason: its container was stopped or removed by hand (the
next reconcile restores it), or none of its replicas passes its health check (it is RUNNING
again by itself as soon as one does). PENDING, not UNKNOWN: AI Core's statuses have no
"degraded", and PENDING says "not serving now, expected to serve again"; UNKNOWN stays what it
was, the engine cannot be asked. Every deployment is UNKNOWN when the engine cannot be reached.
The snapshot itself is never changed here: this is a read.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from ..backends import EngineUnreachable, connect
from ..backends.base import HEALTH_READY, HEALTH_STARTING, Observed, Replica
from ..errors import ManifestError
from ..manifests.catalog import retirement_notice
from ..manifests.desired import DesiredDeployment, DesiredState, desired_state
from ..manifests.load import load
from .lifecycle import Status
from .observe import observe
from .record import Record, Snapshot, now, parse_iso, read_snapshot

FIELDS = (
    "id",
    "name",
    "resourceGroup",
    "status",
    "targetStatus",
    "statusMessage",
    "configurationId",
    "configurationName",
    "executableId",
    "scenarioId",
    "deploymentUrl",
    "lastOperation",
    "latestRunningConfigurationId",
    "ttl",
    "createdAt",
    "modifiedAt",
    "submissionTime",
    "startTime",
    "completionTime",
)


def gateway_url(api_url: str, deployment_id: str) -> str:
    """AI Core's deployment URL: stable across updates, served by `reconciler serve`."""
    return f"{api_url}/v2/inference/deployments/{deployment_id}"


def published_address(c: Replica, publish_address: str) -> str:
    """`host:port` where the host publishes a container's serving port."""
    host = c.host_ip or publish_address
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"{host}:{c.host_port}"


def serving_replicas(containers: Iterable[Replica]) -> list[Replica]:
    """The running replicas with a published port, in replica order."""
    return sorted((c for c in containers if c.running and c.host_port), key=lambda c: c.replica)


def addresses(containers: Iterable[Replica], publish_address: str) -> list[str]:
    """The published `host:port` of every running replica, in replica order."""
    return [published_address(c, publish_address) for c in serving_replicas(containers)]


def serving(rec: Record | None, containers: list[Replica]) -> list[Replica]:
    """The containers that serve a deployment: those of the configuration last seen ready
    (during an update the old ones serve until the new ones are ready)."""
    return [c for c in containers if not rec or c.config_hash == rec.config_hash]


def ready(c: Replica) -> bool:
    """It runs and its engine's health check passes, or it has none ("": a replica made before
    health checks, taken at its word as before)."""
    return c.running and c.health in (HEALTH_READY, "")


def routable(rec: Record | None, containers: list[Replica]) -> list[Replica]:
    """The replicas that serve a deployment now (of `serving`'s configuration, less those a
    pass is retiring): the ready ones, and those the reconciler saw answer before it recorded
    RUNNING whose engine's health check has not given its first verdict yet (`starting`: right
    after a pass started them, Docker's first check comes one period later). A replica that
    started after that (its engine restarted it) has been seen answering by no one: it serves
    once its check passes."""
    current = [
        c for c in serving(rec, containers) if c.running and not (rec and c.id in rec.retiring)
    ]
    if not rec or rec.status != Status.RUNNING:
        return [c for c in current if ready(c)]
    if not current:
        # An engine that replaces replicas itself (Swarm's rolling update) may have retired
        # the recorded configuration's last replica before the pass records the new one: the
        # new configuration's ready replicas answer meanwhile. (Not while a replica of the
        # recorded one runs: right after Docker's update is recorded, the old replicas are
        # still ready but about to go.)
        return [c for c in containers if ready(c)]
    # When the reconciler last saw its replicas answer (older records: their last change).
    seen = parse_iso(rec.ready_at or rec.modified_at)
    return [
        c for c in current if ready(c) or (c.health == HEALTH_STARTING and _seen_since(c, seen))
    ]


def _seen_since(c: Replica, seen: datetime | None) -> bool:
    """Whether `c` was already up when the reconciler saw the deployment answer: then its
    word stands until the engine's first verdict. One (re)started later (the engine restarted,
    or restarted it) has not been seen answering by anyone yet."""
    # Both times are coarse: the record's to the second, Docker's uptime in whole seconds
    # (a start up to a second earlier than `started` says); an engine restart that comes
    # within those two seconds of a pass is taken for that pass's start.
    return c.started is not None and seen is not None and c.started <= seen.timestamp() + 2


def not_serving(rec: Record, containers: list[Replica]) -> str | None:
    """Why a deployment recorded RUNNING does not serve now, for its statusMessage (None: it
    does)."""
    current = serving(rec, containers)
    if scaled_to_zero(rec) and not current:
        return None  # it serves: the gateway starts a replica for the first request
    if not any(c.running for c in current):
        return _drift(current)
    if routable(rec, current):
        return None
    sick = next((c for c in current if c.running and not ready(c)), current[0])
    return f"no replica ready: {_health_text(sick)}"


SCALED_TO_ZERO = "scaled to zero: the first request starts a replica"
# Argo CD's words for whether what runs is what the manifests say (drift, a change not yet
# reconciled): `status --json`'s syncStatus, the dashboard and /metrics.
SYNCED, OUT_OF_SYNC = "Synced", "OutOfSync"


def scaled_to_zero(rec: Record | None) -> bool:
    """RUNNING with no replica (minReplicas 0, idle): the first request starts one."""
    return rec is not None and rec.status == Status.RUNNING and rec.replicas == 0


def scaling_details(
    rec: Record | None, d: DesiredDeployment | None, containers: list[Replica]
) -> dict[str, Any]:
    """AI Core's `details.scaling`, with what the autoscaler did: the replicas that serve
    now, the count asked for, the bounds, and the last scale's time and reason."""
    predictor: dict[str, Any] = {}
    if d is not None:
        predictor = {
            "minReplicas": d.spec.replicas,
            "maxReplicas": d.spec.max_replicas,
            "containerConcurrency": d.spec.container_concurrency,
        }
        if d.spec.autoscaled:
            policy = d.spec.scaling()
            predictor.update(
                metric=policy.metric,
                target=policy.target,
                scaleToZeroGracePeriodSeconds=policy.grace,
            )
    return {
        "backendDetails": {"predictor": predictor},
        "currentReplicas": len(routable(rec, containers)) if rec else 0,
        "desiredReplicas": rec.replicas if rec else None,
        "autoscaled": bool(d and d.spec.autoscaled),
        "lastScaleTime": rec.scaled_at if rec else None,
        "lastScaleReason": rec.scale_reason if rec else None,
    }


def _health_text(c: Replica) -> str:
    """Why a replica is not ready, in words: what its last failed check said, if it said."""
    if not c.running:
        return c.describe_state()
    if c.health == HEALTH_STARTING:
        return c.health_detail or "health check has not passed yet"
    return c.health_detail or f"replica {c.replica} {c.health or 'not ready'}"


def replica_details(rec: Record | None, containers: list[Replica]) -> list[dict[str, Any]]:
    """Each replica's readiness, for `details.replicas`: those of the configuration that serves
    first, in replica order (during an update the new ones follow, not serving yet)."""
    current = {c.id for c in serving(rec, containers)}
    serves = {c.id for c in routable(rec, containers)}
    ordered = sorted(containers, key=lambda c: (c.id not in current, c.replica, c.name))
    return [
        {
            "name": c.name,
            "replica": c.replica,
            "state": c.state,
            "ready": ready(c),
            "serving": c.id in serves,
            "health": c.health,
            "message": "" if ready(c) else _health_text(c),
            **({"node": c.node} if c.node else {}),
        }
        for c in ordered
    ]


def direct_url(containers: Iterable[Replica], publish_address: str) -> str | None:
    """The first serving replica's published address (changes when the container is
    replaced; the gateway's URL does not)."""
    found = addresses(containers, publish_address)
    return f"http://{found[0]}" if found else None


def deployment_statuses(
    snapshot: Snapshot,
    desired: DesiredState | None,
    observed: Observed | None,
    engine_problem: str | None = None,
    api_url: str | None = None,
) -> list[dict[str, Any]]:
    """Every deployment's status; `api_url` (default: the Settings') makes deploymentUrls the
    gateway's."""
    by_dep = observed.by_deployment() if observed else {}
    declared = {d.id: d for d in desired.deployments} if desired else {}
    publish = desired.repo.settings.publish_address if desired else "127.0.0.1"
    if api_url is None and desired:
        api_url = desired.repo.settings.api_url
    ids = sorted(set(declared) | set(snapshot.records) | set(by_dep))
    items = [
        _status(
            snapshot.records.get(i),
            declared.get(i),
            by_dep.get(i, []),
            engine_problem,
            publish,
            api_url,
        )
        for i in ids
    ]
    return sorted(items, key=lambda s: (s["resourceGroup"], s["name"]))


def _status(
    rec: Record | None,
    d: DesiredDeployment | None,
    containers: list[Replica],
    engine_problem: str | None,
    publish: str,
    api_url: str | None,
) -> dict[str, Any]:
    out: dict[str, Any] = dict.fromkeys(FIELDS)
    out.update(_identity(rec, d, containers))
    out.update(_recorded(rec))
    if d:
        out.update(_declared(rec, d, out))
    elif rec:
        out["targetStatus"] = "DELETED"  # a target status only, never a Status
        out["statusMessage"] = _join(
            out["statusMessage"], "removed from the manifests: the next reconcile deletes it"
        )
    if api_url:
        out["deploymentUrl"] = gateway_url(api_url, out["id"])
    if engine_problem:
        out.update(status=Status.UNKNOWN, statusMessage=engine_problem)
        return out
    details = {**(out.get("details") or {}), "scaling": scaling_details(rec, d, containers)}
    if rec and rec.model_version:
        # The model's version from its store (the digest `plan` shows the first 12 digits of,
        # and an artifact URL can pin with ?version=).
        details["model"] = {"version": rec.model_version}
    if containers:
        details["replicas"] = replica_details(rec, containers)
    out["details"] = details
    out["syncStatus"] = SYNCED
    if d is None or (rec and d and rec.configuration_id != d.configuration.id):
        out["syncStatus"] = OUT_OF_SYNC  # the manifests say otherwise: a reconcile is due
    if rec and rec.status == Status.RUNNING and (problem := not_serving(rec, containers)):
        out["status"] = Status.PENDING
        out["statusMessage"] = problem
        if not any(c.running for c in serving(rec, containers)):
            out["syncStatus"] = OUT_OF_SYNC  # changed by hand (drift)
    elif scaled_to_zero(rec) and not serving(rec, containers):
        out["statusMessage"] = _join(out["statusMessage"], SCALED_TO_ZERO)
    if out["status"] == Status.RUNNING and not api_url:
        out["deploymentUrl"] = direct_url(routable(rec, containers), publish)
    return out


def _identity(
    rec: Record | None, d: DesiredDeployment | None, containers: list[Replica]
) -> dict[str, Any]:
    """id, name and resource group: recorded, else declared, else from the container labels
    (a container of no record and no manifest: only the labels name it)."""
    if rec:
        return {"id": rec.id, "name": rec.name, "resourceGroup": rec.resource_group}
    if d:
        return {"id": d.id, "name": d.name, "resourceGroup": d.deployment.resource_group}
    c = containers[0]
    return {"id": c.deployment_id, "name": c.deployment_name, "resourceGroup": c.resource_group}


def _recorded(rec: Record | None) -> dict[str, Any]:
    """The fields as the reconciler last left them."""
    if rec is None:
        return {
            "status": Status.UNKNOWN,
            "statusMessage": "not reconciled yet: run reconciler reconcile",
        }
    return {
        "status": rec.status,
        "targetStatus": rec.target_status,
        "statusMessage": rec.status_message,
        "configurationId": rec.configuration_id,
        "configurationName": rec.configuration_id,
        "executableId": rec.executable_id,
        "scenarioId": rec.scenario_id,
        "lastOperation": rec.last_operation,
        "latestRunningConfigurationId": rec.latest_running_configuration_id,
        "ttl": rec.ttl,
        "createdAt": rec.created_at,
        "modifiedAt": rec.modified_at,
        "submissionTime": rec.submission_time,
        "startTime": rec.start_time,
        "completionTime": rec.completion_time,
    }


def _declared(rec: Record | None, d: DesiredDeployment, out: dict[str, Any]) -> dict[str, Any]:
    """What the manifests declare, over the record's fields in `out`: the target status and ttl
    always; the configuration fields where nothing was recorded yet."""
    update: dict[str, Any] = {
        "targetStatus": d.deployment.target_status,
        "ttl": d.deployment.ttl,
        "configurationId": out["configurationId"] or d.configuration.id,
        "configurationName": out["configurationName"] or d.configuration.id,
        "executableId": out["executableId"] or d.template.name,
        "scenarioId": out["scenarioId"] or d.template.scenario_id,
        "details": {
            "resources": {"backendDetails": {"predictor": {"resourcePlan": d.spec.resource_plan}}},
        },
    }
    if rec and rec.configuration_id and rec.configuration_id != d.configuration.id:
        update["statusMessage"] = _join(
            out["statusMessage"],
            f"configuration {d.configuration.id} is declared: run reconciler reconcile",
        )
    if not rec and d.deployment.target_status == Status.STOPPED:
        update.update(status=Status.STOPPED, statusMessage="declared STOPPED; never started")
    return update


def _drift(containers: list[Replica]) -> str:
    if not containers:
        what = "container removed outside the reconciler"
    else:
        what = f"container {containers[0].describe_state()} outside the reconciler"
    return f"{what}; the next reconcile restores it"


def _join(first: str | None, second: str) -> str:
    return f"{first}; {second}" if first else second


def status_view(root: Path) -> tuple[list[dict[str, Any]], list[str], dict[str, Any]]:
    """Statuses for `reconciler status`, with notes on what could not be looked at and what
    the engine is (its kind, and a Swarm's nodes). Works with broken manifests (the last
    reconciled state) and without an engine (UNKNOWN)."""
    notes = []
    desired: DesiredState | None
    try:
        desired = desired_state(root)
        instance = desired.repo.instance
    except ManifestError as exc:
        desired = None
        instance = load(root)[0].instance
        notes.append(
            f"{exc.summary()}: showing the last reconciled state (run reconciler validate)"
        )
    if desired is not None:
        days = desired.repo.settings.retirement_warning_days
        notes += [n for d in desired.deployments if (n := retirement_notice(d, now(), days))]
    snapshot = read_snapshot(root, instance)
    observed, problem = None, None
    settings = desired.repo.settings if desired else None
    engine: dict[str, Any] = {"kind": settings.engine.kind if settings else "docker"}
    try:
        backend = connect(settings)
        observed = observe(backend, instance, False)
        engine = backend.engine_info()
    except EngineUnreachable as exc:
        problem = str(exc)
        notes.append(problem)
    return deployment_statuses(snapshot, desired, observed, problem), notes, engine
