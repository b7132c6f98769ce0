"""Apply: carry out a plan on the Docker engine, and record each deployment's status on the way.

Deployments are worked on in parallel (bounded); the steps of one deployment run in order.
A replacement is start-first: the new container must be ready before the old one is stopped,
so the old one keeps serving, and keeps serving if the new one fails. Whatever fails, nothing
is left half-made: a container that could not start is removed, and the deployment is DEAD with
Docker's or the model server's own words in its statusMessage.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace

from ..backends import labels as L
from ..backends.base import Replica
from ..backends.docker.engine import ContainerRequest, Engine, EngineError
from ..backends.health import http_ready, tcp_ready
from ..manifests.desired import DesiredDeployment, DesiredState
from ..manifests.spec import ContainerSpec, Identity, redact
from .plan import Action, Change, Pending, Plan
from .record import Record, Recorder, iso, now

STATUS_MESSAGE_LIMIT = 256  # AI Core's statusMessage length
LOG_LINES_KEPT = 50
# After an update is recorded, the old containers keep serving this long before they stop, so
# that `reconciler serve` (which re-reads the routes twice a second) has moved every client to
# the new ones: no request fails during an update.
DRAIN_SECONDS = 1.5
_ALIVE = ("running", "restarting")
# Docker's own create/start dominates a cold apply; more overlap than this gains little.
DEFAULT_PARALLEL = 16

Reporter = Callable[[str, str], None]  # (deployment name, what happened)


@dataclass(frozen=True)
class Outcome:
    deployment_id: str
    name: str
    symbol: str
    ok: bool
    status: str | None
    message: str | None
    seconds: float

    def describe(self) -> str:
        what = self.status or "removed"
        detail = f": {self.message}" if self.message and not self.ok else ""
        return f"{self.symbol} {self.name}: {what} in {self.seconds:.1f}s{detail}"


INTERRUPTED = "interrupted: the pass was stopped; the next pass finishes it"


class _Interrupted(Exception):
    """The pass was told to stop (watch's SIGTERM). Not a failure of the deployment: what was
    started is left as it is (PENDING, containers running), and the next pass settles it."""


class _Failed(Exception):
    """A deployment could not be brought up; `logs` are the model server's last lines."""

    def __init__(self, reason: str, logs: tuple[str, ...] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.logs = logs


def container_name(instance: str, group: str, name: str, replica: int, config_hash: str) -> str:
    # '_' never occurs in instance or group names, so the parts cannot run into each other.
    return f"{instance}_{group}_{name}_{replica}_{config_hash[:8]}"


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
        engine: Engine,
        desired: DesiredState,
        recorder: Recorder,
        revision: str | None,
        parallel: int = DEFAULT_PARALLEL,
        report: Reporter | None = None,
        stop: threading.Event | None = None,
        drain_seconds: float = DRAIN_SECONDS,
    ) -> None:
        self.engine = engine
        self.repo = desired.repo
        self.recorder = recorder
        self.revision = revision
        self.parallel = max(1, parallel)
        self.report = report or (lambda name, what: None)
        self.stop = stop or threading.Event()
        self.drain_seconds = drain_seconds
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
        return Outcome(deployment_id, name, symbol, False, status, INTERRUPTED, seconds)

    def _change(self, change: Change) -> Outcome:
        started = time.monotonic()
        if self.stop.is_set():  # stopping: start nothing new
            return self._interrupted(change.deployment_id, change.name, change.symbol, started)
        if change.action in (Action.STOP, Action.DELETE):
            status = self._remove_deployment(change)
            return Outcome(
                change.deployment_id,
                change.name,
                change.symbol,
                True,
                status,
                None,
                time.monotonic() - started,
            )
        assert change.desired is not None
        record = self._begin(change)
        try:
            if change.failure:
                # Containers that do not serve go with it (a crash loop's exited container),
                # their last lines kept for `reconciler logs`.
                first = change.remove_first[:1]
                logs = self._logs(change.desired.spec, first[0].id) if first else ()
                for c in change.remove_first:
                    self.engine.remove(c.id)
                raise _Failed(change.failure, logs)
            if change.action == Action.UPDATE:
                retire = self._update_in_place(change, record)
            else:
                change, retire = self._bring_up(change)
        except _Interrupted:
            return self._interrupted(change.deployment_id, change.name, change.symbol, started)
        except _Failed as failed:
            record = self._failed(change, failed)
            return Outcome(
                change.deployment_id,
                change.name,
                change.symbol,
                False,
                record.status,
                record.status_message,
                time.monotonic() - started,
            )
        # Recorded first, so that gateways route to the new containers before the old ones go.
        record = self._running(change.desired, change.config_hash, change.gpus)
        if any(c.state in _ALIVE for c in retire) and self.drain_seconds:
            self.stop.wait(self.drain_seconds)
        self._retire(retire, change.desired.spec)
        return Outcome(
            change.deployment_id,
            change.name,
            change.symbol,
            True,
            record.status,
            None,
            time.monotonic() - started,
        )

    def _settle(self, pending: Pending) -> Outcome:
        """Containers run, but were not seen ready (a pass was interrupted): wait for them."""
        started = time.monotonic()
        d = pending.desired
        if self.stop.is_set():
            return self._interrupted(d.id, d.name, "~", started)
        record = self.recorder.get(d.id) or self._new_record(d)
        if record.status != "RUNNING":
            self.recorder.put(replace(record, status="PENDING", target_status="RUNNING"))
        try:
            self._wait_ready(d.spec, [c.id for c in pending.containers])
        except _Interrupted:
            return self._interrupted(d.id, d.name, "~", started)
        except _Failed as failed:
            for c in pending.containers:
                self.engine.remove(c.id)
            record = self._dead(d, pending.config_hash, failed)
            return Outcome(
                d.id,
                d.name,
                "~",
                False,
                record.status,
                record.status_message,
                time.monotonic() - started,
            )
        record = self._running(
            d, pending.config_hash, tuple(g for c in pending.containers for g in c.gpus)
        )
        return Outcome(d.id, d.name, "~", True, record.status, None, time.monotonic() - started)

    # -- steps ------------------------------------------------------------------------------

    def _bring_up(self, change: Change) -> tuple[Change, tuple[Replica, ...]]:
        """Start the new containers and wait until they are ready. Returns the change (with the
        config hash of an image pulled just now) and the old containers, still serving, to
        retire (unless they had to stop first)."""
        assert change.desired is not None
        for c in change.remove_first:
            self.engine.remove(c.id)
        if change.stop_first:
            self._retire(change.retire, change.desired.spec)
        spec = change.desired.spec
        image_id = self._ensure_image(spec)
        assert change.hashing is not None
        config_hash = spec.identity(image_id, change.hashing).config_hash
        if config_hash != change.config_hash:  # the image was pulled just now
            change = replace(change, config_hash=config_hash, image_id=image_id)
        created = self._create_all(change, image_id)
        try:
            self._wait_ready(spec, created)
        except _Failed:
            for cid in created:
                self.engine.remove(cid)
            raise
        return change, () if change.stop_first else change.retire

    def _update_in_place(self, change: Change, record: Record) -> tuple[Replica, ...]:
        assert change.desired is not None
        spec = change.desired.spec
        applied = dict(record.updated_resources)
        for c in change.update:
            try:
                self.engine.update(c.id, self._cpus(spec), spec.memory, spec.restart_policy)
            except EngineError as exc:
                raise _Failed(f"docker update of {c.name} failed: {exc}") from None
            applied[c.id] = spec.resources()
        if applied != record.updated_resources:
            self.recorder.update(change.deployment_id, updated_resources=applied)
        for c in change.remove_first:
            self.engine.remove(c.id)
        if change.create:
            image_id = self._ensure_image(spec)
            created = self._create_all(change, image_id)
            try:
                self._wait_ready(spec, created)
            except _Failed:
                for cid in created:
                    self.engine.remove(cid)
                raise
        return change.retire

    def _ensure_image(self, spec: ContainerSpec) -> str:
        if spec.image in self._image_ids:
            return self._image_ids[spec.image]
        try:
            image_id = self.engine.ensure_image(spec.image)
        except EngineError as exc:
            raise _Failed(str(exc)) from None
        self._image_ids[spec.image] = image_id
        return image_id

    def _cpus(self, spec: ContainerSpec) -> float:
        # A plan may ask for more CPUs than a small host has; Docker would refuse the container.
        return min(spec.cpus, float(self.engine.ncpus))

    def _create_all(self, change: Change, image_id: str) -> list[str]:
        assert change.desired is not None and change.config_hash is not None
        assert change.hashing is not None
        d, spec = change.desired, change.desired.spec
        identity = spec.identity(image_id, change.hashing)  # the labels' format and digests
        if spec.model_path and not os.path.exists(spec.model_path):
            raise _Failed(
                f"model artifact {spec.model_uri} not found on this host ({spec.model_path})"
            )
        created = []
        try:
            for n, replica in enumerate(change.create):
                gpu_ids = change.gpus[n * spec.gpus : (n + 1) * spec.gpus] if change.gpus else ()
                created.append(
                    self._create(d, replica, change.config_hash, identity, image_id, gpu_ids)
                )
        except _Failed:
            for cid in created:
                self.engine.remove(cid)
            raise
        return created

    def _create(
        self,
        d: DesiredDeployment,
        replica: int,
        config_hash: str,
        identity: Identity,
        image_id: str,
        gpu_ids: tuple[str, ...],
    ) -> str:
        spec = d.spec
        group = d.deployment.resource_group
        name = container_name(self.repo.instance, group, d.name, replica, config_hash)
        request = ContainerRequest(
            name=name,
            spec=spec,
            labels={
                L.MANAGED: "true",
                L.INSTANCE: self.repo.instance,
                L.ROOT: str(self.repo.root),
                L.DEPLOYMENT_ID: d.id,
                L.DEPLOYMENT_NAME: d.name,
                L.RESOURCE_GROUP: group,
                L.CONFIGURATION_ID: d.configuration.id,
                L.REPLICA: str(replica),
                L.CONFIG_HASH: config_hash,
                L.HASH_VERSION: identity.version,
                L.IMAGE_ID: image_id,
                L.FIELDS: json.dumps(dict(identity.digests), sort_keys=True, separators=(",", ":")),
                L.RESOURCES: json.dumps(spec.resources(), sort_keys=True, separators=(",", ":")),
                L.GPUS: ",".join(gpu_ids),
                L.PORT: str(spec.port),
                L.REVISION: self.revision or "",
                L.MODEL: d.model.label if d.model else "",
            },
            publish_address=self.repo.settings.publish_address,
            cpus=self._cpus(spec),
            gpu_ids=gpu_ids,
        )
        try:
            cid = self.engine.create(request)
        except EngineError as exc:
            if "is already in use" not in str(exc):
                raise _Failed(f"docker refused to create the container: {exc}") from None
            # Left by an interrupted pass; the name holds our config hash, so it is ours.
            self.engine.remove(name)
            try:
                cid = self.engine.create(request)
            except EngineError as again:
                raise _Failed(f"docker refused to create the container: {again}") from None
        try:
            self.engine.start(cid)
        except EngineError as exc:
            self.engine.remove(cid)  # never leave a created-but-not-started container behind
            raise _Failed(f"container could not start: {exc}") from None
        return cid

    def _wait_ready(self, spec: ContainerSpec, container_ids: list[str]) -> None:
        deadline = time.monotonic() + spec.startup_timeout
        waiting = list(container_ids)
        pause = 0.05
        detail = "not checked yet"
        while waiting:
            for cid in list(waiting):
                ready, detail = self._probe(spec, cid)
                if ready:
                    waiting.remove(cid)
            if not waiting:
                return
            if self.stop.is_set():
                raise _Interrupted
            if time.monotonic() >= deadline:
                raise _Failed(
                    f"not ready after {spec.startup_timeout}s: {detail}",
                    self._logs(spec, waiting[0]),
                )
            time.sleep(pause)
            pause = min(pause * 1.5, 0.5)

    def _probe(self, spec: ContainerSpec, cid: str) -> tuple[bool, str]:
        info = self.engine.inspect(cid)
        if info is None:
            raise _Failed("the container was removed while starting")
        state = info.get("State") or {}
        if state.get("OOMKilled"):
            raise _Failed(
                f"killed for exceeding its memory limit ({spec.memory // 1024**2} MiB, "
                f"resource plan {spec.resource_plan})",
                self._logs(spec, cid),
            )
        if state.get("Status") in ("exited", "dead"):
            raise _Failed(
                f"container exited with code {state.get('ExitCode')} while starting",
                self._logs(spec, cid),
            )
        if state.get("Restarting") or int(info.get("RestartCount") or 0) > 0:
            # Caught after Docker already started it again, ExitCode reads 0: it then says
            # nothing about the crash, the log lines do.
            code = state.get("ExitCode")
            exited = f"exited with code {code}" if code else "exited"
            raise _Failed(
                f"container {exited} while starting and keeps restarting "
                f"({info.get('RestartCount')} restarts)",
                self._logs(spec, cid),
            )
        if state.get("Status") != "running":
            return False, f"container is {state.get('Status')}"
        network = info.get("NetworkSettings") or {}
        if spec.readiness_path is None:
            return tcp_ready(network.get("IPAddress") or "127.0.0.1", spec.port)
        bindings = (network.get("Ports") or {}).get(f"{spec.port}/tcp") or []
        if not bindings:
            return False, "port not published yet"
        host = bindings[0].get("HostIp") or "127.0.0.1"
        host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        return http_ready(host, int(bindings[0]["HostPort"]), spec.readiness_path)

    def _logs(self, spec: ContainerSpec, cid: str) -> tuple[str, ...]:
        try:
            raw = self.engine.logs(cid, tail=LOG_LINES_KEPT)
        except EngineError:
            return ()
        lines = raw.decode(errors="replace").splitlines()
        return redact((line for line in lines if line.strip()), spec)

    def _retire(self, containers: Iterable[Replica], spec: ContainerSpec | None) -> None:
        for c in containers:
            if c.state in _ALIVE:
                self.engine.stop(c.id, spec.stop_timeout if spec else None)
            self.engine.remove(c.id)

    def _remove_deployment(self, change: Change) -> str | None:
        record = self.recorder.get(change.deployment_id)
        stamp = iso(now())
        if change.action == Action.STOP:
            if record is None:
                assert change.desired is not None
                record = self._new_record(change.desired)
            self.recorder.put(
                replace(
                    record,
                    status="STOPPING",
                    target_status="STOPPED",
                    last_operation="UPDATE",
                    modified_at=stamp,
                )
            )
            self._retire(change.retire, change.desired.spec if change.desired else None)
            self.recorder.update(
                change.deployment_id,
                status="STOPPED",
                status_message=change.note,  # why, when not asked for (a model retired)
                completion_time=iso(now()),
                modified_at=iso(now()),
            )
            return "STOPPED"
        self._retire(change.retire, change.desired.spec if change.desired else None)
        if change.expire and record is not None:
            # A ttl deletion leaves STOPPED; a DEAD deployment deleted after 7 days (a change
            # with a note) stays DEAD.
            dead = record.status == "DEAD" and change.note is not None
            deleted = self.recorder.update(
                change.deployment_id,
                status="DEAD" if dead else "STOPPED",
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
        serving = record.status == "RUNNING" and any(c.state in _ALIVE for c in change.retire)
        if change.action == Action.UPDATE and record.status == "RUNNING":
            status, message = "RUNNING", f"updating: {change.cause}"
        elif serving:
            status, message = "RUNNING", f"updating to configuration {d.configuration.id}"
        else:
            status, message = "PENDING", change.cause
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
            target_status="RUNNING",
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
        self, d: DesiredDeployment, config_hash: str | None, gpus: tuple[str, ...]
    ) -> Record:
        record = self.recorder.get(d.id) or self._new_record(d)
        stamp = iso(now())
        return self.recorder.update(
            d.id,
            status="RUNNING",
            status_message=None,
            start_time=record.start_time
            if record.status == "RUNNING" and record.start_time
            else stamp,
            latest_running_configuration_id=d.configuration.id,
            completion_time=None,
            dead_since=None,
            config_hash=config_hash,
            failed_hash=None,
            replicas=d.spec.replicas,
            gpus=gpus or record.gpus,
            last_logs=(),
            modified_at=stamp,
        )

    def _failed(self, change: Change, failed: _Failed) -> Record:
        assert change.desired is not None
        d = change.desired
        still_serving = not change.stop_first and any(c.state in _ALIVE for c in change.retire)
        record = self.recorder.get(d.id)
        if still_serving and record is not None and record.latest_running_configuration_id:
            message = (
                f"update to configuration {d.configuration.id} failed (configuration "
                f"{record.latest_running_configuration_id} keeps serving): {failed.reason}"
            )
            return self.recorder.update(
                d.id,
                status="RUNNING",
                status_message=_short(message),
                failed_hash=change.config_hash,
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
            status="DEAD",
            status_message=_short(failed.reason + last),
            completion_time=stamp,
            dead_since=stamp,
            failed_hash=config_hash,
            last_logs=failed.logs,
            modified_at=stamp,
        )


def apply_plan(
    engine: Engine,
    desired: DesiredState,
    plan: Plan,
    recorder: Recorder,
    revision: str | None,
    parallel: int = DEFAULT_PARALLEL,
    report: Reporter | None = None,
    stop: threading.Event | None = None,
) -> list[Outcome]:
    return Applier(engine, desired, recorder, revision, parallel, report, stop).run(plan)
