"""Plan: desired state vs. observed containers and the last snapshot → changes, each with a cause.

A pure function over plain data. Symbols follow Terraform: `+` create, `~` update in place,
`-/+` replace, `-` stop or delete. AI Core's rules (their statuses, tests and reasons live in
`lifecycle`, shared with the AI API) are enforced here, before anything changes:

* a STOPPED deployment cannot be restarted (create a new deployment instead);
* a new configuration must keep the deployment's scenario and executable;
* a DEAD deployment may get a new configuration within 7 days, and stays DEAD (no retry loop)
  until its configuration (or image) changes;
* a deployment whose ttl expired is stopped and deleted, and not recreated under that name;
* a deployment DEAD for more than 7 days is deleted (a tombstone keeps the name from returning);
* a container that dies or disappears outside the reconciler is restored, with an exponential
  backoff between restores; one that keeps dying is DEAD ("crash loop") after RESTORE_LIMIT;
* a replica unready beyond its liveness limit (its liveness probe's failureThreshold ×
  periodSeconds, else Settings' unreadyRestartSeconds) is restored like one that died.

`deadlines` (and a plan's `waits`, its deferred restores) say when the plan changes by the
clock alone (ttl, DEAD retention, the end of a restore backoff, an unready replica reaching
its liveness limit): a watch loop wakes up then.

Replacement is start-first (zero downtime) unless the host's GPU inventory has no free GPU for
the new container, in which case the old one is stopped first.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from ..backends.base import Observed, Replica
from ..errors import Problem, UserError
from ..manifests.catalog import retirement_notice
from ..manifests.desired import DesiredDeployment, DesiredState
from ..manifests.spec import UNSEALED, UNSEALED_HASH_VERSION, Hashing, Identity
from .autoscale import Decision
from .lifecycle import (
    ACTIVE,
    DEAD_RETENTION,  # also imported from here by the AI API
    LIVE,
    Status,
    dead_expired,
    dead_expires_at,
    dead_reconfigure_refusal,
    executable_change_refusal,
    liveness_due,
    liveness_limit,
    not_retried,
    restart_refusal,
    retired,
    retirement_at,
    ttl_expired,
    ttl_expires_at,
)
from .record import Record, Snapshot, iso, parse_iso

FORMAT_VERSION = 1
# Drift restores: the first at once, then 1 s, 2 s, 4 s ... (capped) after the previous one.
# Restores count within a window: a deployment that stayed up that long starts from zero.
# A deployment whose containers all exit again after RESTORE_LIMIT restores in the window is
# DEAD (crash loop). Containers removed by hand (rather than exited) keep being restored. With a
# restart policy Docker restarts a crashed container itself: more than RESTORE_LIMIT restarts
# while it is still restarting (Docker's own backoff) is a crash loop as well.
RESTORE_BACKOFF = timedelta(seconds=1)
RESTORE_BACKOFF_CAP = timedelta(seconds=60)
RESTORE_WINDOW = timedelta(minutes=10)
RESTORE_LIMIT = 4


class Action(enum.StrEnum):
    CREATE = "create"
    UPDATE = "update"
    REPLACE = "replace"
    STOP = "stop"
    DELETE = "delete"


SYMBOLS = {
    Action.CREATE: "+",
    Action.UPDATE: "~",
    Action.REPLACE: "-/+",
    Action.STOP: "-",
    Action.DELETE: "-",
}


@dataclass(frozen=True)
class Change:
    action: Action
    deployment_id: str
    name: str
    resource_group: str
    cause: str
    desired: DesiredDeployment | None = None  # None when deleting
    config_hash: str | None = None
    image_id: str | None = None
    create: tuple[int, ...] = ()  # replica indexes to create
    remove_first: tuple[Replica, ...] = ()  # not serving: removed before creating
    retire: tuple[Replica, ...] = ()  # removed once the new containers are ready
    update: tuple[Replica, ...] = ()  # resources changed in place
    fields: tuple[str, ...] = ()  # identity fields that changed (replace)
    gpus: tuple[str, ...] = ()  # device ids for the new containers, spec.gpus per replica
    stop_first: bool = False  # no free GPU for a start-first replacement
    failure: str | None = None  # cannot be done: the deployment becomes DEAD with this reason
    expire: bool = False  # a ttl deletion: remembered so the name is not recreated
    note: str | None = None  # with expire: the statusMessage the deletion leaves
    restore: int = 0  # a drift restore: its number in the current crash-loop window
    hashing: Hashing | None = None  # the label format of new containers (see _hashing_for)
    replicas: int = 0  # how many run once it is done (an autoscaled count: see planned_replicas)
    scaled: str | None = None  # the count changes: why (recorded as the last scale's reason)
    unplaced: str | None = None  # replicas a scale-up leaves out, and why (no free GPU)

    @property
    def symbol(self) -> str:
        return SYMBOLS[self.action]

    def describe(self) -> str:
        group = "" if self.resource_group == "default" else f" [{self.resource_group}]"
        return f"{self.symbol} {self.name}{group} ({self.deployment_id}): {self.cause}"

    def to_json(self) -> dict[str, Any]:
        d = self.desired
        return {
            "action": self.action.value,
            "symbol": self.symbol,
            "deploymentId": self.deployment_id,
            "name": self.name,
            "resourceGroup": self.resource_group,
            "cause": self.cause,
            "fields": list(self.fields),
            "configurationId": d.configuration.id if d else None,
            "configHash": self.config_hash,
            "createReplicas": list(self.create),
            "removeContainers": [c.name for c in (*self.remove_first, *self.retire)],
            "updateContainers": [c.name for c in self.update],
            "gpus": list(self.gpus),
            "replicas": self.replicas,
            "failure": self.failure,
        }


@dataclass(frozen=True)
class Pending:
    """A deployment whose containers run as desired but were never seen ready (for instance
    a pass was interrupted while waiting): no Docker change, only a readiness wait."""

    desired: DesiredDeployment
    containers: tuple[Replica, ...]
    config_hash: str
    replicas: int = 0


@dataclass(frozen=True, order=True)
class Deadline:
    """A moment at which the plan changes by the clock alone."""

    at: datetime
    what: str


NOT_HEALED = "not restored, self-heal is off (`reconciler reconcile` restores it)"


@dataclass(frozen=True)
class Drift:
    """A deployment whose containers were changed outside the reconciler and are left so:
    out of sync until a person reconciles (or changes the manifests)."""

    deployment_id: str
    name: str
    cause: str

    def to_json(self) -> dict[str, str]:
        return {"deploymentId": self.deployment_id, "name": self.name, "cause": self.cause}


@dataclass(frozen=True)
class Plan:
    changes: tuple[Change, ...]
    problems: tuple[Problem, ...]  # rules the manifests break: nothing may be applied
    warnings: tuple[str, ...]
    settle: tuple[Pending, ...]
    hashes: Mapping[str, str]  # desired config hash per deployment id
    revision: str | None = None
    # Restores this plan defers (backoff, unready replicas below their liveness limit): when
    # they are due.
    waits: tuple[Deadline, ...] = ()
    drift: tuple[Drift, ...] = ()  # changed by hand and not restored (self-heal is off)

    @property
    def has_changes(self) -> bool:
        return bool(self.changes)

    def summary(self) -> str:
        counts = {a: sum(1 for c in self.changes if c.action == a) for a in Action}
        parts = [f"{n} to {a.value}" for a, n in counts.items() if n]
        return "Plan: " + (", ".join(parts) if parts else "no changes") + "."

    def to_json(self) -> dict[str, Any]:
        return {
            "formatVersion": FORMAT_VERSION,
            "revision": self.revision,
            "changes": [c.to_json() for c in self.changes],
            "drift": [d.to_json() for d in self.drift],
            "warnings": list(self.warnings),
            "errors": [
                {"file": p.file, "line": p.line, "pointer": p.pointer, "message": p.message}
                for p in self.problems
            ],
        }


def plan(
    desired: DesiredState,
    observed: Observed,
    snapshot: Snapshot,
    now: datetime,
    allow_empty: bool = False,
    revision: str | None = None,
    *,
    hashing: Hashing,
    scales: Mapping[str, Decision] | None = None,
    unavailable: Mapping[str, str] | None = None,
    notes: tuple[str, ...] = (),
    self_heal: bool = True,
) -> Plan:
    """`hashing`: how secret values are sealed in hashes (the instance's key); `scales`: the
    counts `reconciler serve`'s autoscaler asks for now, by deployment id; `unavailable`:
    deployments whose model's store cannot be read, and why (reconciler.core.models);
    `notes`: warnings from before planning; `self_heal` False: containers stopped, removed or
    added by hand are reported in `Plan.drift` instead of restored."""
    scales = scales or {}
    unavailable = unavailable or {}
    _refuse_foreign(desired, observed)
    by_dep = observed.by_deployment()
    changes: list[Change] = []
    problems: list[Problem] = []
    warnings: list[str] = list(notes)
    settle: list[Pending] = []
    hashes: dict[str, str] = {}
    waits: list[Deadline] = []
    drift: list[Drift] = []
    for d in desired.deployments:
        containers = by_dep.get(d.id, [])
        image_id = observed.image_id(d.spec.image)
        rec = snapshot.records.get(d.id)
        known = _identities(d, image_id, hashing)
        chosen = _hashing_for(d, image_id, hashing, known, containers, rec)
        hashes[d.id] = d.spec.identity(image_id, chosen).config_hash
        unready_limit = liveness_limit(
            d.spec.liveness, desired.repo.settings.unready_restart_seconds
        )
        outcome = _plan_deployment(
            d,
            rec,
            containers,
            image_id,
            known,
            chosen,
            now,
            unready_limit,
            scales.get(d.id),
            unavailable.get(d.id),
            self_heal,
        )
        problems += outcome.problems
        if outcome.drift:
            drift.append(outcome.drift)
        warnings += outcome.warnings
        notice = retirement_notice(d, now, desired.repo.settings.retirement_warning_days)
        if notice:
            warnings.append(notice)
        if outcome.wait:
            waits.append(outcome.wait)
        if outcome.change:
            changes.append(outcome.change)
        elif outcome.settle:
            running = tuple(c for c in containers if c.alive)
            settle.append(Pending(d, running, hashes[d.id], len(running)))
    changes += _deletions(desired, by_dep, snapshot, allow_empty)
    if desired.repo.settings.gpus:
        changes = _assign_gpus(changes, observed, desired.repo.settings.gpus)
    if observed.memory and any(scale_up(c) for c in changes):
        changes = _fit_memory(changes, observed, observed.memory)
    return Plan(
        tuple(changes),
        tuple(problems),
        tuple(warnings),
        tuple(settle),
        hashes,
        revision,
        tuple(waits),
        tuple(drift),
    )


def _refuse_foreign(desired: DesiredState, observed: Observed) -> None:
    """Containers of this instance made from another GitOps root: two roots would fight over
    them (each deleting the other's deployments), so nothing is planned."""
    root = str(desired.repo.root)
    foreign = [c for c in observed.containers if c.root and c.root != root]
    if foreign:
        c = foreign[0]
        raise UserError(
            f"instance {desired.repo.instance!r} is also used by the GitOps root {c.root} "
            f"(container {c.name}): give one of the roots another spec.instance in its Settings"
        )


def _deletions(
    desired: DesiredState,
    by_dep: Mapping[str, list[Replica]],
    snapshot: Snapshot,
    allow_empty: bool,
) -> list[Change]:
    """Deployments that run or are recorded but are no longer declared."""
    desired_ids = {d.id for d in desired.deployments}
    gone = sorted((set(by_dep) | set(snapshot.records)) - desired_ids)
    deletions = [
        _delete(dep_id, snapshot.records.get(dep_id), by_dep.get(dep_id, [])) for dep_id in gone
    ]
    # An empty desired set that would remove containers is refused: it is far more often a
    # truncated or emptied folder than an intent. Records of deployments that run nothing
    # (STOPPED, DEAD) are cleared without the flag; that is what deleting the last one asks.
    serving = [d for d in deletions if d.retire]
    if serving and not desired.deployments and not allow_empty:
        raise UserError(
            f"the manifests declare no deployment at all, which would delete all {len(serving)} "
            "running ones: refusing. If that is what you want, pass --allow-empty"
        )
    return deletions


@dataclass
class _Outcome:
    change: Change | None = None
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    settle: bool = False
    wait: Deadline | None = None  # a deferred restore (backoff, liveness)
    drift: Drift | None = None  # changed by hand, not restored (self-heal is off)


def _identities(
    d: DesiredDeployment, image_id: str | None, hashing: Hashing
) -> tuple[Identity, ...]:
    """The identities a container of this spec may carry: the sealed one, and for a spec with
    secret values the unsealed one of earlier releases (computed here, never written anew)."""
    sealed = d.spec.identity(image_id, hashing)
    if sealed.version == UNSEALED_HASH_VERSION:
        return (sealed,)
    return sealed, d.spec.identity(image_id, UNSEALED)


def _hashing_for(
    d: DesiredDeployment,
    image_id: str | None,
    hashing: Hashing,
    known: tuple[Identity, ...],
    containers: list[Replica],
    rec: Record | None,
) -> Hashing:
    """The format this deployment is planned in. A deployment with secret values whose
    containers (or failed attempt) an earlier release labelled unsealed keeps that format
    while they match: upgrading then replaces no container, settles nothing and retries no
    failed configuration, and the hash written is the one those labels and that record hold
    already. Its next configuration change brings the sealed format."""
    if len(known) < 2:
        return hashing
    unsealed = known[1]
    kept = any(
        c.hash_version == UNSEALED_HASH_VERSION and _is_current(c, (unsealed,), image_id)
        for c in containers
    )
    if kept or (rec is not None and rec.failed_hash == unsealed.config_hash):
        return UNSEALED
    return hashing


@dataclass(frozen=True)
class _Target:
    """One declared deployment being planned, with everything known of it."""

    d: DesiredDeployment
    rec: Record | None
    containers: tuple[Replica, ...]
    image_id: str | None
    known: tuple[Identity, ...]
    hashing: Hashing
    now: datetime
    config_hash: str
    unready_limit: int | None = None  # seconds a replica may stay unready (None: no limit)
    replicas: int = 1  # how many should run (planned_replicas)
    asked: Decision | None = None  # the autoscaler's request now, if any
    self_heal: bool = True  # False: containers changed by hand are reported, not restored

    @property
    def status(self) -> str | None:
        return self.rec.status if self.rec else None

    @property
    def scaled_to_zero(self) -> bool:
        """Serving, with no replica until a request comes (minReplicas 0, idle)."""
        rec = self.rec
        return rec is not None and rec.status == Status.RUNNING and rec.replicas == 0

    @property
    def drift(self) -> bool:
        """Its containers are meant to run: any that died or vanished did so outside the
        reconciler, and bringing them back is a drift restore."""
        return self.status in LIVE

    def unresponsive(self, c: Replica) -> bool:
        """An alive replica unready beyond its liveness limit: restarted like one that died
        (only while its containers are meant to run, so that it is a drift restore)."""
        return self.drift and c.alive and liveness_due(c.unready_seconds, self.unready_limit)

    def change(self, action: Action, cause: str, **fields: Any) -> Change:
        return Change(
            action,
            deployment_id=self.d.id,
            name=self.d.name,
            resource_group=self.d.deployment.resource_group,
            cause=cause,
            desired=self.d,
            config_hash=self.config_hash,
            image_id=self.image_id,
            hashing=self.hashing,
            replicas=self.replicas,
            scaled=self.asked.reason if self.asked is not None else None,
            **fields,
        )


def planned_replicas(
    d: DesiredDeployment, rec: Record | None, config_hash: str, asked: Decision | None
) -> int:
    """How many replicas a deployment should run. A fixed count (maxReplicas not above
    minReplicas) is the manifest's. An autoscaled one is runtime state, which git does not
    hold: what the autoscaler asks for now, else what was applied last, within the bounds the
    manifest gives now (so a reconcile keeps it, and a change of the bounds applies). A
    configuration not applied yet starts with at least one replica even when minReplicas is 0
    (Knative's initial scale): it proves it starts, and the autoscaler takes it to zero when
    it stays idle."""
    spec = d.spec
    if not spec.autoscaled:
        return spec.replicas
    if asked is not None:
        count = asked.desired
    elif rec is not None and rec.replicas is not None:
        count = rec.replicas
    else:
        count = spec.replicas
    count = min(max(count, spec.replicas), spec.max_replicas)
    applied = rec is not None and rec.status == Status.RUNNING and rec.config_hash == config_hash
    return count if count or applied else 1


def _plan_deployment(
    d: DesiredDeployment,
    rec: Record | None,
    containers: list[Replica],
    image_id: str | None,
    known: tuple[Identity, ...],
    hashing: Hashing,
    now: datetime,
    unready_limit: int | None = None,
    asked: Decision | None = None,
    model_problem: str | None = None,
    self_heal: bool = True,
) -> _Outcome:
    config_hash = d.spec.identity(image_id, hashing).config_hash
    t = _Target(
        d,
        rec,
        tuple(containers),
        image_id,
        known,
        hashing,
        now,
        config_hash,
        unready_limit,
        planned_replicas(d, rec, config_hash, asked),
        asked,
        self_heal,
    )
    # The lifecycle's verdicts come first, in this order: a deployment that is gone (tombstone,
    # ttl), retired or stopped is not checked any further; a manifest that breaks a rule
    # changes nothing; one DEAD past its retention is deleted whatever the manifest says.
    for rule in (_tombstone, _ttl_expiry, _retirement, _target_stopped, _refused, _dead_retention):
        outcome = rule(t)
        if outcome is not None:
            return outcome
    current = [c for c in containers if _is_current(c, known, image_id)]
    stale = [c for c in containers if c not in current]
    if model_problem is not None:
        return _model_unavailable(t, current, stale, model_problem)
    outcome = _held_back(t, current, stale)
    if outcome is None:
        outcome = _docker_crash_loop(t, current)
    return outcome if outcome is not None else _converge(t, current, stale)


def _tombstone(t: _Target) -> _Outcome | None:
    """A deployment deleted by its ttl or after DEAD_RETENTION is gone for good under this
    name: its record stays (expired) so that the name is not deployed again by accident."""
    rec = t.rec
    if rec is None or not rec.expired:
        return None
    dead = rec.status == Status.DEAD  # deleted after DEAD_RETENTION rather than by its ttl
    why = f"after {DEAD_RETENTION.days} days DEAD" if dead else f"when its ttl ({rec.ttl}) expired"
    warning = (
        f"{t.d.name}: deleted {why}; remove it from the manifests or deploy it under a new name"
    )
    if not t.containers:
        return _Outcome(warnings=[warning])
    cause = "DEAD retention expired" if dead else "ttl expired"
    change = t.change(
        Action.DELETE, cause, retire=t.containers, expire=True, note=rec.status_message
    )
    return _Outcome(change, warnings=[warning])


def _ttl_expiry(t: _Target) -> _Outcome | None:
    """ttl: counted from creation (an update does not restart it)."""
    created = parse_iso(t.rec.created_at) if t.rec else None
    ttl = t.d.deployment.ttl
    if not ttl_expired(created, ttl, t.now):
        return None
    return _Outcome(t.change(Action.DELETE, f"ttl {ttl} expired", retire=t.containers, expire=True))


def _retirement(t: _Target) -> _Outcome | None:
    """A deployment of a retired model version stops working on its retirement date, as
    upstream: it is stopped with the reason, and stays stopped."""
    model = t.d.model
    if (
        model is None
        or t.d.deployment.target_status != Status.RUNNING
        or not retired(model.retirement, t.now)
    ):
        return None
    cause = f"model {model.label} retired on {model.version.retirement_date}"
    message = f"stopped: {cause}{model.replacement_hint()}"
    if t.status in (Status.STOPPED, Status.DEAD):
        return _Outcome(
            warnings=[
                f"{t.d.name}: {message}; deploy a configuration of a supported version under a "
                "new deployment"
            ]
        )
    return _Outcome(t.change(Action.STOP, cause, retire=t.containers, note=message))


def _target_stopped(t: _Target) -> _Outcome | None:
    if t.d.deployment.target_status != Status.STOPPED:
        return None
    if t.containers or t.status in ACTIVE:
        return _Outcome(t.change(Action.STOP, "targetStatus STOPPED", retire=t.containers))
    return _Outcome()


def _refused(t: _Target) -> _Outcome | None:
    problems = _rule_problems(t.d, t.rec, t.now)
    return _Outcome(problems=problems) if problems else None


def _dead_retention(t: _Target) -> _Outcome | None:
    """AI Core deletes a deployment that has been DEAD for DEAD_RETENTION; the record stays as
    a tombstone (see _tombstone)."""
    rec = t.rec
    if rec is None or rec.status != Status.DEAD:
        return None
    if not dead_expired(parse_iso(rec.dead_since), t.now):
        return None
    cause = f"DEAD since {rec.dead_since}, more than {DEAD_RETENTION.days} days"
    return _Outcome(
        t.change(Action.DELETE, cause, retire=t.containers, expire=True, note=f"deleted: {cause}")
    )


def _rule_problems(d: DesiredDeployment, rec: Record | None, now: datetime) -> list[Problem]:
    """What the manifest asks that the lifecycle refuses, at the field that asks it."""
    if rec is None:
        return []
    doc = d.deployment.doc
    refusal = restart_refusal(rec.status, rec.ever_started)
    if refusal:
        return [doc.problem("/spec/targetStatus", f"deployment {d.name} {refusal}")]
    if not rec.configuration_id or rec.configuration_id == d.configuration.id:
        return []
    refusal = executable_change_refusal(
        (rec.executable_id, rec.scenario_id),
        (d.template.name, d.template.scenario_id),
        configuration=d.configuration.id,
    ) or dead_reconfigure_refusal(rec.status, parse_iso(rec.dead_since), now)
    if refusal:
        return [doc.problem("/spec/configurationId", f"deployment {d.name} {refusal}")]
    return []


def _held_back(t: _Target, current: list[Replica], stale: list[Replica]) -> _Outcome | None:
    """The failed-hash rule, while nothing of the failed configuration runs: a DEAD deployment
    stays DEAD (its leftovers are removed), and a failed update leaves the old containers
    serving, until the configuration or image changes."""
    rec = t.rec
    if rec is None or current or not not_retried(rec.failed_hash, t.config_hash):
        return None
    if rec.status == Status.DEAD:
        leftover = (
            t.change(Action.DELETE, "leftover of a DEAD deployment", retire=tuple(stale))
            if stale
            else None
        )
        warning = (
            f"{t.d.name} is DEAD ({rec.status_message}); it is not retried until its "
            "configuration or image changes"
        )
        return _Outcome(leftover, warnings=[warning])
    if not any(c.alive for c in stale):
        return None  # nothing serves any more: replaced like any other configuration
    serving = rec.latest_running_configuration_id
    return _Outcome(
        warnings=[
            f"{t.d.name}: the update to configuration {t.d.configuration.id} failed "
            f"({rec.status_message}); {serving} keeps serving. Change the configuration "
            "or image to retry"
        ]
    )


def _model_unavailable(
    t: _Target, current: list[Replica], stale: list[Replica], why: str
) -> _Outcome:
    """Its model's store cannot be read and the host has no copy: it cannot start. DEAD with
    the store's reason, once (the failed-hash rule holds it); a pass that can read the store
    again gives it a version, so a new config hash, and retries it."""
    held = _held_back(t, current, stale)
    if held is not None:
        return held
    action = Action.REPLACE if t.containers else Action.CREATE
    return _Outcome(
        t.change(
            action,
            f"model {t.d.spec.model_uri} cannot be read",
            remove_first=t.containers,
            failure=f"model {t.d.spec.model_uri}: {why}",
        )
    )


def _docker_crash_loop(t: _Target, current: list[Replica]) -> _Outcome | None:
    """Docker restarts a crashing container itself (restart policy) with its own exponential
    backoff; one still restarting after more than RESTORE_LIMIT restarts crash-loops."""
    looping = [c for c in current if c.state == "restarting" and c.restarts > RESTORE_LIMIT]
    if not looping or not t.drift:
        return None
    c = looping[0]
    return _Outcome(
        t.change(
            Action.REPLACE,
            f"container crash-looping ({c.restarts} restarts by Docker)",
            remove_first=(c, *(o for o in t.containers if o != c)),
            failure=(
                f"crash loop: container exited with code {c.exit_code} and was restarted "
                f"{c.restarts} times by Docker; not retried until its configuration or "
                "image changes"
            ),
        )
    )


@dataclass(frozen=True)
class _Work:
    """What the containers need to match the spec: replica indexes to create, containers to
    remove before that (not serving), to retire once the new ones are ready, to update in
    place; `keep` are the serving replicas that stay."""

    keep: Mapping[int, Replica]
    create: tuple[int, ...]
    remove_first: tuple[Replica, ...]
    retire: tuple[Replica, ...]
    update: tuple[Replica, ...]
    wanted: Mapping[str, Any]  # the spec's resources
    unresponsive: tuple[Replica, ...] = ()  # of remove_first: alive but unready too long

    @property
    def needed(self) -> bool:
        return bool(self.create or self.retire or self.remove_first or self.update)


@dataclass(frozen=True)
class _Step:
    """The action that does the work, and the causes it is shown with."""

    action: Action
    causes: list[str]
    fields: tuple[str, ...] = ()  # identity fields that changed (replace)
    restore: bool = False  # containers died or vanished outside the reconciler: drift restore


def _sort_out(t: _Target, current: list[Replica], stale: list[Replica]) -> _Work:
    spec = t.d.spec
    count = t.replicas
    keep: dict[int, Replica] = {}
    remove_first: list[Replica] = []
    retire = list(stale)
    # Running ones first, the newest of each replica index kept: a duplicate or a dead one
    # is removed before its replacement starts.
    for c in sorted(current, key=lambda c: (not c.alive, -c.created)):
        if c.replica >= count:
            retire.append(c)
        elif c.replica in keep or not c.alive or t.unresponsive(c):
            remove_first.append(c)
        else:
            keep[c.replica] = c
    wanted = spec.resources()
    return _Work(
        keep=keep,
        create=tuple(i for i in range(count) if i not in keep),
        remove_first=tuple(remove_first),
        retire=tuple(retire),
        update=tuple(c for c in keep.values() if _resources(c, t.rec) != wanted),
        wanted=wanted,
        unresponsive=tuple(c for c in remove_first if t.unresponsive(c)),
    )


def _converge(t: _Target, current: list[Replica], stale: list[Replica]) -> _Outcome:
    work = _sort_out(t, current, stale)
    if not work.needed:
        rec = t.rec
        # Also when the record names another configuration: an update that failed while this
        # one kept serving, declared again (the record then says what serves, not the failure).
        settle = (
            rec is None
            or rec.status != Status.RUNNING
            or rec.config_hash != t.config_hash
            or rec.configuration_id != t.d.configuration.id
        )
        return _Outcome(settle=settle, wait=_liveness_wait(t, work))

    step = _step(t, stale, work)
    cause = "; ".join(step.causes)
    if not t.self_heal and step.restore and not work.unresponsive and not work.update:
        # Drift alone (nothing from git): reported for a person to decide, as Argo CD does
        # with self-heal off; an unresponsive replica is still restarted (health, not drift).
        return _Outcome(
            warnings=[f"{t.d.name}: {cause}: {NOT_HEALED}"], drift=Drift(t.d.id, t.d.name, cause)
        )
    attempt, failure = 0, None
    if step.restore and t.rec is not None:
        attempt = _restore_attempt(t.rec, t.now)
        # Every container exited again (not removed by hand, not one replica of several)
        # after RESTORE_LIMIT restores: it crash-loops. The others keep backing off.
        if attempt > RESTORE_LIMIT and step.action == Action.REPLACE:
            minutes = int(RESTORE_WINDOW.total_seconds() // 60)
            failure = (
                f"crash loop: {cause} after {RESTORE_LIMIT} restores within {minutes} minutes; "
                "not retried until its configuration or image changes"
            )
        else:
            at = _restore_at(t.rec, attempt)
            if at is not None and t.now < at:
                waits = [Deadline(at, f"restore {attempt} of {t.d.name}")]
                liveness = _liveness_wait(t, work)
                return _Outcome(
                    warnings=[f"{t.d.name}: {cause}; restore {attempt} backs off until {iso(at)}"],
                    wait=min([*waits, *([liveness] if liveness else [])]),
                )
    return _Outcome(
        t.change(
            step.action,
            cause,
            create=work.create,
            remove_first=work.remove_first,
            retire=work.retire,
            update=work.update,
            fields=step.fields,
            failure=failure,
            restore=attempt,
        )
    )


def _step(t: _Target, stale: list[Replica], work: _Work) -> _Step:
    if stale and not work.keep:  # nothing of this spec serves: a new configuration or image
        fields = _changed_fields(stale, t.known)
        return _Step(Action.REPLACE, [_config_cause(stale, t.d, fields, t.image_id, t.rec)], fields)
    if not t.containers and t.scaled_to_zero:
        if t.rec is not None and t.rec.config_hash == t.config_hash:
            return _update_step(t, stale, work)  # woken: 0 → 1
        return _Step(Action.REPLACE, ["configuration changed while scaled to zero"])
    if not t.containers:
        if t.drift:
            return _Step(Action.CREATE, ["container removed outside the reconciler"], restore=True)
        if t.status == Status.DEAD:
            cause = f"new configuration {t.d.configuration.id} for a DEAD deployment"
            return _Step(Action.CREATE, [cause])
        return _Step(Action.CREATE, ["new deployment"])
    if work.remove_first and not work.keep:
        first = work.remove_first[0]
        if first in work.unresponsive:
            return _Step(Action.REPLACE, [_unready_cause(t, first)], restore=True)
        where = " outside the reconciler" if t.drift else ""
        return _Step(
            Action.REPLACE, [f"container {first.describe_state()}{where}"], restore=t.drift
        )
    return _update_step(t, stale, work)


def _update_step(t: _Target, stale: list[Replica], work: _Work) -> _Step:
    """Some replicas serve: the rest is done around them, in place."""
    causes: list[str] = []
    restore = False
    if stale:
        causes.append(f"{len(stale)} container(s) of an older configuration left over")
    rec, replicas = t.rec, t.replicas
    old = rec.replicas if rec and rec.replicas is not None else len(work.keep) + len(work.retire)
    if old != replicas:
        why = f" ({t.asked.reason})" if t.asked is not None else ""
        causes.append(f"replicas {old} → {replicas}{why}")
    elif work.create:
        unready = {c.replica for c in work.unresponsive}
        missing = [i for i in sorted(work.create) if i not in unready]
        if missing:
            causes.append(f"replica {', '.join(map(str, missing))} missing or not running")
        causes += [_unready_cause(t, c) for c in work.unresponsive]
        restore = t.drift
    elif work.remove_first:
        # Every replica serves; what goes is a second container of one of them (left by an
        # interrupted pass, or started by hand from our labels).
        extra = work.remove_first[0]
        causes.append(f"extra container of replica {extra.replica} ({extra.describe_state()})")
        restore = t.drift
    if work.update:
        causes.append(_resources_cause(_resources(work.update[0], rec), work.wanted))
    return _Step(Action.UPDATE, causes, restore=restore)


def _unready_cause(t: _Target, c: Replica) -> str:
    """Why an alive replica is restarted: how long it has been unready, the limit that ran
    out, and what its last check said (on one line, as plan lines are)."""
    live = t.d.spec.liveness
    limit = (
        f"liveness: {live.failure_threshold} × {live.period_seconds}s"
        if live is not None
        else f"unreadyRestartSeconds {t.unready_limit}"
    )
    detail = " ".join(c.health_detail.split()) or "the health check failed"
    return f"replica {c.replica} unready for {int(c.unready_seconds or 0)}s ({limit}): {detail}"


def _liveness_wait(t: _Target, work: _Work) -> Deadline | None:
    """When the first serving replica that is unready (but not long enough yet) reaches its
    liveness limit: the plan changes then by the clock alone."""
    if not t.drift or t.unready_limit is None:
        return None
    unready = [c for c in work.keep.values() if c.unready_seconds is not None]
    if not unready:
        return None
    c = max(unready, key=lambda c: c.unready_seconds or 0.0)
    left = timedelta(seconds=t.unready_limit - (c.unready_seconds or 0.0))
    return Deadline(
        t.now + left, f"replica {c.replica} of {t.d.name} unready for {t.unready_limit}s"
    )


def _restore_attempt(rec: Record, now: datetime) -> int:
    """The number of the restore now due: one more than the last, within the window."""
    last = parse_iso(rec.last_restore)
    if last is None or now - last >= RESTORE_WINDOW:
        return 1
    return rec.restores + 1


def _restore_at(rec: Record, attempt: int) -> datetime | None:
    """When restore number `attempt` may run: at once for the first, then 1 s, 2 s, 4 s ...
    (capped) after the previous restore."""
    last = parse_iso(rec.last_restore)
    if attempt <= 1 or last is None:
        return None
    return last + min(RESTORE_BACKOFF * 2 ** (attempt - 2), RESTORE_BACKOFF_CAP)


def deadlines(desired: DesiredState, snapshot: Snapshot) -> list[Deadline]:
    """The clock-driven rules' next moments for every declared deployment: ttl expiry, the
    deletion of a deployment DEAD for 7 days and model retirement dates (deferred restores are
    in `Plan.waits`). Past moments are included (the caller decides what is still ahead)."""
    out: list[Deadline] = []
    for d in desired.deployments:
        day = d.model.retirement if d.model else None
        if day and d.model:
            out.append(Deadline(retirement_at(day), f"model {d.model.label} of {d.name} retires"))
        rec = snapshot.records.get(d.id)
        if rec is None or rec.expired:
            continue
        ttl_at = ttl_expires_at(parse_iso(rec.created_at), d.deployment.ttl)
        if ttl_at:
            out.append(Deadline(ttl_at, f"ttl {d.deployment.ttl} of {d.name} expires"))
        dead_at = dead_expires_at(parse_iso(rec.dead_since)) if rec.status == Status.DEAD else None
        if dead_at:
            out.append(Deadline(dead_at, f"{d.name} DEAD for {DEAD_RETENTION.days} days"))
    return out


# Identity fields a later release added. A container made before one existed lacks it: it is
# not replaced for that alone (an upgrade of the reconciler replaces nothing); its next real
# change brings the field. "health": containers before continuous health checks keep running
# without one (their health reads "", as ready as before).
LATER_FIELDS = frozenset({"health"})


def _same_fields(old: Mapping[str, str], new: Mapping[str, str]) -> bool:
    """Equal identity fields, where a field `old` predates is not a difference."""
    return dict(old) == {k: v for k, v in new.items() if k in old or k not in LATER_FIELDS}


def _is_current(c: Replica, known: tuple[Identity, ...], image_id: str | None) -> bool:
    """Whether `c` was made from this spec, judged in the hash format its labels carry."""
    mine = next((i for i in known if i.version == c.hash_version), None)
    if mine is not None:
        if c.config_hash == mine.config_hash:
            return True
        if (LATER_FIELDS - set(c.fields)) & set(mine.digests):  # made before a field existed
            return _same_fields(c.fields, mine.digests) and (
                image_id is None or c.image_id == image_id
            )
        # Image not on the host (cannot compare content): the same identity fields are the
        # same container, not a reason to recreate.
        return image_id is None and dict(c.fields) == dict(mine.digests)
    # A container from another hash version: the same identity fields (and image content).
    same_fields = any(_same_fields(c.fields, i.digests) for i in known)
    return same_fields and (image_id is None or c.image_id == image_id)


def _resources(c: Replica, rec: Record | None) -> dict[str, Any]:
    applied = rec.updated_resources.get(c.id) if rec else None
    return dict(applied or c.resources)


def _changed_fields(stale: list[Replica], known: tuple[Identity, ...]) -> tuple[str, ...]:
    # Compared in the old container's own format: an unsealed secret is not a change by itself.
    mine = next((i for i in known if i.version == stale[0].hash_version), known[0])
    old, new = dict(stale[0].fields), dict(mine.digests)
    new = {k: v for k, v in new.items() if k in old or k not in LATER_FIELDS}  # not a change
    return tuple(k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k))


def _config_cause(
    stale: list[Replica],
    d: DesiredDeployment,
    fields: tuple[str, ...],
    image_id: str | None,
    rec: Record | None,
) -> str:
    old_model = stale[0].model
    old_config = stale[0].configuration_id or (rec.configuration_id if rec else None)
    if d.model and old_model and old_model != d.model.label:
        old_version = old_model.rsplit(":", 1)[-1]
        if d.model.follows_latest and old_config == d.configuration.id:
            return f"latest moved: {old_version} → {d.model.version.name}"
        cause = f"model version {old_version} → {d.model.version.name}"
    elif "modelVersion" in fields and rec is not None and rec.model_version:
        new = d.spec.model_version or "?"
        cause = (
            f"artifact changed: {d.spec.model_uri} (version {rec.model_version[:12]} → {new[:12]})"
        )
    elif fields:
        cause = f"config changed: {', '.join(fields)}"
    elif image_id and stale[0].image_id and stale[0].image_id != image_id:
        cause = f"image {d.spec.image} was rebuilt (new content)"
    else:
        cause = "config changed"
    if old_config and old_config != d.configuration.id:
        cause += f" (configuration {old_config} → {d.configuration.id})"
    return cause


def _gib(n: Any) -> str:
    return f"{n / 1024**3:g}Gi" if isinstance(n, int | float) else str(n)


def _resources_cause(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    parts = []
    for key in ("cpus", "memory", "restartPolicy"):
        if old.get(key) != new.get(key):
            show = _gib if key == "memory" else str
            parts.append(f"{key} {show(old.get(key))} → {show(new.get(key))}")
    return "resources changed: " + ", ".join(parts)


def _delete(dep_id: str, rec: Record | None, containers: list[Replica]) -> Change:
    first = containers[0] if containers else None
    name = rec.name if rec else first.deployment_name if first else dep_id
    group = rec.resource_group if rec else first.resource_group if first else "default"
    return Change(
        Action.DELETE,
        deployment_id=dep_id,
        name=name,
        resource_group=group,
        cause="removed from manifests",
        retire=tuple(containers),
    )


def _assign_gpus(
    changes: list[Change], observed: Observed, inventory: Iterable[str]
) -> list[Change]:
    """Give every new container its own GPUs from the declared inventory. GPUs held by
    existing containers stay theirs; a replacement that finds no free GPU stops first."""
    inventory = list(inventory)
    held = {g for c in observed.containers for g in c.gpus}
    assigned: dict[str, Change] = {}
    for change in sorted(changes, key=lambda c: (c.resource_group, c.name)):
        spec = change.desired.spec if change.desired else None
        if not spec or spec.gpus <= 0 or not change.create:
            continue
        released = {g for c in change.remove_first for g in c.gpus}
        free = [g for g in inventory if g not in held or g in released]
        need = spec.gpus * len(change.create)
        if len(free) >= need:
            taken = tuple(free[:need])
            assigned[change.deployment_id] = replace(change, gpus=taken)
            held |= set(taken)
            continue
        if scale_up(change):
            # More replicas for the load: as many as the free GPUs allow, the rest reported
            # (the deployment serves on; the autoscaler asks again later, not in a loop).
            fit = len(free) // spec.gpus
            taken = tuple(free[: fit * spec.gpus])
            held |= set(taken)
            why = f"needs {spec.gpus} GPU(s) each, {len(free)} of the inventory free"
            assigned[change.deployment_id] = replace(_trimmed(change, fit, why), gpus=taken)
            continue
        retiring = [g for c in change.retire for g in c.gpus]
        pool = [g for g in inventory if g in set(free) | set(retiring)]
        if change.action == Action.REPLACE and len(pool) >= need:
            taken = tuple(pool[:need])
            assigned[change.deployment_id] = replace(change, gpus=taken, stop_first=True)
            held |= set(taken)
            continue
        assigned[change.deployment_id] = replace(
            change,
            failure=f"not enough free GPUs: needs {need}, {len(free)} of the inventory "
            f"({', '.join(inventory)}) free",
        )
    return [assigned.get(c.deployment_id, c) for c in changes]


def scale_up(change: Change) -> bool:
    """An autoscaled deployment's update that adds replicas (the autoscaler's, or new
    bounds): one that may do less than asked rather than fail."""
    d = change.desired
    return (
        change.action == Action.UPDATE
        and bool(change.create)
        and d is not None
        and (d.spec.autoscaled)
    )


def _trimmed(change: Change, fit: int, why: str) -> Change:
    """`change` adding only the first `fit` of its new replicas; the rest said, not failed."""
    short = len(change.create) - fit
    unplaced = f"{short} replica(s) not placed: {why}"
    return replace(
        change,
        create=change.create[:fit],
        replicas=change.replicas - short,
        cause=f"{change.cause}; {unplaced}",
        unplaced=unplaced,
    )


def _fit_memory(changes: list[Change], observed: Observed, memory: int) -> list[Change]:
    """Scale-ups add replicas only as far as the host's memory goes: the memory limits of
    this instance's replicas that stay, of other changes' new replicas, and of the added ones
    stay within `memory` (other containers on the host are not counted: their limits are not
    ours to know). Docker lets limits add up beyond the host; an autoscaler must not."""
    going = {c.id for ch in changes for c in (*ch.retire, *ch.remove_first)}
    used = sum(
        int(c.resources.get("memory") or 0)
        for c in observed.containers
        if c.alive and c.id not in going
    )
    used += sum(
        ch.desired.spec.memory * len(ch.create)
        for ch in changes
        if ch.desired is not None and not scale_up(ch)
    )
    out = []
    for change in changes:
        need = change.desired.spec.memory if change.desired is not None else 0
        if not scale_up(change) or need <= 0:
            out.append(change)
            continue
        fit = min(len(change.create), max(0, (memory - used) // need))
        used += fit * need
        if fit < len(change.create):
            free = max(0, memory - used) / 1024**3
            change = _trimmed(
                change,
                fit,
                f"needs {need / 1024**3:.3g} GiB of memory each, {free:.3g} GiB of the "
                f"host's {memory / 1024**3:.3g} GiB not taken by this instance's replicas",
            )
        out.append(change)
    return out
