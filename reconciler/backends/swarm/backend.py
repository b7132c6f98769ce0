"""The Swarm backend: one Docker Swarm service per deployment, on every node of the Swarm.

Swarm does the replacing itself: `converge` makes the service what the intent says (creating
it, or updating it start-first with rollback on failure) and waits until its replicas of the
new configuration run and pass their health check, then hands nothing back to retire. It fails
with Swarm's own words: the task's error ("task: non-zero exit (1)") with its last log lines,
"no suitable node (insufficient resources on 3 nodes)" after `placementTimeoutSeconds`, or an
update Swarm rolled back. A new service that fails is removed (nothing is left behind); a
failed update is rolled back, so the previous configuration keeps serving.

Observing is three calls on the manager whatever the number of deployments: the labelled
services, their tasks, the nodes (for the addresses the gateway relays to). Images for the
planner's hashes are the local engine's, where they are built (see `images`).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from ...manifests.kinds import EngineSettings
from ...manifests.spec import ContainerSpec
from .. import labels as L
from ..base import (
    HEALTH_UNREADY,
    LAST_LINES,
    Backend,
    Capabilities,
    Converged,
    ConvergeFailed,
    EngineError,
    Event,
    Intent,
    Interrupted,
    LogLine,
    NotFound,
    Observed,
    Replica,
    published_endpoint,
)
from ..docker.engine import Engine, EventStream
from ..docker.parse import image_ids, since_argument
from .images import ImageCourier
from .models import SwarmModels
from .parse import (
    ENDED,
    FAILED,
    NO_NODE,
    Node,
    changed_by_hand,
    current_tasks,
    parse_nodes,
    parse_task,
    task_error,
    task_hash,
    task_state,
)
from .service import SERVICE_DIGEST, service_name, service_spec

POLL_SECONDS = 0.5
# Failed tasks of one slot, of the configuration being started, after which it is judged
# broken (Swarm would go on restarting it a few more times).
FAILURES = 2
# A rolling update replaces one replica after the other; each gets the start-up timeout.
UPDATE_SLACK = 30
ROLLBACK_WAIT = 120
REMOVE_WAIT = 30
# A service's events are this backend's own while it changes the service and this long after
# (Swarm reports an update's progress as events for as long as the update runs); later ones,
# a removal by hand among them, are drift.
_OWN_AFTER = 5.0
# Service and node events that may mean drift: a service updated, removed or rolled back by
# hand, a node that went down or came back (its tasks move).
EVENT_TYPES = ("service", "node")
_UPDATE_FAILED = ("rollback_started", "rollback_completed", "rollback_paused", "paused")


def _service_of(replica: Replica) -> str:
    """A task replica is named `<service>.<slot>`."""
    return replica.name.rsplit(".", 1)[0]


class SwarmEvents:
    def __init__(self, stream: EventStream, backend: SwarmBackend) -> None:
        self._stream = stream
        self._backend = backend

    def __iter__(self) -> Iterator[Event]:
        for raw in self._stream:
            yield self._backend.parse_event(raw)

    def close(self) -> None:
        self._stream.close()


class SwarmBackend(Backend):
    capabilities = Capabilities(in_place_resources=False, gpu_inventory=False, rolling_updates=True)

    def __init__(self, manager: Engine, source: Engine, settings: EngineSettings) -> None:
        self.manager = manager
        self.settings = settings
        self.images = ImageCourier(source, manager, settings.nodes)
        self._own: dict[str, float] = {}  # services this backend changed, by name: not drift
        self._own_lock = threading.Lock()
        self._instance = ""  # the last observed: node events concern it
        self._models: SwarmModels | None = None

    # -- observing --------------------------------------------------------------------------

    def observe(self, instance: str, images: bool = True) -> Observed:
        self._instance = instance
        services = self._services(instance)
        by_id = {s["ID"]: s for s in services}
        replicas: list[Replica] = []
        if by_id:
            tasks = self._tasks(list(by_id))
            nodes = self.nodes()
            replicas = [
                parse_task(t, by_id[t["ServiceID"]], nodes, failed)
                for t, failed in current_tasks(tasks)
                if t.get("ServiceID") in by_id
            ]
        replicas.sort(key=lambda c: (c.deployment_id, c.replica, c.created, c.id))
        ids = image_ids(self.images.source.images()) if images else {}
        return Observed(tuple(replicas), MappingProxyType(ids))

    def nodes(self) -> dict[str, Node]:
        return parse_nodes(self.manager.get("/nodes", {}))

    def engine_info(self) -> dict[str, Any]:
        nodes = sorted(self.nodes().values(), key=lambda n: n.hostname)
        return {
            "kind": "swarm",
            "host": self.manager.where,
            "nodes": [
                {
                    "hostname": n.hostname,
                    "address": n.address,
                    "role": n.role,
                    "state": n.state,
                    "availability": n.availability,
                    "gpus": n.gpus,
                }
                for n in nodes
            ],
        }

    def models(self) -> SwarmModels:
        """Each node's model cache (Settings.spec.engine.modelCache), filled by a job of the
        storage initializer on the nodes (see models.py)."""
        if self._models is None:
            self._models = SwarmModels(
                self.manager, self.images, self.settings, self.nodes, self._task_lines
            )
        return self._models

    def _services(self, instance: str) -> list[dict[str, Any]]:
        filters = json.dumps({"label": L.selector(instance)})
        return list(self.manager.get("/services", {"filters": filters}))

    def _service(self, name: str) -> dict[str, Any] | None:
        found = self.manager.get("/services", {"filters": json.dumps({"name": [name]})})
        return next((s for s in found if (s.get("Spec") or {}).get("Name") == name), None)

    def _tasks(self, service_ids: Sequence[str]) -> list[dict[str, Any]]:
        """The tasks of these services; none of one removed meanwhile (Swarm refuses a
        filter that names a service it no longer has: those are asked for one by one)."""
        try:
            return list(
                self.manager.get("/tasks", {"filters": json.dumps({"service": list(service_ids)})})
            )
        except EngineError as exc:
            if "not found" not in str(exc):
                raise
        out: list[dict[str, Any]] = []
        for sid in service_ids if len(service_ids) > 1 else ():
            out += self._tasks([sid])
        return out

    # -- converging -------------------------------------------------------------------------

    def converge(self, intent: Intent, stop: threading.Event) -> Converged:
        spec = intent.deployment.spec
        if intent.replicas == 0:
            # Scaled to zero: no service at all rather than one of 0 replicas, which no task
            # would show to a later observe (a stop or delete would leave it behind). The
            # first request creates it again.
            name = service_name(intent.instance, intent.deployment.id)
            live = self._service(name)
            if live is not None:
                self._remove(live["ID"], name)
            return Converged(intent.config_hash, None)
        image_id = intent.image_id or self.images.resolve(spec.image)
        image = self.images.deliver(spec.image, image_id)
        identity = spec.identity(image_id, intent.hashing)
        want = service_spec(intent, identity, image, image_id)  # (constraints: in the spec)
        with self._changing(want["Name"]):
            live = self._service(want["Name"])
            if live is None:
                self._write(want)
            elif self._differs(live, want):
                self._write(want, live)
            elif (live.get("UpdateStatus") or {}).get("State") != "updating":
                # The same spec, but the plan found replicas missing or failed (Swarm's
                # restart attempts spent): start its tasks afresh.
                self._write(want, live, force=True)
            self._wait(
                want["Name"],
                identity.config_hash,
                spec,
                stop,
                rollback=live is not None,
                replicas=intent.replicas,
            )
        return Converged(identity.config_hash, image_id)

    @staticmethod
    def _differs(live: Mapping[str, Any], want: Mapping[str, Any]) -> bool:
        made = ((live.get("Spec") or {}).get("Labels") or {}).get(SERVICE_DIGEST)
        return made != want["Labels"][SERVICE_DIGEST] or changed_by_hand(live)

    def _write(
        self,
        want: dict[str, Any],
        live: Mapping[str, Any] | None = None,
        force: bool = False,
        rollback: bool = False,
    ) -> None:
        """Create the service, or update `live` to `want` (`force`: restart its tasks even
        if nothing changed; `rollback`: back to its previous spec, which Swarm keeps)."""
        api = self.manager.sdk
        if live is None:
            call = lambda: api._result(  # noqa: E731
                api._post_json(api._url("/services/create"), data=want), True
            )
        else:
            body = dict(want)
            forced = int(
                ((live.get("Spec") or {}).get("TaskTemplate") or {}).get("ForceUpdate") or 0
            )
            body["TaskTemplate"] = {**want["TaskTemplate"], "ForceUpdate": forced + int(force)}
            params: dict[str, Any] = {"version": (live.get("Version") or {}).get("Index")}
            if rollback:
                params["rollback"] = "previous"
            url = api._url("/services/{0}/update", live["ID"])
            call = lambda: api._result(  # noqa: E731
                api._post_json(url, data=body, params=params), True
            )
        try:
            self.manager.call(call)
        except (EngineError, NotFound) as exc:
            raise ConvergeFailed(f"swarm refused the service {want['Name']}: {exc}") from None

    def _wait(
        self,
        name: str,
        config_hash: str,
        spec: ContainerSpec,
        stop: threading.Event,
        rollback: bool,
        replicas: int,
    ) -> None:
        """Until `replicas` tasks of `config_hash` run (healthy) and no other does.
        Raises ConvergeFailed (a new service is removed; an update is rolled back when
        `rollback`) or Interrupted."""
        deadline = time.monotonic() + spec.startup_timeout * max(1, replicas) + UPDATE_SLACK
        unplaced_since: float | None = None
        pause = 0.1
        while True:
            live = self._service(name)
            if live is None:
                raise ConvergeFailed(f"service {name} was removed while starting")
            tasks = self._tasks([live["ID"]])
            if self._done(live, tasks, config_hash, replicas):
                return
            state = (live.get("UpdateStatus") or {}).get("State", "")
            # Swarm keeps an update's last state; it failed this pass's configuration only
            # while the spec it rolled back to is another one.
            if state in _UPDATE_FAILED and _spec_hash(live) != config_hash:
                self._failed_update(live, tasks, config_hash, stop)
            broken = self._broken(tasks, config_hash)
            unplaced = [
                t for t in tasks if NO_NODE in task_error(t) and t.get("DesiredState") == "running"
            ]
            if unplaced:
                unplaced_since = unplaced_since or time.monotonic()
                if time.monotonic() - unplaced_since > self.settings.placement_timeout:
                    broken = (unplaced[0], ())
            else:
                unplaced_since = None
            if broken is None and time.monotonic() > deadline:
                waiting = next(
                    (t for t in tasks if t.get("DesiredState") == "running"),
                    tasks[0] if tasks else {},
                )
                why = task_error(waiting) if waiting else "no task"
                broken = (
                    {"Status": {"Err": f"not ready after {spec.startup_timeout}s: {why}"}},
                    (),
                )
            if broken is not None:
                task, _ = broken
                placed = (task.get("Status") or {}).get("ContainerStatus") or {}
                logs = self._task_lines(task["ID"]) if placed.get("ContainerID") else ()
                reason = task_error(task)
                if rollback:
                    self._roll_back(live, stop)
                    reason = (
                        f"{reason}; Swarm rolled the service back to the previous configuration"
                    )
                else:
                    self._remove(live["ID"], name)
                raise ConvergeFailed(reason, logs)
            if stop.is_set():
                raise Interrupted
            stop.wait(pause)
            pause = min(pause * 1.5, POLL_SECONDS)  # soon at first: most start in seconds

    @staticmethod
    def _done(
        live: Mapping[str, Any], tasks: list[dict[str, Any]], config_hash: str, replicas: int
    ) -> bool:
        if (live.get("UpdateStatus") or {}).get("State") in ("updating", "rollback_started"):
            return False
        wanted = [t for t in tasks if t.get("DesiredState") == "running"]
        mine = [t for t in wanted if task_hash(t) == config_hash]
        running = [t for t in mine if (t.get("Status") or {}).get("State") == "running"]
        return len(running) >= replicas and len(mine) == len(wanted)

    @staticmethod
    def _broken(
        tasks: list[dict[str, Any]], config_hash: str
    ) -> tuple[Mapping[str, Any], tuple[()]] | None:
        """The newest failed task of a slot whose tasks of this configuration failed
        FAILURES times: its replicas will not come up."""
        slots: dict[int, list[dict[str, Any]]] = {}
        for t in tasks:
            if task_hash(t) == config_hash and task_state(t) in FAILED:
                slots.setdefault(int(t.get("Slot") or 0), []).append(t)
        for failed in slots.values():
            if len(failed) >= FAILURES:
                return max(failed, key=lambda t: t.get("CreatedAt") or ""), ()
        return None

    def _failed_update(
        self,
        live: Mapping[str, Any],
        tasks: list[dict[str, Any]],
        config_hash: str,
        stop: threading.Event,
    ) -> None:
        """Swarm judged the update failed and rolls it back (FailureAction rollback)."""
        status = live.get("UpdateStatus") or {}
        self._await_rollback(live["ID"], stop)
        failed = [t for t in tasks if task_hash(t) == config_hash and task_state(t) in FAILED]
        logs = self._task_lines(failed[-1]["ID"]) if failed else ()
        message = status.get("Message") or "update failed"
        raise ConvergeFailed(
            f"{message}; Swarm rolled the service back to the previous configuration", logs
        )

    def _roll_back(self, live: Mapping[str, Any], stop: threading.Event) -> None:
        fresh = self._service((live.get("Spec") or {}).get("Name", "")) or live
        if (fresh.get("UpdateStatus") or {}).get("State") not in _UPDATE_FAILED:
            try:
                self._write(dict(fresh["Spec"]), fresh, rollback=True)
            except ConvergeFailed:
                return  # nothing to roll back to: what runs stays as it is
        self._await_rollback(fresh["ID"], stop)

    def _await_rollback(self, service_id: str, stop: threading.Event) -> None:
        deadline = time.monotonic() + ROLLBACK_WAIT
        while time.monotonic() < deadline and not stop.is_set():
            found = self.manager.get("/services", {"filters": json.dumps({"id": [service_id]})})
            state = ((found[0] if found else {}).get("UpdateStatus") or {}).get("State")
            if not found or state in ("rollback_completed", "rollback_paused", "paused"):
                return
            stop.wait(POLL_SECONDS)

    def wait_ready(
        self, spec: ContainerSpec, replicas: Sequence[Replica], stop: threading.Event
    ) -> None:
        if replicas:
            first = replicas[0]
            self._wait(_service_of(first), first.config_hash, spec, stop, False, len(replicas))

    def update_resources(self, replicas: Iterable[Replica], spec: ContainerSpec) -> None:
        """Nothing here: resources are part of the service spec, which `converge` updates
        (Swarm replaces the tasks, start-first)."""

    def stop(self, replicas: Iterable[Replica], timeout: int | None = None) -> None:
        """Removes the services of these replicas: a deployment's replicas go together (Swarm
        stops each task with the service's stop grace period)."""
        for name in sorted({_service_of(c) for c in replicas}):
            live = self._service(name)
            if live is not None:
                self._remove(live["ID"], name)

    def delete(self, replicas: Iterable[Replica]) -> None:
        self.stop(replicas)

    def _remove(self, service_id: str, name: str) -> None:
        """Stop a service's replicas, then remove it. Removing it at once would drop its tasks
        from the API while the nodes still stop their containers (a STOPPED deployment would
        answer for a moment): scaled to zero first, its tasks say when their containers have
        stopped (bounded: REMOVE_WAIT, past the stop grace period)."""
        with self._changing(name):
            live = self._service(name)
            if live is not None and live.get("ID") == service_id:
                spec = dict(live.get("Spec") or {})
                spec["Mode"] = {"Replicated": {"Replicas": 0}}
                with contextlib.suppress(ConvergeFailed):  # (a global service, an old API)
                    self._write(spec, live)
                    self._await_stopped(service_id)
            try:
                self.manager.call(self.manager.sdk.remove_service, service_id)
            except NotFound:
                return

    def _await_stopped(self, service_id: str) -> None:
        deadline = time.monotonic() + REMOVE_WAIT
        while time.monotonic() < deadline:
            left = [t for t in self._tasks([service_id]) if task_state(t) not in ENDED]
            if not left:
                return
            time.sleep(POLL_SECONDS)

    # -- logs -------------------------------------------------------------------------------

    def _task_logs(
        self, task_id: str, *, stdout: bool = True, stderr: bool = True, **params: Any
    ) -> bytes:
        api = self.manager.sdk
        query = {"stdout": int(stdout), "stderr": int(stderr), **params}

        def fetch() -> bytes:
            res = api._get(api._url("/tasks/{0}/logs", task_id), params=query, stream=False)
            return api._get_result_tty(False, res, False)

        try:
            return self.manager.call(fetch)
        except (NotFound, EngineError):
            return b""

    def _task_lines(self, task_id: str, count: int = LAST_LINES) -> tuple[str, ...]:
        raw = self._task_logs(task_id, tail=count)
        # A task never placed has no log; Swarm then answers with its own complaint instead.
        return tuple(
            line
            for line in raw.decode(errors="replace").splitlines()
            if line.strip() and not line.startswith("Error grabbing logs")
        )

    def last_lines(self, replica: Replica, count: int = LAST_LINES) -> tuple[str, ...]:
        return self._task_lines(replica.id, count)

    def logs(
        self,
        replica: Replica,
        *,
        tail: int | None = None,
        since: datetime | None = None,
        timestamps: bool = False,
    ) -> list[str]:
        params: dict[str, Any] = {"tail": tail if tail is not None else "all"}
        if since is not None:
            params["since"] = int(since.timestamp())
        if timestamps:
            params["timestamps"] = 1
        raw = self._task_logs(replica.id, **params)
        return raw.decode(errors="replace").splitlines()

    def log_window(
        self, replica: Replica, since: datetime, until: datetime | None
    ) -> Iterator[LogLine]:
        # Task logs have no `until`: later lines are dropped here.
        end = (until or datetime.now(UTC)).astimezone(UTC)
        for stream in ("stdout", "stderr"):
            raw = self._task_logs(
                replica.id,
                stdout=stream == "stdout",
                stderr=stream == "stderr",
                timestamps=1,
                since=int(since.timestamp()),
            )
            for line in raw.decode(errors="replace").splitlines():
                stamp, _, text = line.partition(" ")
                try:
                    when = datetime.fromisoformat(stamp[:26].rstrip("Z") + "+00:00")
                except ValueError:
                    when = None
                if when is not None and (when < since or when > end):
                    continue
                yield LogLine(replica.name, stream, stamp, text)

    # -- events and endpoints ---------------------------------------------------------------

    def events(self, since_ns: int) -> SwarmEvents:
        stream = self.manager.call(
            self.manager.sdk.events,
            since=since_argument(since_ns),
            filters={"type": list(EVENT_TYPES)},
            decode=True,
        )
        return SwarmEvents(EventStream(stream), self)

    def parse_event(self, raw: Mapping[str, Any]) -> Event:
        actor = raw.get("Actor") or {}
        name = str((actor.get("Attributes") or {}).get("name") or actor.get("ID") or "?")
        kind = raw.get("Type") or "?"
        instance = name.split("_", 1)[0] if kind == "service" else self._instance
        return Event(
            replica_id=str(actor.get("ID") or ""),
            action=f"{kind} {raw.get('Action') or '?'}",
            instance=instance,
            name=name,
            time_ns=int(raw["timeNano"]) if raw.get("timeNano") else None,
            own=kind == "service" and self._caused(name),
        )

    def watching(self, instance: str) -> str:
        return f"service and node events of the swarm at {self.manager.where} ({instance}_*)"

    def endpoints(self, replicas: Iterable[Replica], publish_address: str) -> dict[str, str]:
        """Each ready task at its node's address and the host port Swarm published it on."""
        return {
            c.id: published_endpoint(c, publish_address)
            for c in replicas
            if c.running and c.host_port and c.host_ip and c.health != HEALTH_UNREADY
        }

    @contextlib.contextmanager
    def _changing(self, name: str) -> Iterator[None]:
        """While (and shortly after) this backend changes a service, its events are its own."""
        with self._own_lock:
            self._own[name] = float("inf")
        try:
            yield
        finally:
            with self._own_lock:
                self._own[name] = time.monotonic()

    def _caused(self, name: str) -> bool:
        with self._own_lock:
            at = self._own.get(name)
        return at is not None and time.monotonic() - at <= _OWN_AFTER


def _spec_hash(service: Mapping[str, Any]) -> str:
    """The configuration a service's spec is now (after a rollback: the previous one)."""
    return str(((service.get("Spec") or {}).get("Labels") or {}).get(L.CONFIG_HASH) or "")


def connect(settings: EngineSettings, timeout: float) -> SwarmBackend:
    """The manager at `settings.host`; images come from the local engine (DOCKER_HOST, else
    the local socket), where they are built."""
    manager = Engine.connect(timeout, settings.host)
    source = Engine.connect(timeout)
    return SwarmBackend(manager, source, settings)


__all__ = ["SwarmBackend", "connect"]
