"""Apply: carry out a plan through a backend, and record each deployment's status on the way.

Deployments are worked on in parallel (bounded); the steps of one deployment run in order. The
backend converges a deployment (Docker: start the new containers and wait until they are
ready); only then is it recorded RUNNING, so that gateways route to the new replicas, and only
after a drain delay are the old ones retired. A replacement is thus start-first: the old
replicas keep serving, and keep serving if the new ones fail. Whatever fails, the deployment is
DEAD (or stays RUNNING on its old configuration) with the engine's or the model server's own
words in its statusMessage, and the failed replica's last lines, redacted, in the state.

This module decides and records; it never talks to an engine itself (`reconciler.backends`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from typing import Any

from ..backends import Backend, Converged, ConvergeFailed, Intent, Interrupted, Replica
from ..backends.base import LAST_LINES
from ..errors import UserError
from ..manifests.desired import DesiredDeployment, DesiredState
from ..manifests.spec import ContainerSpec, redact
from .lifecycle import Status
from .plan import Action, Change, Pending, Plan
from .record import Record, Recorder, iso, now

STATUS_MESSAGE_LIMIT = 256  # AI Core's statusMessage length
LOG_LINES_KEPT = LAST_LINES
# After an update is recorded, the old replicas keep serving this long before they stop, so
# that `reconciler serve` (which re-reads the routes twice a second) has moved every client to
# the new ones: no request fails during an update.
DRAIN_SECONDS = 1.5
# The engine's own create/start dominates a cold apply; more overlap than this gains little.
DEFAULT_PARALLEL = 16
# An engine that schedules and replaces replicas itself (Swarm) mostly keeps a pass waiting:
# by default every deployment is worked on at once, up to this many.
SCHEDULED_PARALLEL = 64

Reporter = Callable[[str, str], None]  # (deployment name, what happened)
Say = Callable[[str], None]  # a line of progress about one deployment


@dataclass(frozen=True)
class Outcome:
    deployment_id: str
    name: str
    symbol: str
    ok: bool
    status: str | None
    message: str | None
    seconds: float
    # The pass was told to stop before this deployment was settled (not a failure of it).
    interrupted: bool = False
    # It failed for something outside it that may pass (its model's store): the next pass
    # tries again, and the watch loop brings that pass forward.
    retry: bool = False

    def describe(self) -> str:
        what = self.status or "removed"
        detail = f": {self.message}" if self.message and not self.ok else ""
        return f"{self.symbol} {self.name}: {what} in {self.seconds:.1f}s{detail}"


INTERRUPTED = "interrupted: the pass was stopped; the next pass finishes it"


class _Failed(Exception):
    """A deployment could not be brought up; `logs` are the model server's last lines,
    redacted."""

    def __init__(self, reason: str, logs: tuple[str, ...] = (), retry: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.logs = logs
        # Not the configuration's fault (its model's store failed midway): the failed-hash
        # rule does not hold it, so the next pass tries again (and resumes the download).
        self.retry = retry

    @classmethod
    def of(cls, exc: ConvergeFailed, spec: ContainerSpec) -> _Failed:
        # Secrets the deployment was given never reach the state or a statusMessage.
        return cls(exc.reason, redact((line for line in exc.logs if line.strip()), spec))


_TELLING = ("error", "exception", "fatal", "traceback", "failed", "panic", "killed")


def telling_line(lines: tuple[str, ...]) -> str | None:
    """The log line most likely to say why a server died: the last one that reads like an
    error, else the last one."""
    for line in reversed(lines):
        if any(word in line.lower() for word in _TELLING):
            return line.strip()
    return lines[-1].strip() if lines else None


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= STATUS_MESSAGE_LIMIT else text[: STATUS_MESSAGE_LIMIT - 1] + "…"


class Applier:
    def __init__(
        self,
        backend: Backend,
        desired: DesiredState,
        recorder: Recorder,
        revision: str | None,
        parallel: int = DEFAULT_PARALLEL,
        report: Reporter | None = None,
        stop: threading.Event | None = None,
        drain_seconds: float = DRAIN_SECONDS,
        prepare: Callable[[ContainerSpec, Say], None] | None = None,
        note: Reporter | None = None,
    ) -> None:
        self.backend = backend
        self.repo = desired.repo
        self.recorder = recorder
        self.revision = revision
        self.parallel = max(1, parallel)
        self.report = report or (lambda name, what: None)
        self.stop = stop or threading.Event()
        self.drain_seconds = drain_seconds
        self.prepare = prepare  # gets what a spec needs on the host first (its model)
        self.note = note or (lambda name, what: None)  # progress on the way (not an outcome)
        self._image_ids: dict[str, str] = {}  # per pass: many deployments share one image

    # -- the pass ---------------------------------------------------------------------------

    def run(self, plan: Plan) -> list[Outcome]:
        tasks: list[tuple[Callable[..., Outcome], object]] = [
            (self._change, c) for c in plan.changes
        ]
        tasks += [(self._settle, p) for p in plan.settle]
        if not tasks:
            return []
        outcomes = []
        with ThreadPoolExecutor(max_workers=min(self.parallel, len(tasks))) as pool:
            futures = [pool.submit(fn, arg) for fn, arg in tasks]
            for future in as_completed(futures):
                outcome = future.result()
                outcomes.append(outcome)
                self.report(outcome.name, outcome.describe())
        return sorted(outcomes, key=lambda o: o.name)

    def _interrupted(self, deployment_id: str, name: str, symbol: str, started: float) -> Outcome:
        record = self.recorder.get(deployment_id)
        status = record.status if record else None
        seconds = time.monotonic() - started
        return Outcome(deployment_id, name, symbol, False, status, INTERRUPTED, seconds, True)

    @staticmethod
    def _outcome(
        change: Change, ok: bool, status: str | None, message: str | None, started: float
    ) -> Outcome:
        seconds = time.monotonic() - started
        return Outcome(
            change.deployment_id, change.name, change.symbol, ok, status, message, seconds
        )

    def _change(self, change: Change) -> Outcome:
        started = time.monotonic()
        if self.stop.is_set():  # stopping: start nothing new
            return self._interrupted(change.deployment_id, change.name, change.symbol, started)
        if change.action in (Action.STOP, Action.DELETE):
            return self._outcome(change, True, self._remove_deployment(change), None, started)
        d = change.desired
        assert d is not None
        record = self._begin(change)
        try:
            converged = self._converge(change, record)
        except Interrupted:
            return self._interrupted(change.deployment_id, change.name, change.symbol, started)
        except _Failed as failed:
            record = self._failed(change, failed)
            return replace(
                self._outcome(change, False, record.status, record.status_message, started),
                retry=failed.retry,
            )
        # Recorded first, so that gateways route to the new replicas before the old ones go.
        record = self._running(
            d,
            converged.config_hash,
            change.gpus,
            change,
            retiring=tuple(c.id for c in converged.retire),
        )
        if any(c.alive for c in converged.retire) and self.drain_seconds:
            self.stop.wait(self.drain_seconds)
        self.backend.stop(converged.retire, d.spec.stop_timeout)
        return self._outcome(change, True, record.status, None, started)

    def _settle(self, pending: Pending) -> Outcome:
        """Replicas run, but were not seen ready (a pass was interrupted): wait for them."""
        started = time.monotonic()
        d = pending.desired
        if self.stop.is_set():
            return self._interrupted(d.id, d.name, "~", started)
        record = self.recorder.get(d.id) or self._new_record(d)
        if record.status != Status.RUNNING:
            self.recorder.put(replace(record, status=Status.PENDING, target_status=Status.RUNNING))
        try:
            self.backend.wait_ready(d.spec, pending.containers, self.stop)
        except Interrupted:
            return self._interrupted(d.id, d.name, "~", started)
        except ConvergeFailed as exc:
            self.backend.delete(pending.containers)
            record = self._dead(d, pending.config_hash, _Failed.of(exc, d.spec))
            seconds = time.monotonic() - started
            return Outcome(d.id, d.name, "~", False, record.status, record.status_message, seconds)
        record = self._running(
            d,
            pending.config_hash,
            tuple(g for c in pending.containers for g in c.gpus),
            replicas=pending.replicas,
        )
        return Outcome(d.id, d.name, "~", True, record.status, None, time.monotonic() - started)

    # -- steps ------------------------------------------------------------------------------

    def _converge(self, change: Change, record: Record) -> Converged:
        """Have the backend bring the deployment to the change. Raises _Failed (or the
        backend's Interrupted)."""
        d = change.desired
        assert d is not None
        if change.failure:
            # Replicas that do not serve go with it (a crash loop's exited container), their
            # last lines kept for `reconciler logs`.
            first = change.remove_first[:1]
            logs = self.backend.last_lines(first[0], LOG_LINES_KEPT) if first else ()
            self.backend.delete(change.remove_first)
            raise _Failed(change.failure, redact(logs, d.spec))
        assert change.config_hash is not None and change.hashing is not None
        intent = Intent(
            deployment=d,
            config_hash=change.config_hash,
            hashing=change.hashing,
            instance=self.repo.instance,
            root=str(self.repo.root),
            revision=self.revision,
            publish_address=self.repo.settings.publish_address,
            create=change.create,
            remove_first=change.remove_first,
            retire=change.retire,
            gpus=change.gpus,
            stop_first=change.stop_first,
            replicas=change.replicas,
            image_id=self._image_ids.get(d.spec.image),
        )
        try:
            if change.action == Action.UPDATE and change.update:
                self._update_resources(change, record)
            if change.create and self.prepare is not None:
                # The model downloaded into the hosts' cache, once.
                self.prepare(d.spec, lambda line: self.note(d.name, line))
            converged = self.backend.converge(intent, self.stop)
        except ConvergeFailed as exc:
            raise _Failed.of(exc, d.spec) from None
        except UserError as exc:  # (the store's StoreError: one line, no credential)
            raise _Failed(str(exc), (), retry=True) from None
        if converged.image_id:
            self._image_ids[d.spec.image] = converged.image_id
        return converged

    def _update_resources(self, change: Change, record: Record) -> None:
        """Resources changed in place, and remembered (a replica's labels keep what it was
        created with). Raises ConvergeFailed."""
        assert change.desired is not None
        spec = change.desired.spec
        self.backend.update_resources(change.update, spec)
        applied = dict(record.updated_resources)
        applied.update({c.id: spec.resources() for c in change.update})
        if applied != record.updated_resources:
            self.recorder.update(change.deployment_id, updated_resources=applied)

    def _retire_all(self, replicas: Iterable[Replica], spec: ContainerSpec | None) -> None:
        self.backend.stop(replicas, spec.stop_timeout if spec else None)

    def _remove_deployment(self, change: Change) -> str | None:
        record = self.recorder.get(change.deployment_id)
        spec = change.desired.spec if change.desired else None
        if change.action == Action.STOP:
            return self._stop_deployment(change, record, spec)
        self._retire_all(change.retire, spec)
        if change.expire and record is not None:
            # A ttl deletion leaves STOPPED; a DEAD deployment deleted after 7 days (a change
            # with a note) stays DEAD.
            dead = record.status == Status.DEAD and change.note is not None
            stamp = iso(now())
            deleted = self.recorder.update(
                change.deployment_id,
                status=Status.DEAD if dead else Status.STOPPED,
                status_message=change.note or f"deleted: ttl {record.ttl} expired",
                last_operation="DELETE",
                expired=True,
                completion_time=stamp,
                modified_at=stamp,
            )
            return deleted.status
        if change.desired is None:
            self.recorder.forget(change.deployment_id)
            return None
        return self.recorder.get(change.deployment_id).status if record else None

    def _stop_deployment(
        self, change: Change, record: Record | None, spec: ContainerSpec | None
    ) -> str:
        if record is None:
            assert change.desired is not None
            record = self._new_record(change.desired)
        self.recorder.put(
            replace(
                record,
                status=Status.STOPPING,
                target_status=Status.STOPPED,
                last_operation="UPDATE",
                modified_at=iso(now()),
            )
        )
        self._retire_all(change.retire, spec)
        self.recorder.update(
            change.deployment_id,
            status=Status.STOPPED,
            status_message=change.note,  # why, when not asked for (a model retired)
            completion_time=iso(now()),
            modified_at=iso(now()),
        )
        return Status.STOPPED

    # -- records ----------------------------------------------------------------------------

    def _new_record(self, d: DesiredDeployment) -> Record:
        return Record(
            id=d.id,
            name=d.name,
            resource_group=d.deployment.resource_group,
            created_at=iso(now()),
            last_operation="CREATE",
        )

    def _begin(self, change: Change) -> Record:
        d = change.desired
        assert d is not None
        stamp = iso(now())
        record = self.recorder.get(d.id)
        if record is None:
            record = self._new_record(d)
        serving = record.status == Status.RUNNING and any(c.alive for c in change.retire)
        if change.action == Action.UPDATE and record.status == Status.RUNNING:
            status, message = Status.RUNNING, f"updating: {change.cause}"
        elif serving:
            status, message = Status.RUNNING, f"updating to configuration {d.configuration.id}"
        else:
            status, message = Status.PENDING, change.cause
        operation = record.last_operation
        if record.configuration_id and record.configuration_id != d.configuration.id:
            operation = "UPDATE"
        # Count drift restores for the crash-loop backoff; a new configuration starts afresh.
        restores, last_restore = record.restores, record.last_restore
        if change.restore:
            restores, last_restore = change.restore, stamp
        elif change.action in (Action.CREATE, Action.REPLACE):
            restores, last_restore = 0, None
        record = replace(
            record,
            status=status,
            status_message=_short(message),
            target_status=Status.RUNNING,
            last_operation=operation,
            configuration_id=d.configuration.id,
            executable_id=d.template.name,
            scenario_id=d.template.scenario_id,
            ttl=d.deployment.ttl,
            modified_at=stamp,
            submission_time=stamp,
            revision=self.revision,
            restores=restores,
            last_restore=last_restore,
        )
        self.recorder.put(record)
        return record

    def _running(
        self,
        d: DesiredDeployment,
        config_hash: str | None,
        gpus: tuple[str, ...],
        change: Change | None = None,
        replicas: int | None = None,
        retiring: tuple[str, ...] = (),
    ) -> Record:
        record = self.recorder.get(d.id) or self._new_record(d)
        stamp = iso(now())
        count = change.replicas if change is not None else replicas
        scale: dict[str, Any] = {}
        unplaced = change.unplaced if change is not None else None
        if d.spec.autoscaled and (count != record.replicas or unplaced):
            # The last scale, for status: when, and why (the autoscaler's reason, or the
            # change's cause: new bounds in git, a first start, replicas left out).
            why = change.scaled or change.cause if change is not None else "replicas settled"
            scale = {"scaled_at": stamp, "scale_reason": _short(why)}
        return self.recorder.update(
            d.id,
            status=Status.RUNNING,
            status_message=unplaced,  # serving; a scale-up that did not fit says so
            configuration_id=d.configuration.id,
            start_time=record.start_time
            if record.status == Status.RUNNING and record.start_time
            else stamp,
            latest_running_configuration_id=d.configuration.id,
            completion_time=None,
            dead_since=None,
            config_hash=config_hash,
            failed_hash=None,
            replicas=count,
            gpus=gpus or record.gpus,
            last_logs=(),
            modified_at=stamp,
            ready_at=stamp,
            retiring=retiring,
            model_version=d.spec.model_version,
            **scale,
        )

    def _failed(self, change: Change, failed: _Failed) -> Record:
        assert change.desired is not None
        d = change.desired
        still_serving = not change.stop_first and any(c.alive for c in change.retire)
        record = self.recorder.get(d.id)
        if _scaling_up(change, record):
            # More replicas for the load did not come up: those that serve go on serving.
            assert record is not None
            return self.recorder.update(
                d.id,
                status=Status.RUNNING,
                status_message=_short(
                    f"could not scale to {change.replicas} replicas: {failed.reason}"
                ),
                last_logs=failed.logs,
                modified_at=iso(now()),
            )
        if still_serving and record is not None and record.latest_running_configuration_id:
            message = (
                f"update to configuration {d.configuration.id} failed (configuration "
                f"{record.latest_running_configuration_id} keeps serving): {failed.reason}"
            )
            return self.recorder.update(
                d.id,
                status=Status.RUNNING,
                status_message=_short(message),
                failed_hash=None if failed.retry else change.config_hash,
                last_logs=failed.logs,
                modified_at=iso(now()),
            )
        return self._dead(d, change.config_hash, failed)

    def _dead(self, d: DesiredDeployment, config_hash: str | None, failed: _Failed) -> Record:
        stamp = iso(now())
        line = telling_line(failed.logs)
        last = f": {line}" if line else ""
        return self.recorder.update(
            d.id,
            status=Status.DEAD,
            status_message=_short(failed.reason + last),
            completion_time=stamp,
            dead_since=stamp,
            failed_hash=None if failed.retry else config_hash,
            last_logs=failed.logs,
            modified_at=stamp,
        )


def _scaling_up(change: Change, record: Record | None) -> bool:
    """An update that only adds replicas to a serving configuration."""
    return (
        change.action == Action.UPDATE
        and record is not None
        and record.status == Status.RUNNING
        and bool(record.replicas)
        and change.replicas > (record.replicas or 0)
    )


def apply_plan(
    backend: Backend,
    desired: DesiredState,
    plan: Plan,
    recorder: Recorder,
    revision: str | None,
    parallel: int = DEFAULT_PARALLEL,
    report: Reporter | None = None,
    stop: threading.Event | None = None,
    prepare: Callable[[ContainerSpec, Say], None] | None = None,
    note: Reporter | None = None,
) -> list[Outcome]:
    return Applier(
        backend, desired, recorder, revision, parallel, report, stop, prepare=prepare, note=note
    ).run(plan)
