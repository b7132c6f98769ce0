"""The autoscaler of `reconciler serve`: the gateway's load in, replica counts out.

Once a second it samples each autoscaled deployment's load where the requests are (the
gateway's requests in flight, and those that arrived: `concurrency` or `rps`), feeds one
`reconciler.core.autoscale.Autoscaler` per deployment and, when a decision differs from the
count recorded, asks the background reconciler for a pass with that count (`scale`): the
change goes through the same plan → apply → record as any other, start-first, one pass at a
time, so `reconcile` and `watch` never fight it (the count is runtime state the planner keeps;
reconciler.core.plan.planned_replicas). Each decision that asks for a change is one log line
with its reason.

The policies (bounds and annotations) are read from the manifests again after each reconcile
pass (the state snapshot changed: new bounds apply with a pass, the planner's clamp too) and
every `POLICY_SECONDS` in any case, so a change of the bounds in git reaches the autoscaler
without a restart, and a large repository is not rendered every few seconds. A count asked for that
the pass could not reach (no free GPU, a replica that failed to start) is asked for again only
after `RETRY_SECONDS`: reported, not retried in a loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..core.autoscale import Autoscaler, Decision, Policy
from ..core.record import snapshot_version
from ..errors import UserError
from ..files import FileVersion
from ..manifests.desired import desired_state
from .gateway import Gateway
from .routes import RouteTable

TICK_SECONDS = 1.0
POLICY_SECONDS = 60.0
RETRY_SECONDS = 30.0

log = logging.getLogger("reconciler.autoscaler")

# Asks for a pass that brings a deployment to a count: (deployment id, decision).
Scale = Callable[[str, Decision], None]


@dataclass
class _Asked:
    desired: int
    at: float


class Scaler:
    def __init__(
        self,
        root: Path,
        gateway: Gateway,
        table: RouteTable,
        scale: Scale,
        tick: float = TICK_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root = root
        self.gateway = gateway
        self.table = table
        self.ask = scale
        self.tick = tick
        self.clock = clock
        self._lock = threading.Lock()  # the tick (its thread) and wake (the event loop)
        self._policies: dict[str, tuple[str, Policy]] = {}  # id → (name, policy)
        self._policies_at = -POLICY_SECONDS
        self._snapshot: FileVersion | None = None  # the state snapshot the policies follow
        self._scalers: dict[str, Autoscaler] = {}
        self._asked: dict[str, _Asked] = {}
        self.decisions: dict[str, Decision] = {}  # the last one per deployment (metrics)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="autoscaler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.tick):
            try:
                self.step()
            except Exception:  # a bad tick must not end autoscaling; the next one retries
                log.exception("autoscaler tick failed")

    @property
    def known_policies(self) -> dict[str, tuple[str, Policy]]:
        """The policies as last read (no reading now)."""
        return self._policies

    def policies(self) -> dict[str, tuple[str, Policy]]:
        """The autoscaled deployments' policies, re-read from the manifests now and then (the
        last good ones while the manifests do not load)."""
        now = self.clock()
        stamp = snapshot_version(self.root)
        if stamp != self._snapshot or now - self._policies_at >= POLICY_SECONDS:
            self._policies_at, self._snapshot = now, stamp
            try:
                desired = desired_state(self.root)
            except UserError as exc:
                log.warning("autoscaler keeps its policies: %s", exc)
            else:
                self._policies = {
                    d.id: (d.name, d.spec.scaling())
                    for d in desired.deployments
                    if d.spec.autoscaled and d.deployment.target_status == "RUNNING"
                }
        return self._policies

    def step(self) -> None:
        """One tick: sample, decide, ask for what changed."""
        policies = self.policies()
        now = self.clock()
        in_flight = dict(self.gateway.in_flight)  # (a copy: the event loop changes it)
        arrived = self.gateway.take_arrived()
        routes = self.table.all()
        with self._lock:
            for dep in set(self._scalers) - set(policies):
                del self._scalers[dep]
                self.decisions.pop(dep, None)
            for dep, (name, policy) in policies.items():
                route = routes.get(dep)
                if route is None or route.status != "RUNNING" or route.replicas is None:
                    continue
                scaler = self._scaler(dep, policy, now, route.replicas)
                load = in_flight.get(dep, 0) if policy.metric == "concurrency" else 0.0
                if policy.metric == "rps":
                    load = arrived.get(dep, 0) / self.tick
                scaler.record(now, load, arrived.get(dep, 0))
                decision = scaler.decide(now, route.replicas)
                self.decisions[dep] = decision
                self._maybe_ask(dep, name, route.replicas, decision, now)

    def wake(self, dep: str) -> None:
        """A request came for a deployment scaled to zero (the gateway, on its event loop):
        one replica now."""
        with self._lock:
            scaler = self._scalers.get(dep)
            if scaler is None:
                entry = self._policies.get(dep)
                if entry is None:
                    return
                scaler = self._scaler(dep, entry[1], self.clock(), 0)
            decision = scaler.wake(self.clock())
            self.decisions[dep] = decision
            name = self._policies.get(dep, (dep, None))[0]
            self._maybe_ask(dep, name, 0, decision, self.clock())

    def _scaler(self, dep: str, policy: Policy, now: float, replicas: int) -> Autoscaler:
        scaler = self._scalers.get(dep)
        if scaler is None or scaler.policy != policy:  # new, or its bounds changed in git
            scaler = self._scalers[dep] = Autoscaler(policy, now, replicas)
        return scaler

    def _maybe_ask(self, dep: str, name: str, current: int, decision: Decision, now: float) -> None:
        if decision.desired == current:
            self._asked.pop(dep, None)
            return
        asked = self._asked.get(dep)
        if asked and asked.desired == decision.desired and now - asked.at < RETRY_SECONDS:
            return  # asked already: the pass is under way, or could not do it
        self._asked[dep] = _Asked(decision.desired, now)
        log.info(
            "scale %s (%s): %d → %d replicas: %s",
            name,
            dep,
            current,
            decision.desired,
            decision.reason,
        )
        self.ask(dep, decision)
