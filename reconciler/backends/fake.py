"""An in-memory backend for daemon-free tests of apply, reconcile and everything above them.

It runs the same start-first sequence as the Docker backend (`startfirst`) over replicas that
are records in a dict: they start at once, and a test scripts what would otherwise need a model
server that misbehaves: a replica that never gets ready, one that exits while starting (with
the lines it wrote), a crash or a removal by hand after it served, one that stops answering its
health check and recovers (`hang`, `recover`), a failing in-place update, an image that cannot
be pulled. The readiness wait runs on a virtual clock, so a startup timeout of
minutes passes at once. `calls` is the journal of what was done, in order.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from types import MappingProxyType

from ..manifests.spec import ContainerSpec, Identity
from .base import (
    HEALTH_READY,
    HEALTH_UNREADY,
    LAST_LINES,
    Capabilities,
    ConvergeFailed,
    Event,
    Intent,
    LogLine,
    ModelHosts,
    Observed,
    Replica,
    normalize_image,
    published_endpoint,
    replica_name,
)
from .startfirst import StartFirstBackend


@dataclass(frozen=True)
class Script:
    """How the replicas of one configuration (or deployment) behave once started."""

    ready: bool = True  # False: never ready ("not ready after Ns")
    exit_code: int | None = None  # exits while starting, with this code
    logs: tuple[str, ...] = ()  # what each replica writes
    detail: str = "GET /ready answered 503"  # what an unready probe saw
    on_probe: Callable[[], None] | None = None  # called at each probe (e.g. to stop a pass)


class FakeEvents:
    """The fake's event stream: what happened from `since_ns` on, then whatever comes, until
    `close()`."""

    def __init__(self, backend: FakeBackend, since_ns: int) -> None:
        self._backend = backend
        self._since = since_ns
        self._closed = threading.Event()

    def __iter__(self) -> Iterator[Event]:
        seen = 0
        while not self._closed.is_set():
            with self._backend._changed:
                events = self._backend.emitted[seen:]
                seen += len(events)
                if not events:
                    self._backend._changed.wait(0.05)
            for event in events:
                if event.time_ns is not None and event.time_ns >= self._since:
                    yield event

    def close(self) -> None:
        self._closed.set()


class FakeBackend(StartFirstBackend):
    capabilities = Capabilities(in_place_resources=True, gpu_inventory=True, rolling_updates=False)

    def __init__(
        self,
        images: Mapping[str, str] | None = None,
        unpullable: Iterable[str] = (),
        model_hosts: ModelHosts | None = None,
    ) -> None:
        self.model_hosts = model_hosts  # where its "hosts" keep models (a real cache folder)
        self.images = {normalize_image(ref): i for ref, i in (images or {}).items()}
        self.unpullable = {normalize_image(ref) for ref in unpullable}
        self.scripts: dict[str, Script] = {}
        self.update_failure: str | None = None  # update_resources fails with this
        self.replicas: dict[str, Replica] = {}
        self.calls: list[str] = []  # "start NAME", "stop NAME", "delete NAME", "update NAME" ...
        self.emitted: list[Event] = []
        self._instances: dict[str, str] = {}  # replica id -> instance
        self._lines: dict[str, tuple[str, ...]] = {}  # replica id -> what it wrote
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._now = 0.0  # the virtual clock of readiness waits

    def models(self) -> ModelHosts | None:
        return self.model_hosts

    # -- what a test scripts ----------------------------------------------------------------

    def script(self, key: str, **behaviour: object) -> None:
        """How replicas of configuration or deployment `key` behave from now on."""
        self.scripts[key] = Script(**behaviour)  # type: ignore[arg-type]

    def _script(self, configuration_id: str, deployment_name: str) -> Script:
        return self.scripts.get(configuration_id) or self.scripts.get(deployment_name) or Script()

    def crash(self, deployment_name: str, exit_code: int = 1, lines: Iterable[str] = ()) -> None:
        """Its running replicas exit on their own (after they served): drift."""
        with self._lock:
            for c in self.of(deployment_name):
                if c.alive:
                    status = f"Exited ({exit_code}) 1 second ago"
                    self.replicas[c.id] = replace(
                        c, state="exited", exit_code=exit_code, status=status
                    )
                    self._lines[c.id] = self._lines.get(c.id, ()) + tuple(lines)
                    self._emit(c, "die", own=False)

    def hang(
        self,
        deployment_name: str,
        detail: str = "GET /ready: timed out",
        unready_seconds: float = 0.0,
    ) -> None:
        """Its running replicas stop answering (a frozen server): their health check fails,
        and has failed for `unready_seconds` already (what Docker's check log would say)."""
        self._health(deployment_name, HEALTH_UNREADY, detail, unready_seconds)

    def recover(self, deployment_name: str) -> None:
        """Its running replicas answer their health check again."""
        self._health(deployment_name, HEALTH_READY, "")

    def _health(
        self, deployment_name: str, health: str, detail: str, unready: float | None = None
    ) -> None:
        with self._lock:
            for c in self.of(deployment_name):
                if c.running and health == HEALTH_UNREADY and c.health == health:
                    # Still unready: only how long it has been so changes (no new event).
                    self.replicas[c.id] = replace(c, unready_seconds=unready)
                elif c.running and c.health != health:
                    verdict = "unhealthy" if health == HEALTH_UNREADY else "healthy"
                    self.replicas[c.id] = replace(
                        c, health=health, health_detail=detail, unready_seconds=unready
                    )
                    # Docker's own event action for a health change.
                    self._emit(c, f"health_status: {verdict}", own=False)

    def remove_by_hand(self, deployment_name: str) -> None:
        """Its replicas are removed outside the reconciler (`docker rm -f`)."""
        with self._lock:
            for c in self.of(deployment_name):
                self._drop(c.id)
                self._emit(c, "destroy", own=False)

    def of(self, deployment_name: str) -> list[Replica]:
        with self._lock:
            found = [c for c in self.replicas.values() if c.deployment_name == deployment_name]
        return sorted(found, key=lambda c: (c.replica, c.created))

    # -- observing --------------------------------------------------------------------------

    def observe(self, instance: str, images: bool = True) -> Observed:
        with self._lock:
            mine = [c for c in self.replicas.values() if self._instances[c.id] == instance]
            ids = dict(self.images) if images else {}
        mine.sort(key=lambda c: (c.deployment_id, c.replica, c.created, c.id))
        return Observed(tuple(mine), MappingProxyType(ids))

    # -- the start-first primitives ---------------------------------------------------------

    def _resolve_image(self, ref: str) -> str:
        name = normalize_image(ref)
        with self._lock:
            if name in self.unpullable:
                raise ConvergeFailed(
                    f"image {ref} is not on this host and could not be pulled (not found); "
                    "build or load it (docker load) first"
                )
            if name not in self.images:  # pulled
                self.calls.append(f"pull {ref}")
                self.images[name] = "sha256:" + hashlib.sha256(ref.encode()).hexdigest()
            return self.images[name]

    def _start(
        self,
        intent: Intent,
        identity: Identity,
        image_id: str,
        replica: int,
        gpu_ids: tuple[str, ...],
    ) -> str:
        d, spec = intent.deployment, intent.deployment.spec
        group = d.deployment.resource_group
        name = replica_name(intent.instance, group, d.name, replica, identity.config_hash)
        script = self._script(d.configuration.id, d.name)
        with self._lock:
            for old in [c for c in self.replicas.values() if c.name == name]:
                self._drop(old.id)  # left by an interrupted pass: the name is ours
            n = next(self._ids)
            rid = f"{n:064x}"
            self.replicas[rid] = Replica(
                id=rid,
                name=name,
                deployment_id=d.id,
                deployment_name=d.name,
                resource_group=group,
                configuration_id=d.configuration.id,
                replica=replica,
                config_hash=identity.config_hash,
                hash_version=identity.version,
                image_id=image_id,
                fields=MappingProxyType(dict(identity.digests)),
                resources=MappingProxyType(spec.resources()),
                gpus=gpu_ids,
                state="running",
                status="Up Less than a second",
                host_ip=intent.publish_address,
                host_port=30000 + n,
                container_port=spec.port,
                container_ip=f"10.88.0.{n % 250 + 2}",
                network_gateway="10.88.0.1",
                created=int(time.time()) + n,  # newer than anything before it
                root=intent.root,
                revision=intent.revision or "",
                model=d.model.label if d.model else "",
                image=spec.image,
            )
            self._instances[rid] = intent.instance
            self._lines[rid] = script.logs
            self.calls.append(f"start {name}")
        return rid

    def _probe(self, spec: ContainerSpec, replica_id: str) -> tuple[bool, str]:
        with self._lock:
            c = self.replicas.get(replica_id)
        if c is None:
            raise ConvergeFailed("the container was removed while starting")
        script = self._script(c.configuration_id, c.deployment_name)  # as scripted now
        if script.on_probe is not None:
            script.on_probe()
        if script.exit_code is not None:
            with self._lock:
                self.replicas[replica_id] = replace(c, state="exited", exit_code=script.exit_code)
            raise ConvergeFailed(
                f"container exited with code {script.exit_code} while starting",
                self._last_lines(replica_id),
            )
        if not script.ready:
            return False, script.detail
        return True, "ready"

    def _last_lines(self, replica_id: str, count: int = LAST_LINES) -> tuple[str, ...]:
        with self._lock:
            lines = self._lines.get(replica_id, ())
        return tuple(line for line in lines if line.strip())[-count:]

    def _remove(self, replica_ids: Iterable[str]) -> None:
        with self._lock:
            for rid in list(replica_ids):
                c = self.replicas.get(rid)
                if c is not None:
                    self.calls.append(f"delete {c.name}")
                    self._drop(rid)
                    self._emit(c, "destroy", own=True)

    def _drop(self, rid: str) -> None:
        self.replicas.pop(rid, None)
        self._lines.pop(rid, None)

    def _clock(self) -> float:
        with self._lock:
            return self._now

    def _sleep(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds

    # -- the rest of the interface ----------------------------------------------------------

    def update_resources(self, replicas: Iterable[Replica], spec: ContainerSpec) -> None:
        for c in replicas:
            if self.update_failure is not None:
                raise ConvergeFailed(f"update of {c.name} failed: {self.update_failure}")
            with self._lock:
                self.calls.append(f"update {c.name}")

    def stop(self, replicas: Iterable[Replica], timeout: int | None = None) -> None:
        for c in replicas:
            with self._lock:
                if c.id in self.replicas and self.replicas[c.id].alive:
                    self.calls.append(f"stop {c.name}")
                    self._emit(c, "die", own=True)
            self._remove([c.id])

    def logs(
        self,
        replica: Replica,
        *,
        tail: int | None = None,
        since: datetime | None = None,
        timestamps: bool = False,
    ) -> list[str]:
        with self._lock:
            lines = list(self._lines.get(replica.id, ()))
        lines = lines[-tail:] if tail is not None else lines
        stamp = _stamp(replica.created)
        return [f"{stamp} {line}" if timestamps else line for line in lines]

    def log_window(
        self, replica: Replica, since: datetime, until: datetime | None
    ) -> Iterator[LogLine]:
        stamp = _stamp(replica.created)
        for line in self.logs(replica):
            yield LogLine(replica.name, "stdout", stamp, line)

    def events(self, since_ns: int) -> FakeEvents:
        return FakeEvents(self, since_ns)

    def watching(self, instance: str) -> str:
        return f"the fake's replicas of instance {instance}"

    def endpoints(self, replicas: Iterable[Replica], publish_address: str) -> dict[str, str]:
        return {
            c.id: published_endpoint(c, publish_address)
            for c in replicas
            if c.running and c.host_port
        }

    def _emit(self, c: Replica, action: str, own: bool) -> None:
        with self._changed:
            self.emitted.append(
                Event(
                    c.id,
                    action,
                    self._instances.get(c.id, ""),
                    c.deployment_name,
                    time.time_ns(),
                    own,
                )
            )
            self._changed.notify_all()


def _stamp(unix: int) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
