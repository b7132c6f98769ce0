"""The inference gateway's routing table: deployment id → status and serving addresses.

Built from the same two sources as `reconciler status` (the state snapshot and one labelled
container list), without loading the manifests, so that a refresh costs a few milliseconds and
can run twice a second. Reconcile records an update as RUNNING before it retires the old
containers, and retires them only after a drain delay longer than the refresh interval: the
table has moved every client to the new containers before the old ones stop.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from .engine import Engine, EngineUnreachable
from .observe import observe
from .record import read_snapshot, snapshot_path
from .status import addresses, serving


@dataclass(frozen=True)
class Route:
    deployment_id: str
    name: str
    resource_group: str
    status: str
    targets: tuple[str, ...]  # host:port of each serving replica
    _turn: itertools.count = field(  # round-robin position, shared by all requests
        default_factory=itertools.count, compare=False, repr=False
    )

    def pick(self) -> str | None:
        if not self.targets:
            return None
        return self.targets[next(self._turn) % len(self.targets)]


def build_routes(root: Path, instance: str, engine: Engine, publish: str) -> dict[str, Route]:
    snapshot = read_snapshot(root, instance)
    by_dep = observe(engine, instance, images=False).by_deployment()
    routes = {}
    for dep_id in set(snapshot.records) | set(by_dep):
        rec = snapshot.records.get(dep_id)
        containers = by_dep.get(dep_id, [])
        targets = tuple(addresses(serving(rec, containers), publish))
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
        self._stamp: tuple[int, int] | None = None  # the snapshot file read last

    def get(self, deployment_id: str) -> Route | None:
        return self._routes.get(deployment_id)

    def refresh_if_stale(self, seconds: float) -> None:
        """Refresh if the snapshot changed since the last refresh, or that is `seconds` old.
        A request for a deployment that is unknown or not serving asks for this, so that a
        deployment answers as soon as reconcile recorded it, while a flood of such requests
        costs at most one refresh per period."""
        if (
            self._snapshot_stamp() != self._stamp
            or time.monotonic() - self._refreshed_at >= seconds
        ):
            self.refresh()

    def _snapshot_stamp(self) -> tuple[int, int] | None:
        try:
            st = snapshot_path(self.root).stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def refresh(self) -> None:
        """Re-read snapshot and containers (blocking: run it in a worker thread)."""
        with self._refresh_lock:
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
