"""The inference gateway's routing table: deployment id → status and serving addresses.

Built from the same two sources as `reconciler status` (the state snapshot and one labelled
container list), without loading the manifests, so that a refresh costs a few milliseconds and
can run twice a second. Reconcile records an update as RUNNING before it retires the old
containers, and retires them only after a drain delay longer than the refresh interval: the
table has moved every client to the new containers before the old ones stop.

Only ready replicas are targets (`reconciler.core.status.routable`, which `reconciler status`
reads too, so that RUNNING there means answering here): a replica whose health check fails is
left out at the next refresh, and taken back at the first refresh after it passes again. A
RUNNING deployment with no ready replica is routed as PENDING with the reason as its message.

Where a replica is reached is the backend's answer (`Backend.endpoints`): Docker's is the
container's own address when this host owns its bridge, else the published port.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from ..backends import Backend, EngineUnreachable, Observed, Replica
from ..core.lifecycle import Status
from ..core.observe import observe
from ..core.record import read_snapshot, snapshot_version
from ..core.status import (
    SCALED_TO_ZERO,
    not_serving,
    routable,
    scaled_to_zero,
    serving_replicas,
)
from ..files import FileVersion


@dataclass(frozen=True)
class Route:
    deployment_id: str
    name: str
    resource_group: str
    status: str
    targets: tuple[str, ...]  # host:port of each serving replica (see `relay_targets`)
    message: str = ""  # why it does not serve, when it does not (its statusMessage)
    replicas: int | None = None  # the recorded count (0: scaled to zero)
    _turn: itertools.count = field(  # round-robin position, shared by all requests
        default_factory=itertools.count, compare=False, repr=False
    )

    @property
    def idle(self) -> bool:
        """Scaled to zero: a request is held while a replica starts."""
        return self.status == Status.RUNNING and self.replicas == 0 and not self.targets

    def pick(self) -> str | None:
        if not self.targets:
            return None
        return self.targets[next(self._turn) % len(self.targets)]


def relay_targets(replicas: list[Replica], endpoints: Mapping[str, str]) -> tuple[str, ...]:
    """`host:port` of each serving replica, in replica order, where the backend said this
    host reaches it (`endpoints`, by replica id)."""
    return tuple(endpoints[c.id] for c in serving_replicas(replicas) if c.id in endpoints)


# How old the table's container list may be for `reconciler serve`'s status answers (the AI
# API's and the dashboard's) to take it instead of listing the engine's containers again: two
# refresh periods. With hundreds of containers one list is most of a status answer (about
# 60 ms of a 200-deployment dashboard page on a 2-core host, bench/dashboard.py), and the
# engine answers slower still while the table's own list runs beside it.
RECENT_SECONDS = 1.0


def build_routes(root: Path, instance: str, backend: Backend, publish: str) -> dict[str, Route]:
    return _routes_and_containers(root, instance, backend, publish)[0]


def _routes_and_containers(
    root: Path, instance: str, backend: Backend, publish: str
) -> tuple[dict[str, Route], Observed]:
    snapshot = read_snapshot(root, instance)  # (first: the containers are never older)
    observed = observe(backend, instance, images=False)
    by_dep = observed.by_deployment()
    endpoints = backend.endpoints(observed.containers, publish)
    routes = {}
    for dep_id in set(snapshot.records) | set(by_dep):
        rec = snapshot.records.get(dep_id)
        containers = by_dep.get(dep_id, [])
        # A deployment recorded at zero serves nothing yet: a replica being woken counts only
        # once the pass saw it ready and recorded it (requests are held meanwhile).
        serving_now = [] if scaled_to_zero(rec) else routable(rec, containers)
        targets = relay_targets(serving_now, endpoints)
        if rec:
            status, message = rec.status, rec.status_message or ""
            if status == Status.RUNNING and not targets and scaled_to_zero(rec):
                message = SCALED_TO_ZERO
            elif status == Status.RUNNING and not targets:
                # Removed or stopped by hand (the next reconcile restores it), or no replica
                # passes its health check (it serves again when one does): as status says.
                status = Status.PENDING
                message = not_serving(rec, containers) or "no replica reachable from this host"
            routes[dep_id] = Route(
                dep_id, rec.name, rec.resource_group, status, targets, message, rec.replicas
            )
        else:  # containers of a pass that has not recorded anything yet
            c = containers[0]
            routes[dep_id] = Route(
                dep_id,
                c.deployment_name,
                c.resource_group,
                Status.PENDING,
                (),
                "not reconciled yet: the reconciler is starting it",
            )
    return routes, observed


class RouteTable:
    """The current routes, replaced as a whole on every refresh (readers never lock)."""

    def __init__(self, root: Path, instance: str, publish: str, backend: Backend) -> None:
        self.root = root
        self.instance = instance
        self.publish = publish
        self.backend = backend
        self._routes: Mapping[str, Route] = MappingProxyType({})
        self.problem: str | None = None  # why the last refresh failed (engine down)
        self._refresh_lock = threading.Lock()
        self._refreshed_at = 0.0
        self._stamp: FileVersion | None = None  # the snapshot file read last
        # The last refresh's container list: when it was taken, and the snapshot's version then.
        self._seen: tuple[Observed, float, FileVersion | None] | None = None

    def get(self, deployment_id: str) -> Route | None:
        return self._routes.get(deployment_id)

    def all(self) -> Mapping[str, Route]:
        return self._routes

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
                snapshot_version(self.root) != self._stamp
                or time.monotonic() - self._refreshed_at >= seconds
            ):
                self._refresh()

    def refresh(self) -> None:
        """Re-read snapshot and containers (blocking: run it in a worker thread)."""
        with self._refresh_lock:
            self._refresh()

    def recent(self, instance: str) -> Observed | None:
        """The containers the last refresh listed, if that is under RECENT_SECONDS old and no
        pass has written the snapshot since (so they are never older than the records they
        are shown with); None otherwise: the caller lists them itself."""
        seen = self._seen
        if seen is None or instance != self.instance:
            return None
        observed, at, stamp = seen
        if time.monotonic() - at > RECENT_SECONDS or snapshot_version(self.root) != stamp:
            return None
        return observed

    def _refresh(self) -> None:
        self._refreshed_at = time.monotonic()
        self._stamp = snapshot_version(self.root)
        try:
            fresh, observed = _routes_and_containers(
                self.root, self.instance, self.backend, self.publish
            )
        except EngineUnreachable as exc:
            self.problem = str(exc)
            self._seen = None
            return
        self._seen = (observed, self._refreshed_at, self._stamp)
        old = self._routes
        # Keep each route's round-robin position when nothing about it changed.
        self._routes = MappingProxyType(
            {k: old[k] if old.get(k) == v else v for k, v in fresh.items()}
        )
        self.problem = None
