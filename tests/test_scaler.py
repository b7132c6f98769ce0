"""`reconciler serve`'s autoscaler loop without an engine (issue 17): the policies read from a
real GitOps root, the gateway's load and the routing table as plain values, the clock the
test's. What it asks the background reconciler for, and what it logs."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from reconciler.core.autoscale import Decision
from reconciler.serve.routes import Route
from reconciler.serve.scaler import RETRY_SECONDS, Scaler
from tests.plan_support import TEMPLATES, Root, configuration, deployment
from tests.test_plan_autoscale import SCALED


class Load:
    """The gateway's side: requests in flight and arrived, per deployment."""

    def __init__(self) -> None:
        self.in_flight: dict[str, int] = {}
        self.arrived: dict[str, int] = {}

    def take_arrived(self) -> dict[str, int]:
        arrived, self.arrived = self.arrived, {}
        return arrived


class Table:
    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}

    def all(self) -> dict[str, Route]:
        return self.routes


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def setup(tmp_path: Path):
    root = Root(tmp_path / "repo", templates=TEMPLATES + SCALED)
    desired = root.declare(
        configuration("conf-s", "scaled-serving", "scaled", min="0", max="4"),
        deployment("scaled-api", "conf-s"),
    )
    dep = desired.deployments[0].id
    load, table, clock = Load(), Table(), Clock()
    asked: list[tuple[str, Decision]] = []
    scaler = Scaler(
        root.path,
        load,  # type: ignore[arg-type]
        table,  # type: ignore[arg-type]
        lambda d, decision: asked.append((d, decision)),
        clock=clock,
    )
    return scaler, dep, load, table, clock, asked


def serving(dep: str, replicas: int) -> Route:
    targets = tuple(f"10.0.0.{i}:8080" for i in range(replicas))
    return Route(dep, "scaled-api", "default", "RUNNING", targets, replicas=replicas)


def test_load_asks_for_more_replicas_once_and_again_only_after_the_retry_period(setup, caplog):
    scaler, dep, load, table, clock, asked = setup
    table.routes[dep] = serving(dep, 1)
    load.in_flight[dep] = 12  # target 4 × 70 %: 12 in flight want 5, bounded by 4
    caplog.set_level(logging.INFO, "reconciler.autoscaler")
    scaler.step()
    assert [(d, x.desired) for d, x in asked] == [(dep, 4)]
    assert "scale scaled-api" in caplog.text and "1 → 4 replicas: panic" in caplog.text
    for _ in range(5):  # the pass is under way: not asked again
        clock.now += 1
        scaler.step()
    assert len(asked) == 1
    clock.now += RETRY_SECONDS  # it could not be done (no GPU free ...): asked once more
    scaler.step()
    assert len(asked) == 2


def test_a_count_reached_is_not_asked_for(setup):
    scaler, dep, load, table, clock, asked = setup
    table.routes[dep] = serving(dep, 2)
    load.in_flight[dep] = 5  # wants 2 (5 / 2.8)
    for _ in range(3):
        scaler.step()
        clock.now += 1
    assert asked == []


def test_idle_goes_to_zero_after_the_grace_period_and_a_wake_asks_one(setup):
    scaler, dep, _, table, clock, asked = setup
    table.routes[dep] = serving(dep, 1)
    scaler.step()
    assert asked == []  # just started: idle less than the grace period (30 s)
    for _ in range(31):
        clock.now += 1
        scaler.step()
    assert [(x.desired, x.reason) for _, x in asked] == [(0, "no request for 30s: scale to zero")]
    table.routes[dep] = serving(dep, 0)
    for _ in range(3):
        scaler.wake(dep)  # a burst of requests: one ask
    assert [x.desired for _, x in asked] == [0, 1]


def test_a_deployment_found_at_zero_stays_there(setup):
    """A restarted serve finds a deployment scaled to zero: it is not woken without a
    request."""
    scaler, dep, _, table, clock, asked = setup
    table.routes[dep] = serving(dep, 0)
    for _ in range(5):
        scaler.step()
        clock.now += 1
    assert asked == []
