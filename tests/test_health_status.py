"""RUNNING means answering: status and the gateway's routing table read the replicas' health
(issue 15), without a Docker engine: replicas built by hand with the health an engine's check
would report, the snapshot as the reconciler recorded it.

These run with DOCKER_HOST pointing nowhere (nothing here touches an engine).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from reconciler.backends.base import (
    HEALTH_READY,
    HEALTH_STARTING,
    HEALTH_UNREADY,
    Observed,
    Replica,
    published_endpoint,
)
from reconciler.backends.fake import FakeBackend
from reconciler.core.record import Record, Snapshot, write_snapshot
from reconciler.core.status import deployment_statuses, routable
from reconciler.manifests.desired import DesiredDeployment, DesiredState
from reconciler.serve.routes import Route, build_routes
from tests.plan_support import (
    IMAGE,
    IMAGE_ID,
    INSTANCE,
    NOW,
    Root,
    ago,
    configuration,
    deployment,
    record,
    replica,
)

TIMED_OUT = "readiness /v2/health/ready timed out 3 times"


@pytest.fixture
def root(tmp_path: Path) -> Root:
    return Root(tmp_path / "repo")


def web(root: Root, replicas: int = 1) -> tuple[DesiredState, DesiredDeployment]:
    desired = root.declare(
        configuration("conf-a", replicas=str(replicas)), deployment("webapp", "conf-a")
    )
    return desired, desired.deployments[0]


def sick(d: DesiredDeployment, index: int = 0, detail: str = TIMED_OUT) -> Replica:
    return replica(d, index=index, health=HEALTH_UNREADY, health_detail=detail)


def well(d: DesiredDeployment, index: int = 0) -> Replica:
    return replica(d, index=index, health=HEALTH_READY)


def status_of(
    desired: DesiredState, rec: Record, *containers: Replica, api_url: str | None = None
) -> dict[str, Any]:
    snapshot = Snapshot(INSTANCE, {rec.id: rec})
    observed = Observed(tuple(containers), {IMAGE: IMAGE_ID})
    (out,) = deployment_statuses(snapshot, desired, observed, api_url=api_url)
    return out


# -- status -------------------------------------------------------------------------------------


def test_a_running_deployment_whose_only_replica_is_unready_is_reported_pending(root):
    desired, d = web(root)
    rec = record(d, status_message="started")
    c = sick(d)
    out = status_of(desired, rec, c)
    assert out["status"] == "PENDING"
    assert out["statusMessage"] == f"no replica ready: {TIMED_OUT}"
    assert out["deploymentUrl"] is None  # not serving: no direct address to give
    assert out["details"]["replicas"] == [
        {
            "name": c.name,
            "replica": 0,
            "state": "running",
            "ready": False,
            "serving": False,
            "health": "unready",
            "message": TIMED_OUT,
        }
    ]
    # the AI Core fields the manifests declare are still there beside the replicas
    assert out["details"]["scaling"]["backendDetails"]["predictor"]["minReplicas"] == 1
    assert rec.status == "RUNNING"  # a read: the record is what it was


def test_one_ready_replica_keeps_it_running_and_details_name_the_sick_one(root):
    desired, d = web(root, replicas=2)
    good, bad = well(d, 0), sick(d, 1)
    out = status_of(desired, record(d), bad, good)
    assert out["status"] == "RUNNING"
    assert out["deploymentUrl"] == f"http://{published_endpoint(good, '127.0.0.1')}"
    by_name = {r["name"]: r for r in out["details"]["replicas"]}
    assert [r["replica"] for r in out["details"]["replicas"]] == [0, 1]
    assert by_name[good.name] | {"name": ""} == {
        "name": "",
        "replica": 0,
        "state": "running",
        "ready": True,
        "serving": True,
        "health": "ready",
        "message": "",
    }
    assert by_name[bad.name]["ready"] is False and by_name[bad.name]["message"] == TIMED_OUT


def test_replicas_without_a_health_check_are_ready_as_before(root):
    desired, d = web(root)
    c = replica(d)  # health "": made before health checks
    out = status_of(desired, record(d, status_message="started"), c)
    assert (out["status"], out["statusMessage"]) == ("RUNNING", "started")
    (detail,) = out["details"]["replicas"]
    assert detail["ready"] is True and detail["health"] == "" and detail["message"] == ""


def test_it_is_running_again_as_soon_as_a_replica_answers(root):
    desired, d = web(root)
    rec = record(d)
    c = sick(d)
    assert status_of(desired, rec, c)["status"] == "PENDING"
    healed = replica(d, id=c.id, name=c.name, health=HEALTH_READY, health_detail=TIMED_OUT)
    out = status_of(desired, rec, healed)
    assert out["status"] == "RUNNING"
    assert out["details"]["replicas"][0]["message"] == ""  # an old failure is not news


def test_stopped_containers_are_still_drift_not_health(root):
    desired, d = web(root)
    out = status_of(desired, record(d), replica(d, state="exited"))
    assert out["status"] == "PENDING"
    assert out["statusMessage"] == (
        "container exited with code 3 outside the reconciler; the next reconcile restores it"
    )
    assert out["details"]["replicas"][0]["message"] == "exited with code 3"


def test_starting_replicas_seen_answering_serve_and_ones_restarted_since_do_not(root):
    """Right after an update (or a scale-up) the reconciler has seen the new replicas answer
    and recorded them RUNNING, while the engine's own check may not have given its first
    verdict yet: they are taken at the reconciler's word, beside replicas that are ready. A
    replica restarted by its engine since (starting again) is passed over until its check
    passes."""
    desired, d = web(root, replicas=2)
    rec = record(d, ready_at=ago(seconds=1))  # recorded RUNNING once it saw them answer
    up_before = (NOW - timedelta(seconds=5)).timestamp()
    fresh = [replica(d, index=i, health=HEALTH_STARTING, started=up_before) for i in (0, 1)]
    assert routable(rec, fresh) == fresh
    assert status_of(desired, rec, *fresh)["status"] == "RUNNING"

    good = well(d, 1)
    assert routable(rec, [fresh[0], good]) == [fresh[0], good]  # a scale-up's new replica
    restarted = replica(d, index=0, health=HEALTH_STARTING, started=NOW.timestamp() + 10)
    assert routable(rec, [restarted, good]) == [good]
    assert routable(rec, [restarted]) == []

    # A record of before `readyAt`: its last change stands in for it.
    old = record(d, modified_at=ago(seconds=1))
    assert routable(old, fresh) == fresh

    # Replicas a scale-down retires are drained: not routed while they stop.
    draining = record(d, ready_at=ago(seconds=1), retiring=(good.id,))
    assert routable(draining, [fresh[0], good]) == [fresh[0]]

    # not RUNNING yet (the first start): starting is not ready
    pending = record(d, status="PENDING")
    assert routable(pending, fresh) == []
    assert status_of(desired, pending, *fresh)["status"] == "PENDING"


def test_a_recorded_update_routes_to_its_new_replicas_not_the_old_ones_still_draining(root):
    """Docker: the update is recorded RUNNING as soon as the reconciler saw the new replicas
    answer; the old ones, still ready, are retired a moment later. Requests go to the new ones
    even before the engine's own check has passed them (regression: the old ones got them, and
    502s when they stopped)."""
    _desired, d = web(root)
    rec = record(d, modified_at=ago(seconds=1))
    up_before = (NOW - timedelta(seconds=5)).timestamp()
    new = replica(d, health=HEALTH_STARTING, started=up_before)
    old = replica(d, health=HEALTH_READY, config_hash="old", fields={"env.X": "1"})
    assert routable(rec, [old, new]) == [new]


def test_the_new_configurations_ready_replicas_serve_once_the_engine_retired_the_old_ones(root):
    """Swarm replaces replicas itself: during its rolling update the recorded configuration's
    last replica may be gone before the pass records the new one."""
    _desired, d = web(root, replicas=2)
    rec = record(d, config_hash="old")
    new = [well(d, 0), replica(d, index=1, health=HEALTH_STARTING)]
    assert routable(rec, new) == [new[0]]
    old = replica(d, index=1, health=HEALTH_READY, config_hash="old")
    assert routable(rec, [new[0], old]) == [old]  # while one of the recorded runs: that one


def test_starting_and_unready_replicas_report_the_first_failure(root):
    desired, d = web(root, replicas=2)
    rec = record(d)
    out = status_of(desired, rec, sick(d, 0, detail=""), sick(d, 1))
    assert out["statusMessage"] == "no replica ready: replica 0 unready"


def test_old_replicas_during_an_update_are_listed_after_the_serving_ones(root):
    desired, d = web(root)
    rec = record(d)
    new = well(d)
    old = replica(d, config_hash="0" * 64, health=HEALTH_READY)
    out = status_of(desired, rec, old, new)
    assert [r["name"] for r in out["details"]["replicas"]] == [new.name, old.name]
    assert [r["serving"] for r in out["details"]["replicas"]] == [True, False]


# -- the gateway's routing table ----------------------------------------------------------------


class Observing(FakeBackend):
    """The fake engine, reporting exactly the replicas a test hands it."""

    def __init__(self, replicas: Iterable[Replica]) -> None:
        super().__init__()
        self.handed = tuple(replicas)

    def observe(self, instance: str, images: bool = True) -> Observed:
        return Observed(self.handed, {})


def routes_of(root: Root, rec: Record, *containers: Replica) -> Route:
    write_snapshot(root.path, Snapshot(INSTANCE, {rec.id: rec}))
    backend = Observing(containers)
    return build_routes(root.path, INSTANCE, backend, "127.0.0.1")[rec.id]


def test_only_ready_replicas_are_targets(root):
    _, d = web(root, replicas=3)
    good, bad, plain = well(d, 0), sick(d, 1), replica(d, index=2)
    route = routes_of(root, record(d), good, bad, plain)
    assert route.status == "RUNNING"
    assert route.targets == tuple(published_endpoint(c, "127.0.0.1") for c in (good, plain))


def test_with_no_ready_replica_the_route_says_why(root):
    _, d = web(root)
    route = routes_of(root, record(d), sick(d))
    assert (route.status, route.targets) == ("PENDING", ())
    assert route.message == f"no replica ready: {TIMED_OUT}"


def test_a_route_of_a_deployment_that_is_not_running_carries_its_status_message(root):
    _, d = web(root)
    rec = record(d, status="DEAD", status_message="model server exited with code 1")
    route = routes_of(root, rec)
    assert (route.status, route.message) == ("DEAD", "model server exited with code 1")


def test_the_routing_table_takes_a_replica_back_when_it_answers_again(root):
    _, d = web(root)
    rec = record(d)
    c = sick(d)
    assert routes_of(root, rec, c).targets == ()
    healed = replica(d, id=c.id, name=c.name, host_port=c.host_port, health=HEALTH_READY)
    assert routes_of(root, rec, healed).targets == (published_endpoint(c, "127.0.0.1"),)


def test_replicas_restarted_after_the_reconciler_saw_them_answer_do_not_count(root):
    """After an engine restart the containers come back `Up (health: starting)`: nobody has
    seen them answer since, so the deployment is not shown RUNNING (nor routed to) before
    the engine's check passes, however long its start period."""
    desired, d = web(root)
    rec = record(d, modified_at=ago(hours=1))
    restarted = replica(d, health=HEALTH_STARTING, started=(NOW - timedelta(seconds=3)).timestamp())
    assert routable(rec, [restarted]) == []
    out = status_of(desired, rec, restarted)
    assert out["status"] == "PENDING"
    assert out["statusMessage"] == "no replica ready: health check has not passed yet"
    # Unknown start (an engine that does not say): not taken at anyone's word either.
    assert routable(rec, [replace(restarted, started=None)]) == []
