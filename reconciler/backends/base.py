"""What every engine backend shares: the interface, and the neutral records it speaks in.

The core works on whole deployments through `Backend` (the way Argo CD's gitops-engine keeps
kubectl behind an interface with a mock): it observes what runs as `Replica` records, asks a
backend to *converge* one deployment toward an `Intent`, stops and deletes replicas, reads
their logs and events, and asks where the routing table reaches them. How a backend gets there
is its own business: Docker creates containers start-first and hands the old ones back for the
core to retire once it has recorded the new ones; an engine with rolling updates of its own
(Swarm) replaces them itself and hands nothing back. `Capabilities` says which is which.

Nothing outside `reconciler.backends` sees an engine's own shapes (Docker's JSON, its status
text, its event attributes); `reconciler.backends.connect` is the only way to get a backend.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import UserError

if TYPE_CHECKING:
    from ..manifests.desired import DesiredDeployment
    from ..manifests.spec import ContainerSpec, Hashing
    from ..stores.cache import Progress
    from ..stores.s3 import Listing

# Lines of a failed replica's output kept with its failure (the state's lastLogs): enough for
# a traceback, little enough for the state file.
LAST_LINES = 50
# "starting": an engine bringing a replica up by itself (Swarm's pending ... starting tasks).
ALIVE_STATES = frozenset({"running", "restarting", "starting"})  # see Replica.alive
HEALTH_READY, HEALTH_UNREADY, HEALTH_STARTING = "ready", "unready", "starting"  # Replica.health


class EngineUnreachable(UserError):
    """The engine does not answer."""


class EngineError(Exception):
    """The engine refused an operation; `str()` is the engine's own explanation."""


class NotFound(Exception):
    """The replica or image does not exist (any more)."""


class ConvergeFailed(Exception):
    """A deployment could not be brought up. `reason` is the engine's or the model server's
    own words; `logs` the failed replica's last lines as it wrote them (not yet redacted: the
    core redacts them with the spec before they are kept or shown)."""

    def __init__(self, reason: str, logs: Sequence[str] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.logs = tuple(logs)


class Interrupted(Exception):
    """The pass was told to stop while a backend waited: what was started is left as it is,
    and the next pass settles it."""


@dataclass(frozen=True)
class Replica:
    """One replica of a deployment as its engine runs it (a container on Docker), in the
    engine's neutral terms: what the planner, the status and the gateway read."""

    id: str
    name: str
    deployment_id: str
    deployment_name: str
    resource_group: str
    configuration_id: str
    replica: int
    config_hash: str
    hash_version: str
    image_id: str
    fields: Mapping[str, str] = field(compare=False)
    resources: Mapping[str, Any] = field(compare=False)
    gpus: tuple[str, ...]
    state: str  # created | starting | running | restarting | paused | exited | dead | removing
    status: str  # the engine's own words for the state, for people: "Up 5 minutes"
    host_ip: str | None
    host_port: int | None
    container_port: int
    # The container's own address on its first network with one, and that network's gateway
    # (the host's end of the bridge): the gateway relays here when the host owns that end.
    container_ip: str
    network_gateway: str
    created: int  # unix seconds
    root: str
    revision: str
    model: str = ""  # "name:version" of the catalog model it serves, if any
    restarts: int = 0  # how often the engine restarted it (Docker: for restarting ones only)
    exit_code: int | None = None  # of the last exit, when it exited
    node: str = ""  # the engine's node that runs it ("": the engine's own host)
    image: str = ""  # the image reference it was created from, as the engine names it
    # Its readiness as the engine's continuous health check last saw it: HEALTH_READY,
    # HEALTH_UNREADY, HEALTH_STARTING, or "" when the replica has no health check.
    health: str = ""
    health_detail: str = ""  # what the last failed check said, when it failed
    # How long it has been unready without a break, as its engine saw it (a lower bound, by
    # the engine's clock so that no host clock is compared with it); None: not unready, or
    # unknown. The planner restarts a replica unready beyond its liveness limit.
    unready_seconds: float | None = None
    # When it last started (unix seconds, as precisely as the engine tells; None: unknown).
    started: float | None = None

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def alive(self) -> bool:
        """It runs, or its engine is restarting it (its own backoff): not gone, not our drift."""
        return self.state in ALIVE_STATES

    def describe_state(self) -> str:
        if self.state == "exited":
            return f"exited with code {self.exit_code}"
        if self.state == "created":
            return "created but never started"
        return self.state


@dataclass(frozen=True)
class Observed:
    """What runs of one instance (its replicas in deployment and replica order), and, for
    planning, the image ids the engine knows."""

    containers: tuple[Replica, ...]
    images: Mapping[str, str]  # normalized image reference -> image id
    # The host's memory in bytes, for fitting scale-ups (None: not asked, or the engine
    # places replicas itself against reservations, as Swarm does).
    memory: int | None = None

    def by_deployment(self) -> dict[str, list[Replica]]:
        out: dict[str, list[Replica]] = {}
        for c in self.containers:
            out.setdefault(c.deployment_id, []).append(c)
        return out

    def image_id(self, ref: str) -> str | None:
        return self.images.get(normalize_image(ref))


def normalize_image(ref: str) -> str:
    """`busybox` and `docker.io/library/busybox:latest` name the same image."""
    if "@" in ref:
        return ref
    if ":" not in ref.rsplit("/", 1)[-1]:
        ref += ":latest"
    for prefix in (
        "docker.io/library/",
        "index.docker.io/library/",
        "docker.io/",
        "index.docker.io/",
    ):
        if ref.startswith(prefix):
            return ref[len(prefix) :]
    return ref


# -- what the core asks of a backend ------------------------------------------------------------


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do; the core and the planner choose their steps by it."""

    # Resources (CPUs, memory, restart policy) change on a running replica (`docker update`);
    # without it a resource change is a replacement.
    in_place_resources: bool
    # Replicas can be pinned to device ids from Settings.gpus (the planner's GPU inventory);
    # without it a GPU count is left to the engine's own scheduling.
    gpu_inventory: bool
    # The engine replaces a deployment's replicas start-first by itself (Swarm's rolling
    # update): `converge` hands back nothing to retire.
    rolling_updates: bool


@dataclass(frozen=True)
class Intent:
    """What one deployment is to become, for `Backend.converge`: the whole deployment (its
    spec, its config hash) and the planner's per-replica steps, which a backend that works
    replica by replica follows and one that works per deployment may ignore."""

    deployment: DesiredDeployment
    config_hash: str  # what the plan computed (from the image id it observed)
    hashing: Hashing  # how new replicas' identity labels are written
    instance: str
    root: str  # the GitOps root, labelled so that another root's replicas are never touched
    revision: str | None  # the manifests' commit
    publish_address: str  # where serving ports are published on the host
    create: tuple[int, ...] = ()  # replica indexes to start
    remove_first: tuple[Replica, ...] = ()  # not serving: removed before anything starts
    retire: tuple[Replica, ...] = ()  # serving: retired once the new ones are ready
    gpus: tuple[str, ...] = ()  # device ids for the new replicas, spec.gpus each
    stop_first: bool = False  # retire before starting (no free GPU for both at once)
    image_id: str | None = None  # the image's id when this pass resolved it already
    # How many replicas run once it converged (an engine that keeps a count itself, Swarm,
    # sets it; one that works replica by replica follows `create` and `retire`).
    replicas: int = 1


@dataclass(frozen=True)
class Converged:
    """What `converge` left: the new replicas run and were seen ready."""

    config_hash: str  # of what now serves (differs from the plan's for an image pulled now)
    image_id: str | None  # the image resolved on the way (None: nothing was created)
    # Old replicas that still serve: the core records the deployment RUNNING, lets the routing
    # table move to the new ones, then retires these with `stop`. Empty when the engine
    # replaced them itself, or when they had to stop first.
    retire: tuple[Replica, ...] = ()


@dataclass(frozen=True)
class Event:
    """Something happened to a replica outside a pass's knowledge (it died, was removed ...):
    a trigger for the watch loop, never a truth to act on."""

    replica_id: str
    action: str  # the engine's word: die, oom, destroy, health_status, pause
    instance: str  # whose replica ("" when the engine did not say)
    name: str  # the deployment's name, or else the replica's
    time_ns: int | None  # when, by the engine's clock: a resumed stream starts just after it
    own: bool = False  # caused by this backend's own stop or delete: not drift


class EventStream(Protocol):
    """Events as they come; iteration ends when the engine closes the stream (it stopped, or
    the connection broke), or when `close()` is called from another thread."""

    def __iter__(self) -> Iterator[Event]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class LogLine:
    """One line a replica wrote, with when and on which stream."""

    replica: str  # the replica's name
    stream: str  # stdout | stderr
    time: str  # RFC 3339 in UTC, as precise as the engine keeps it
    text: str


class ModelHosts(Protocol):
    """Where the hosts that run an engine's replicas keep models from object stores: one
    folder per version (reconciler.stores.cache), bound read-only at /mnt/models. Docker on
    this machine: the local cache; Swarm: a cache on each node, filled by a job on the nodes."""

    def path(self, version: str) -> Any:
        """The version's folder, as the engine's hosts name it (a bind mount's source)."""

    def has(self, version: str) -> bool:
        """Whether the version is there complete (a store that is down then does not stop a
        deployment that already runs it)."""

    def fetch(self, listing: Listing, progress: Progress | None = None) -> Any:
        """Download the listing's objects there, once per version. Raises StoreError (one
        line; nothing partial is left as a version's folder)."""

    def evict(self, limit: int, keep: Iterable[str], user: str | None = None) -> list[str]:
        """Remove least recently used versions not in `keep` beyond `limit` bytes, never one
        that another `user` (a reconciler instance sharing the hosts) keeps."""


class Backend(ABC):
    """One engine, at the level of whole deployments. Implementations: `DockerBackend`
    (reconciler.backends.docker), `FakeBackend` (reconciler.backends.fake, in memory, for
    daemon-free tests). Methods raise EngineUnreachable when the engine does not answer."""

    capabilities: Capabilities

    @abstractmethod
    def observe(self, instance: str, images: bool = True) -> Observed:
        """This instance's replicas and, for planning, the images the engine has (`images=
        False` for callers that only show or route: it may cost the engine a call less)."""

    @abstractmethod
    def converge(self, intent: Intent, stop: threading.Event) -> Converged:
        """Bring one deployment to `intent`: remove what does not serve, start what is
        missing and wait until it is ready. Raises ConvergeFailed (nothing new is left behind;
        what served keeps serving unless it had to stop first) or Interrupted (`stop` was
        set while waiting: what was started is left for the next pass)."""

    @abstractmethod
    def wait_ready(
        self, spec: ContainerSpec, replicas: Sequence[Replica], stop: threading.Event
    ) -> None:
        """Wait until replicas that run as desired are ready (a pass was interrupted before
        it saw them so). Raises ConvergeFailed or Interrupted, as `converge`."""

    @abstractmethod
    def update_resources(self, replicas: Iterable[Replica], spec: ContainerSpec) -> None:
        """Give running replicas the spec's resources in place (capabilities.
        in_place_resources). Raises ConvergeFailed."""

    @abstractmethod
    def stop(self, replicas: Iterable[Replica], timeout: int | None = None) -> None:
        """Retire replicas gracefully: those alive get `timeout` seconds (None: the engine's
        default) to finish what they serve, then all are removed. Gone already is fine."""

    @abstractmethod
    def delete(self, replicas: Iterable[Replica]) -> None:
        """Remove replicas at once (they do not serve). Gone already is fine."""

    @abstractmethod
    def last_lines(self, replica: Replica, count: int = LAST_LINES) -> tuple[str, ...]:
        """The last non-blank lines a replica wrote, both streams (none if it is gone)."""

    @abstractmethod
    def logs(
        self,
        replica: Replica,
        *,
        tail: int | None = None,
        since: datetime | None = None,
        timestamps: bool = False,
    ) -> list[str]:
        """What a replica wrote, both streams in order (`tail`: only the last lines;
        `timestamps`: each line led by its RFC 3339 time and a space)."""

    @abstractmethod
    def log_window(
        self, replica: Replica, since: datetime, until: datetime | None
    ) -> Iterator[LogLine]:
        """A replica's lines from `since` to `until` (None: now), stream by stream."""

    @abstractmethod
    def events(self, since_ns: int) -> EventStream:
        """Events of managed replicas from `since_ns` (unix time in nanoseconds) on: the
        engine replays what it still holds from then, so a stream resumed after a break
        misses nothing the engine kept. Raises EngineUnreachable or EngineError."""

    @abstractmethod
    def watching(self, instance: str) -> str:
        """Which events `events` reports, in words for the watch loop's first log line."""

    def host_memory(self) -> int | None:
        """The memory of the host replicas run on, in bytes, for fitting scale-ups; None
        where the engine places replicas itself against reservations (Swarm)."""
        return None

    def models(self) -> ModelHosts | None:
        """Where this engine's hosts keep models from object stores; None where they cannot
        have them (an engine on another machine, the in-memory fake)."""
        return None

    def engine_info(self) -> dict[str, Any]:
        """What the engine is, for `reconciler status`: at least its kind and where it is
        (a Swarm adds its nodes). Raises EngineUnreachable."""
        return {"kind": "unknown"}

    @abstractmethod
    def endpoints(self, replicas: Iterable[Replica], publish_address: str) -> dict[str, str]:
        """`host:port` where this host reaches each replica that serves, by replica id: the
        routing table relays there."""


def replica_name(instance: str, group: str, name: str, replica: int, config_hash: str) -> str:
    """The engine-side name of a replica: unique per instance, deployment, replica index and
    configuration, so that a retry after an interrupted pass finds what it left."""
    # '_' never occurs in instance or group names, so the parts cannot run into each other.
    return f"{instance}_{group}_{name}_{replica}_{config_hash[:8]}"


def published_endpoint(replica: Replica, publish_address: str) -> str:
    """`host:port` where the host publishes a replica's serving port (a wildcard binding is
    reached on the loopback address)."""
    host = replica.host_ip or publish_address
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"{host}:{replica.host_port}"
