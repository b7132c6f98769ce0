"""The inference gateway's routing table: deployment id → status and serving addresses.

Built from the same two sources as `reconciler status` (the state snapshot and one labelled
container list), without loading the manifests, so that a refresh costs a few milliseconds and
can run twice a second. Reconcile records an update as RUNNING before it retires the old
containers, and retires them only after a drain delay longer than the refresh interval: the
table has moved every client to the new containers before the old ones stop.

A replica is reached at its own address on its Docker network when the engine is local and
this host owns that network's gateway address (rootful Docker on Linux: the host is the
bridge's other end), and at its published port otherwise (rootless Docker, Docker Desktop, a
remote engine, `serve` in a container of its own). The published port goes through
docker-proxy, a second relay in user space: skipping it saves about 0.2 ms of CPU and two
wake-ups per request. Docker's own proxy connects to the same address, so a published port that
works implies a container address that does.
"""

from __future__ import annotations

import itertools
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from ..backends.base import Replica
from ..backends.docker.engine import Engine, EngineUnreachable
from ..core.observe import observe
from ..core.record import read_snapshot, snapshot_path
from ..core.status import published_address, serving, serving_replicas
from ..files import FileVersion, file_version


@dataclass(frozen=True)
class Route:
    deployment_id: str
    name: str
    resource_group: str
    status: str
    targets: tuple[str, ...]  # host:port of each serving replica (see `relay_targets`)
    _turn: itertools.count = field(  # round-robin position, shared by all requests
        default_factory=itertools.count, compare=False, repr=False
    )

    def pick(self) -> str | None:
        if not self.targets:
            return None
        return self.targets[next(self._turn) % len(self.targets)]


def host_owns(address: str) -> bool:
    """Whether `address` is one of this host's own (binding to it succeeds only then)."""
    if not address:
        return False
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((address, 0))
    except OSError:
        return False
    return True


def relay_targets(
    containers: list[Replica], publish: str, owned_gateways: frozenset[str]
) -> tuple[str, ...]:
    """`host:port` of each serving replica, in replica order: its own address where its
    network's gateway is in `owned_gateways`, else its published one."""
    return tuple(
        f"{c.container_ip}:{c.container_port}"
        if c.container_ip and c.network_gateway in owned_gateways
        else published_address(c, publish)
        for c in serving_replicas(containers)
    )


def build_routes(root: Path, instance: str, engine: Engine, publish: str) -> dict[str, Route]:
    snapshot = read_snapshot(root, instance)
    observed = observe(engine, instance, images=False)
    by_dep = observed.by_deployment()
    gateways = {c.network_gateway for c in observed.containers} if engine.local else set()
    owned = frozenset(g for g in gateways if host_owns(g))
    routes = {}
    for dep_id in set(snapshot.records) | set(by_dep):
        rec = snapshot.records.get(dep_id)
        containers = by_dep.get(dep_id, [])
        targets = relay_targets(serving(rec, containers), publish, owned)
        if rec:
            status = rec.status
            if status == "RUNNING" and not targets:
                status = "PENDING"  # removed or stopped by hand; the next reconcile restores it
            routes[dep_id] = Route(dep_id, rec.name, rec.resource_group, status, targets)
        else:  # containers of a pass that has not recorded anything yet
            c = containers[0]
            routes[dep_id] = Route(dep_id, c.deployment_name, c.resource_group, "PENDING", ())
    return routes


class RouteTable:
    """The current routes, replaced as a whole on every refresh (readers never lock)."""

    def __init__(self, root: Path, instance: str, publish: str, engine: Engine) -> None:
        self.root = root
        self.instance = instance
        self.publish = publish
        self.engine = engine
        self._routes: Mapping[str, Route] = MappingProxyType({})
        self.problem: str | None = None  # why the last refresh failed (engine down)
        self._refresh_lock = threading.Lock()
        self._refreshed_at = 0.0
        self._stamp: FileVersion | None = None  # the snapshot file read last

    def get(self, deployment_id: str) -> Route | None:
        return self._routes.get(deployment_id)

    def refresh_if_stale(self, seconds: float) -> None:
        """Refresh if the snapshot changed since the last refresh, or that is `seconds` old.
        A request for a deployment that is unknown or not serving asks for this, so that a
        deployment answers as soon as reconcile recorded it, while a flood of such requests
        costs at most one refresh per period.

        Checked under the refresh lock: a refresh under way stamps itself before it reads, so
        without waiting for it a request would find the table "fresh" while it still holds the
        routes from before (right after a reconcile: 503 PENDING for a RUNNING deployment)."""
        with self._refresh_lock:
            if (
                self._snapshot_stamp() != self._stamp
                or time.monotonic() - self._refreshed_at >= seconds
            ):
                self._refresh()

    def _snapshot_stamp(self) -> FileVersion | None:
        try:
            return file_version(snapshot_path(self.root))
        except OSError:
            return None

    def refresh(self) -> None:
        """Re-read snapshot and containers (blocking: run it in a worker thread)."""
        with self._refresh_lock:
            self._refresh()

    def _refresh(self) -> None:
        self._refreshed_at = time.monotonic()
        self._stamp = self._snapshot_stamp()
        try:
            fresh = build_routes(self.root, self.instance, self.engine, self.publish)
        except EngineUnreachable as exc:
            self.problem = str(exc)
            return
        old = self._routes
        # Keep each route's round-robin position when nothing about it changed.
        self._routes = MappingProxyType(
            {k: old[k] if old.get(k) == v else v for k, v in fresh.items()}
        )
        self.problem = None
