"""Liveness restarts in the planner (no engine): a replica unready beyond its liveness limit is
restored like one that died (backoff, crash loop), one below it gets a wake-up; the limit
comes from the liveness probe, else from Settings' unreadyRestartSeconds."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from reconciler.backends.base import HEALTH_UNREADY, Replica
from reconciler.core.lifecycle import liveness_due, liveness_limit
from reconciler.core.plan import Action, Deadline
from reconciler.manifests.desired import DesiredDeployment, DesiredState, desired_state
from reconciler.manifests.spec import Probe
from tests.plan_support import (
    INSTANCE,
    NOW,
    TEMPLATES,
    Root,
    ago,
    configuration,
    deployment,
    lines,
    planned,
    record,
    replica,
)

DETAIL = "GET http://127.0.0.1:8080/ready:\n timed out"
# The echo template with a liveness probe: 2 failures 5 s apart, a limit of 10 s.
LIVE_TEMPLATES = TEMPLATES.replace(
    '    resourcePlan: "{{ inputs.parameters.plan }}"\n',
    '    resourcePlan: "{{ inputs.parameters.plan }}"\n'
    "    livenessProbe: {path: /live, periodSeconds: 5, failureThreshold: 2}\n",
    1,
)


def declare(root: Root, replicas: int = 1, unready_restart: int | None = None) -> DesiredState:
    """`webapp` of `conf-a` with `replicas`; Settings with unreadyRestartSeconds when given."""
    params = {"replicas": str(replicas)} if replicas != 1 else {}
    desired = root.declare(configuration("conf-a", **params), deployment("webapp", "conf-a"))
    if unready_restart is None:
        return desired
    settings = root.path / "manifests/settings.yaml"
    settings.write_text(
        "apiVersion: reconciler/v1\nkind: Settings\nmetadata:\n  name: host\nspec:\n"
        f"  instance: {INSTANCE}\n  unreadyRestartSeconds: {unready_restart}\n"
    )
    return desired_state(root.path)


def webapp(desired: DesiredState) -> DesiredDeployment:
    return next(d for d in desired.deployments if d.name == "webapp")


def unready(d: DesiredDeployment, seconds: float, index: int = 0) -> Replica:
    return replica(
        d,
        index=index,
        status="Up 10 minutes (unhealthy)",
        health=HEALTH_UNREADY,
        health_detail=DETAIL,
        unready_seconds=seconds,
    )


@pytest.fixture
def root(tmp_path: Path) -> Root:
    return Root(tmp_path / "repo")


def test_the_limit_is_the_liveness_probes_tolerance_else_the_setting():
    assert liveness_limit(Probe(period_seconds=5, failure_threshold=2), 300) == 10
    assert liveness_limit(None, 300) == 300
    assert liveness_limit(None, 0) is None  # never
    assert liveness_due(300.0, 300) and not liveness_due(299.9, 300)
    assert not liveness_due(None, 300) and not liveness_due(1e9, None)


def test_the_setting_defaults_to_five_minutes(root: Root):
    assert declare(root).repo.settings.unready_restart_seconds == 300
    assert declare(root, unready_restart=0).repo.settings.unready_restart_seconds == 0


def test_an_unready_replica_below_the_limit_changes_nothing_but_wakes_the_watch(root: Root):
    desired = declare(root)
    d = webapp(desired)
    p = planned(desired, unready(d, 200.5), records=[record(d)])
    assert lines(p) == [] and p.settle == ()
    assert p.waits == (
        Deadline(NOW + timedelta(seconds=99.5), "replica 0 of webapp unready for 300s"),
    )


def test_a_ready_replica_has_no_liveness_wait(root: Root):
    desired = declare(root)
    d = webapp(desired)
    assert planned(desired, replica(d), records=[record(d)]).waits == ()


def test_an_unready_replica_at_the_limit_is_restored_with_its_cause(root: Root):
    desired = declare(root)
    d = webapp(desired)
    hung = unready(d, 312.7)
    p = planned(desired, hung, records=[record(d)])
    assert lines(p) == [
        f"-/+ webapp ({d.id}): replica 0 unready for 312s (unreadyRestartSeconds 300): "
        "GET http://127.0.0.1:8080/ready: timed out"
    ]
    change = p.changes[0]
    assert (change.action, change.remove_first, change.create) == (Action.REPLACE, (hung,), (0,))
    assert (change.restore, change.failure) == (1, None)


def test_one_unready_replica_of_two_is_restored_in_place(root: Root):
    desired = declare(root, replicas=2)
    d = webapp(desired)
    serving, hung = replica(d, index=0), unready(d, 300, index=1)
    p = planned(desired, serving, hung, records=[record(d)])
    assert lines(p) == [
        f"~ webapp ({d.id}): replica 1 unready for 300s (unreadyRestartSeconds 300): "
        "GET http://127.0.0.1:8080/ready: timed out"
    ]
    change = p.changes[0]
    assert (change.remove_first, change.create, change.restore) == ((hung,), (1,), 1)


def test_the_setting_zero_never_restarts_for_unreadiness(root: Root):
    desired = declare(root, unready_restart=0)
    d = webapp(desired)
    p = planned(desired, unready(d, 86_400), records=[record(d)])
    assert (lines(p), p.waits) == ([], ())


def test_the_setting_sets_the_limit(root: Root):
    desired = declare(root, unready_restart=30)
    d = webapp(desired)
    assert lines(planned(desired, unready(d, 29), records=[record(d)])) == []
    assert len(planned(desired, unready(d, 30), records=[record(d)]).changes) == 1


def test_a_liveness_probe_sets_the_limit_whatever_the_setting(tmp_path: Path):
    root = Root(tmp_path / "repo", templates=LIVE_TEMPLATES)
    desired = declare(root, unready_restart=0)
    d = webapp(desired)
    p = planned(desired, unready(d, 4), records=[record(d)])
    assert lines(p) == []
    assert p.waits == (Deadline(NOW + timedelta(seconds=6), "replica 0 of webapp unready for 10s"),)
    change = planned(desired, unready(d, 10), records=[record(d)]).changes[0]
    assert change.cause == (
        "replica 0 unready for 10s (liveness: 2 × 5s): GET http://127.0.0.1:8080/ready: timed out"
    )


def test_a_deployment_not_meant_to_run_is_not_restarted_for_unreadiness(root: Root):
    desired = declare(root)
    d = webapp(desired)
    # No record: the pass that started it was lost; its replica is settled, not restored.
    p = planned(desired, unready(d, 1000))
    assert (lines(p), p.waits, len(p.settle)) == ([], (), 1)


def test_restarts_for_unreadiness_back_off(root: Root):
    desired = declare(root)
    d = webapp(desired)
    rec = record(d, restores=2, last_restore=ago(seconds=1))
    p = planned(desired, unready(d, 400), records=[rec])
    assert lines(p) == []
    assert p.waits == (Deadline(NOW + timedelta(seconds=1), "restore 3 of webapp"),)
    assert "restore 3 backs off until" in p.warnings[0]


def test_an_unready_replica_after_four_restores_is_a_crash_loop(root: Root):
    desired = declare(root)
    d = webapp(desired)
    rec = record(d, restores=4, last_restore=ago(seconds=599))
    change = planned(desired, unready(d, 300), records=[rec]).changes[0]
    assert (change.action, change.restore) == (Action.REPLACE, 5)
    assert change.failure == (
        "crash loop: replica 0 unready for 300s (unreadyRestartSeconds 300): GET "
        "http://127.0.0.1:8080/ready: timed out after 4 restores within 10 minutes; not "
        "retried until its configuration or image changes"
    )
