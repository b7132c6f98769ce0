"""One reconcile pass: load → render → observe → plan → apply → record, under the lock.

The core function shared by the command line (`plan`, `reconcile`, `apply`), the server and
the watch loop. Nothing on the host changes unless the manifests load, validate and
plan without a problem, and the state folder can be written (a pass must be recorded).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..backends import Backend, Observed, connect
from ..errors import ManifestError
from ..manifests.desired import DesiredState, desired_state
from ..manifests.gitsource import read_commit
from ..manifests.revision import working_tree_revision
from ..manifests.sources import check_root
from ..manifests.spec import Hashing
from .apply import DEFAULT_PARALLEL, SCHEDULED_PARALLEL, Outcome, Reporter, apply_plan
from .autoscale import Decision
from .models import Models, evict_models, prepare, resolve_models
from .observe import observe
from .plan import Plan, plan, scale_up
from .record import (
    Recorder,
    Snapshot,
    check_state_writable,
    instance_lock,
    iso,
    label_key,
    now,
    read_snapshot,
    write_snapshot,
)

log = logging.getLogger("reconciler")


@dataclass(frozen=True)
class Preview:
    """What `plan` shows: the inputs and the plan, nothing changed."""

    desired: DesiredState
    observed: Observed
    snapshot: Snapshot
    plan: Plan
    models: Models = field(default_factory=Models)  # what the stores said (apply downloads)


@dataclass(frozen=True)
class PassResult:
    plan: Plan
    outcomes: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0
    applied: bool = True  # False when the user declined the plan
    desired: DesiredState | None = None  # what the pass worked from (watch's deadlines)
    # Deployments waiting for their model's store (unreadable, or failed midway): a pass
    # soon may find it back (watch retries with a backoff).
    store_waits: tuple[str, ...] = ()

    @property
    def converged(self) -> bool:
        return self.applied and all(o.ok for o in self.outcomes)


def preview(
    root: Path,
    backend: Backend | None = None,
    allow_empty: bool = False,
    revision: str | None = None,
) -> Preview:
    """`revision` (a commit, tag, branch ...): the manifests committed there, read from git
    without touching the working tree; None: the working tree's manifests. `backend`: the
    one the manifests' Settings choose, unless given."""
    desired, revision = _load(root, revision)
    return _preview(root, desired, revision, backend or connect(desired.repo.settings), allow_empty)


def _load(root: Path, revision: str | None) -> tuple[DesiredState, str | None]:
    """The desired state, and the revision it was read from."""
    if revision is None:
        return desired_state(root), working_tree_revision(root)
    revision, files = read_commit(root, revision)
    return desired_state(root, files), revision


def _preview(
    root: Path,
    desired: DesiredState,
    revision: str | None,
    backend: Backend,
    allow_empty: bool,
    scales: Mapping[str, Decision] | None = None,
    self_heal: bool | None = True,
) -> Preview:
    snapshot = read_snapshot(root, desired.repo.instance)
    if self_heal is None:
        self_heal = desired.repo.settings.self_heal
    desired, models = resolve_models(desired, snapshot, backend.models())
    observed = observe(backend, desired.repo.instance)
    hashing = instance_hashing(desired.repo.instance)
    moment = now()

    def planned(observed: Observed) -> Plan:
        return plan(
            desired,
            observed,
            snapshot,
            moment,
            allow_empty,
            revision,
            hashing=hashing,
            scales=scales,
            unavailable=models.unavailable,
            notes=models.warnings,
            self_heal=self_heal,
        )

    the_plan = planned(observed)
    if any(scale_up(c) for c in the_plan.changes) and (memory := backend.host_memory()):
        # Replicas added for the load must fit the host: planned again knowing its memory
        # (asked only now: the engine's answer costs more than observing).
        observed = replace(observed, memory=memory)
        the_plan = planned(observed)
    return Preview(desired, observed, snapshot, the_plan, models)


def _log_note(name: str, line: str) -> None:
    log.info("%s: %s", name, line)


def instance_hashing(instance: str) -> Hashing:
    """Seals secret values with the instance's key, read (or made) once, when first needed:
    a repository without secret values never makes one."""
    return Hashing(functools.cache(lambda: label_key(instance)))


def reconcile(
    root: Path,
    *,
    allow_empty: bool = False,
    parallel: int | None = None,
    report: Reporter | None = None,
    note: Reporter | None = None,
    confirm: Callable[[Plan], bool] | None = None,
    stop: threading.Event | None = None,
    trigger: str = "cli",
    lock_wait: float = 10.0,
    revision: str | None = None,
    backend: Backend | None = None,
    scales: Mapping[str, Decision] | None = None,
    self_heal: bool | None = True,
) -> PassResult:
    """One pass. `revision`: apply the manifests committed there (see `preview`); `backend`:
    reuse one (watch keeps one, so that it can tell its own actions' events), else the one
    the manifests' Settings choose; `scales`: replica counts the autoscaler asks for, by
    deployment id (`reconciler serve`), applied within the manifests' bounds; `self_heal`:
    whether containers changed by hand are restored (None: as the Settings say; `reconcile`
    by a person always restores, as a manual sync in Argo CD does). `report` hears
    each deployment's outcome, `note` progress on the way (a large model's download; default:
    the log)."""
    started = time.monotonic()
    started_at = iso(now())
    if revision is None:  # (committed manifests: the working tree may lack the folders)
        check_root(root)  # before anything is made under a mistyped --root
    check_state_writable(root)
    with instance_lock(root, wait=lock_wait):
        desired, revision = _load(root, revision)
        backend = backend or connect(desired.repo.settings)
        view = _preview(root, desired, revision, backend, allow_empty, scales, self_heal)
        the_plan = view.plan
        if the_plan.problems:
            raise ManifestError(the_plan.problems)
        if confirm is not None and not confirm(the_plan):
            return PassResult(the_plan, applied=False, desired=view.desired)
        if not the_plan.changes and not the_plan.settle:
            if view.snapshot.revision != the_plan.revision and view.snapshot.records:
                write_snapshot(root, _with_revision(view.snapshot, the_plan.revision))
            # (a version the last pass replaced is let go now that nothing runs it)
            evict_models(view.desired, view.snapshot, backend.models())
            return PassResult(
                the_plan,
                seconds=time.monotonic() - started,
                desired=view.desired,
                store_waits=_store_waits(view, ()),
            )
        recorder = Recorder(root, view.snapshot, the_plan.revision)
        try:
            outcomes = apply_plan(
                backend,
                view.desired,
                the_plan,
                recorder,
                the_plan.revision,
                parallel or _default_parallel(backend),
                report,
                stop,
                prepare=lambda spec, say: prepare(
                    view.models, backend.models(), spec.model_version, say
                ),
                note=note or _log_note,
            )
        finally:
            recorder.close()  # whatever happened, what was recorded reaches the disk
        # What this pass recorded: a version it replaced is no longer any deployment's.
        evict_models(view.desired, read_snapshot(root, desired.repo.instance), backend.models())
        seconds = time.monotonic() - started
        result = "converged" if all(o.ok for o in outcomes) else "failed"
        if any(o.interrupted for o in outcomes):
            result = "interrupted"
        recorder.finish(
            {
                "revision": the_plan.revision,
                "trigger": trigger,
                "startedAt": started_at,
                "durationSeconds": round(seconds, 2),
                "result": result,
                "changes": [c.describe() for c in the_plan.changes],
                "failures": [o.describe() for o in outcomes if not o.ok],
            }
        )
        return PassResult(
            the_plan,
            outcomes,
            seconds,
            desired=view.desired,
            store_waits=_store_waits(view, outcomes),
        )


def _store_waits(view: Preview, outcomes: list[Outcome]) -> tuple[str, ...]:
    names = {d.id: d.name for d in view.desired.deployments}
    waiting = {names.get(i, i) for i in view.models.unavailable}
    return tuple(sorted(waiting | {o.name for o in outcomes if o.retry and not o.ok}))


def _with_revision(snapshot: Snapshot, revision: str | None) -> Snapshot:
    return Snapshot(snapshot.instance, snapshot.records, snapshot.history, revision)


def _default_parallel(backend: Backend) -> int:
    """How many deployments a pass works on at once when not told: on an engine that waits
    for its own scheduler (Swarm), all of them."""
    return SCHEDULED_PARALLEL if backend.capabilities.rolling_updates else DEFAULT_PARALLEL
