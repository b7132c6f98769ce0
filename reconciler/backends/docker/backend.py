"""The Docker backend: one container per replica, replaced start-first by the reconciler.

`converge` is the shared start-first sequence (`startfirst`): remove what does not serve,
resolve the image (pulling it when it is not on the host, as compose does), create and start
the new containers, wait until each is ready, and hand the old ones back for the core to retire
once it has recorded the deployment RUNNING. This module gives it Docker's primitives. Whatever
fails, nothing new is left behind: a container that could not start is removed, and the failure
carries Docker's or the model server's own words.

Readiness: HTTP GET on the template's readiness path through the published port (what clients
use), or a TCP connect to the container's own address (through Docker's port proxy a connect
always succeeds, even when nothing listens). A container that exits, is killed for its memory
limit or restarts while starting has failed, whatever its restart policy would do next.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from datetime import datetime
from types import MappingProxyType
from typing import Any

from ...files import cache_dir
from ...manifests.spec import ContainerSpec, Identity
from ...stores.cache import ModelCache
from .. import labels as L
from ..base import (
    HEALTH_UNREADY,
    LAST_LINES,
    Capabilities,
    ConvergeFailed,
    EngineError,
    Event,
    Intent,
    LogLine,
    Observed,
    Replica,
    published_endpoint,
    replica_name,
)
from ..health import http_ready, tcp_ready
from ..network import host_owns
from ..startfirst import StartFirstBackend
from .engine import ContainerRequest, Engine, EventStream
from .parse import (
    image_ids,
    parse_event,
    parse_health,
    parse_inspect,
    parse_summary,
    since_argument,
)

# Container events that may mean drift: it died, ran out of memory, was removed, its health
# changed, or it was paused.
EVENT_ACTIONS = ("die", "oom", "destroy", "health_status", "pause")


class DockerEvents:
    """Docker's event stream as neutral `Event`s, each marked when this backend caused it."""

    def __init__(self, stream: EventStream, caused: Callable[[str], bool]) -> None:
        self._stream = stream
        self._caused = caused

    def __iter__(self) -> Iterator[Event]:
        for raw in self._stream:
            yield parse_event(raw, self._caused)

    def close(self) -> None:
        self._stream.close()


class DockerBackend(StartFirstBackend):
    capabilities = Capabilities(in_place_resources=True, gpu_inventory=True, rolling_updates=False)

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # Containers whose image cannot run the check (no probe tool, no shell), with what it
        # said: Docker shows them unhealthy for good, and an image never gains a tool, so they
        # are inspected once, not on every observe (the routing table observes twice a second).
        self._unprobeable: dict[str, str] = {}
        self._host_memory: int | None = None

    # -- observing --------------------------------------------------------------------------

    def observe(self, instance: str, images: bool = True) -> Observed:
        """Two API calls however many deployments: the labelled container list (summaries
        carry labels, state, exit status and ports) and the image list (so that a rebuilt
        `image:tag` counts as a change). Only a container Docker is restarting right now is
        inspected (its restart count tells a crash loop), and one its health check finds
        unhealthy (the check's last output says why)."""
        summaries = self.engine.list_containers(L.selector(instance))
        replicas = tuple(
            sorted(
                (self._inspected(parse_summary(s)) for s in summaries),
                key=lambda c: (c.deployment_id, c.replica, c.created, c.id),
            )
        )
        ids = image_ids(self.engine.images()) if images else {}
        return Observed(replicas, MappingProxyType(ids))

    def host_memory(self) -> int | None:
        """Asked once (it does not change under a running engine), and only when a plan
        scales up: /info costs more than the whole observe."""
        if self._host_memory is None:
            self._host_memory = int(self.engine.get("/info", {}).get("MemTotal") or 0)
        return self._host_memory or None

    def models(self) -> ModelCache | None:
        """The model cache of this machine, when the engine runs here (a unix socket): its
        containers bind the cache's folders. An engine elsewhere has no such cache."""
        return ModelCache(cache_dir() / "models") if self.engine.local else None

    def _inspected(self, c: Replica) -> Replica:
        if c.state == "restarting":
            info = self.engine.inspect(c.id) or {}
            return replace(c, restarts=int(info.get("RestartCount") or 0))
        if c.health == HEALTH_UNREADY:
            if c.id in self._unprobeable:
                return replace(c, health="", health_detail=self._unprobeable[c.id])
            c = parse_health(self.engine.inspect(c.id) or {}, c)
            if not c.health:
                if len(self._unprobeable) > 1000:  # forget removed containers now and then
                    self._unprobeable.clear()
                self._unprobeable[c.id] = c.health_detail
        return c

    # -- converging -------------------------------------------------------------------------

    def update_resources(self, replicas: Iterable[Replica], spec: ContainerSpec) -> None:
        for c in replicas:
            try:
                self.engine.update(c.id, self._cpus(spec), spec.memory, spec.restart_policy)
            except EngineError as exc:
                raise ConvergeFailed(f"docker update of {c.name} failed: {exc}") from None

    def stop(self, replicas: Iterable[Replica], timeout: int | None = None) -> None:
        for c in replicas:
            if c.alive:
                self.engine.stop(c.id, timeout)
            self.engine.remove(c.id)

    def _remove(self, container_ids: Iterable[str]) -> None:
        for cid in container_ids:
            self.engine.remove(cid)

    def _resolve_image(self, ref: str) -> str:
        try:
            return self.engine.ensure_image(ref)
        except EngineError as exc:
            raise ConvergeFailed(str(exc)) from None

    def _cpus(self, spec: ContainerSpec) -> float:
        # A plan may ask for more CPUs than a small host has; Docker would refuse the container.
        return min(spec.cpus, float(self.engine.ncpus))

    def _start(
        self,
        intent: Intent,
        identity: Identity,
        image_id: str,
        replica: int,
        gpu_ids: tuple[str, ...],
    ) -> str:
        return self._create(self._request(intent, identity, image_id, replica, gpu_ids))

    def _request(
        self,
        intent: Intent,
        identity: Identity,
        image_id: str,
        replica: int,
        gpu_ids: tuple[str, ...],
    ) -> ContainerRequest:
        d, spec = intent.deployment, intent.deployment.spec
        group = d.deployment.resource_group
        return ContainerRequest(
            name=replica_name(intent.instance, group, d.name, replica, identity.config_hash),
            spec=spec,
            labels=L.replica_labels(intent, identity, image_id, replica, gpu_ids),
            publish_address=intent.publish_address,
            cpus=self._cpus(spec),
            gpu_ids=gpu_ids,
        )

    def _create(self, request: ContainerRequest) -> str:
        try:
            cid = self.engine.create(request)
        except EngineError as exc:
            if "is already in use" not in str(exc):
                raise ConvergeFailed(f"docker refused to create the container: {exc}") from None
            # Left by an interrupted pass; the name holds our config hash, so it is ours.
            self.engine.remove(request.name)
            try:
                cid = self.engine.create(request)
            except EngineError as again:
                raise ConvergeFailed(f"docker refused to create the container: {again}") from None
        try:
            self.engine.start(cid)
        except EngineError as exc:
            self.engine.remove(cid)  # never leave a created-but-not-started container behind
            raise ConvergeFailed(f"container could not start: {exc}") from None
        return cid

    # -- readiness --------------------------------------------------------------------------

    def _probe(self, spec: ContainerSpec, cid: str) -> tuple[bool, str]:
        info = self.engine.inspect(cid)
        if info is None:
            raise ConvergeFailed("the container was removed while starting")
        seen = parse_inspect(info, spec.port)
        if seen.oom_killed:
            raise ConvergeFailed(
                f"killed for exceeding its memory limit ({spec.memory // 1024**2} MiB, "
                f"resource plan {spec.resource_plan})",
                self._last_lines(cid),
            )
        if seen.status in ("exited", "dead"):
            raise ConvergeFailed(
                f"container exited with code {seen.exit_code} while starting",
                self._last_lines(cid),
            )
        if seen.restarting or seen.restart_count > 0:
            # Caught after Docker already started it again, ExitCode reads 0: it then says
            # nothing about the crash, the log lines do.
            exited = f"exited with code {seen.exit_code}" if seen.exit_code else "exited"
            raise ConvergeFailed(
                f"container {exited} while starting and keeps restarting "
                f"({seen.restart_count} restarts)",
                self._last_lines(cid),
            )
        if seen.status != "running":
            return False, f"container is {seen.status}"
        if spec.readiness_path is None:
            return tcp_ready(seen.address or "127.0.0.1", spec.port)
        if seen.published is None:
            return False, "port not published yet"
        host, port = seen.published
        return http_ready(host, port, spec.readiness_path)

    # -- logs -------------------------------------------------------------------------------

    def _last_lines(self, cid: str, count: int = LAST_LINES) -> tuple[str, ...]:
        try:
            raw = self.engine.logs(cid, tail=count)
        except EngineError:
            return ()
        return tuple(line for line in raw.decode(errors="replace").splitlines() if line.strip())

    def logs(
        self,
        replica: Replica,
        *,
        tail: int | None = None,
        since: datetime | None = None,
        timestamps: bool = False,
    ) -> list[str]:
        raw = self.engine.logs(
            replica.id,
            tail=tail if tail is not None else "all",
            since=since,
            timestamps=timestamps,
        )
        return raw.decode(errors="replace").splitlines()

    def log_window(
        self, replica: Replica, since: datetime, until: datetime | None
    ) -> Iterator[LogLine]:
        for stream, raw in self.engine.log_streams(replica.id, since=since, until=until):
            for line in raw.decode(errors="replace").splitlines():
                stamp, _, text = line.partition(" ")  # Docker leads each line with its time
                yield LogLine(replica.name, stream, stamp, text)

    # -- events and endpoints ---------------------------------------------------------------

    def events(self, since_ns: int) -> DockerEvents:
        filters = {
            "type": ["container"],
            "label": [f"{L.MANAGED}=true"],
            "event": list(EVENT_ACTIONS),
        }
        stream = self.engine.events(since_argument(since_ns), filters)
        return DockerEvents(stream, self.engine.caused)

    def watching(self, instance: str) -> str:
        return f"{', '.join(EVENT_ACTIONS)} of {L.INSTANCE}={instance}"

    def engine_info(self) -> dict[str, Any]:
        return {"kind": "docker", "host": self.engine.where}

    def endpoints(self, replicas: Iterable[Replica], publish_address: str) -> dict[str, str]:
        """A replica's own address on its Docker network when the engine is local and this
        host owns that network's gateway (rootful Docker on Linux), else its published port
        (rootless Docker, Docker Desktop, a remote engine, `serve` in a container of its own).
        The published port goes through docker-proxy, a second relay in user space: skipping
        it saves about 0.2 ms of CPU and two wake-ups per request. Docker's proxy connects to
        the same address, so a published port that works implies an own address that does."""
        serving = [c for c in replicas if c.running and c.host_port]
        gateways = {c.network_gateway for c in serving} if self.engine.local else set()
        owned = {g for g in gateways if host_owns(g)}
        return {
            c.id: f"{c.container_ip}:{c.container_port}"
            if c.container_ip and c.network_gateway in owned
            else published_endpoint(c, publish_address)
            for c in serving
        }
