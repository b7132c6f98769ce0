"""Prometheus metrics of `reconciler serve`: inference requests per deployment, upstream errors,
and the reconcile passes the server ran. A registry of its own, so that tests and several
servers in one process never share counters."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import generate_latest as _render

if TYPE_CHECKING:
    from .routes import Route
    from .scaler import Scaler

CONTENT_TYPE = CONTENT_TYPE_LATEST
# Model servers answer in milliseconds to seconds; generative ones stream for minutes.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "reconciler_inference_requests",
            "Requests relayed to deployments, by answer code",
            ["deployment", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "reconciler_inference_request_seconds",
            "Time to relay a request to a deployment and its whole answer back",
            ["deployment"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.upstream_errors = Counter(
            "reconciler_inference_upstream_errors",
            "Requests the model server failed (unreachable, cut off, timed out)",
            ["deployment"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "reconciler_inference_in_flight",
            "Requests relayed to a deployment and not answered yet",
            ["deployment"],
            registry=self.registry,
        )
        self._in_flight_seen: set[str] = set()
        self.replicas = Gauge(
            "reconciler_deployment_replicas",
            "Replicas of a deployment: serving now (current), recorded as asked for (desired), "
            "what the autoscaler decided last (autoscaler), and its bounds (min, max)",
            ["deployment", "kind"],
            registry=self.registry,
        )
        self.out_of_sync = Gauge(
            "reconciler_deployment_out_of_sync",
            "1 when what runs is not what the manifests say (drift by hand, or a change not "
            "reconciled yet), else 0: status --json's syncStatus",
            ["deployment"],  # (its id only, as the other series: /metrics names no tenant)
            registry=self.registry,
        )
        self.passes = Counter(
            "reconciler_reconcile_passes",
            "Reconcile passes run by the server, by result",
            ["result"],
            registry=self.registry,
        )
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}
        self.pass_seconds = Histogram(
            "reconciler_reconcile_pass_seconds",
            "Duration of reconcile passes run by the server",
            registry=self.registry,
        )

    def observe_request(
        self, deployment: str, seconds: float, code: int, upstream_ok: bool
    ) -> None:
        self.requests.labels(deployment, str(code)).inc()
        self.latency.labels(deployment).observe(seconds)
        if not upstream_ok:
            self.upstream_errors.labels(deployment).inc()

    def observe_in_flight(self, counts: Mapping[str, int]) -> None:
        """The gateway's requests in flight now; a deployment it no longer lists has none."""
        for deployment in self._in_flight_seen - set(counts):
            self.in_flight.labels(deployment).set(0)
        for deployment, count in counts.items():
            self.in_flight.labels(deployment).set(count)
        self._in_flight_seen |= set(counts)

    def observe_scaling(self, routes: Mapping[str, Route], scaler: Scaler | None) -> None:
        """Replica counts per deployment, from the routing table and the autoscaler."""
        self.replicas.clear()  # deleted deployments go
        policies = dict(scaler.known_policies) if scaler is not None else {}
        decisions = dict(scaler.decisions) if scaler is not None else {}
        for dep, route in routes.items():
            self.replicas.labels(dep, "current").set(len(route.targets))
            if route.replicas is not None:
                self.replicas.labels(dep, "desired").set(route.replicas)
            if dep in policies:
                policy = policies[dep][1]
                self.replicas.labels(dep, "min").set(policy.min_replicas)
                self.replicas.labels(dep, "max").set(policy.max_replicas)
            if dep in decisions:
                self.replicas.labels(dep, "autoscaler").set(decisions[dep].desired)

    def observe_sync(self, statuses: list[Mapping[str, Any]]) -> None:
        """Each deployment's syncStatus (reconciler.core.status), as of this scrape."""
        self.out_of_sync.clear()  # deleted deployments go
        for s in statuses:
            out = 1 if s.get("syncStatus") == "OutOfSync" else 0
            self.out_of_sync.labels(str(s["id"])).set(out)

    def observe_pass(self, result: str, seconds: float) -> None:
        self.passes.labels(result).inc()
        self.pass_seconds.observe(seconds)

    def render(self) -> bytes:
        return _render(self.registry)
