"""The planner without a Docker engine: desired state from a real GitOps root, what runs built
by hand, every action and every lifecycle rule asserted on the plan as printed or as JSON.

These run with DOCKER_HOST pointing nowhere (no fixture here touches an engine).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from reconciler.backends.base import Replica
from reconciler.core.plan import Action, Change, Deadline, Plan, deadlines
from reconciler.core.record import Record, Snapshot, iso
from reconciler.errors import UserError
from reconciler.manifests.desired import DesiredDeployment, DesiredState
from reconciler.manifests.spec import UNSEALED
from tests.plan_support import (
    IMAGE,
    IMAGE_ID,
    INSTANCE,
    NOW,
    TEMPLATES,
    Root,
    ago,
    catalog,
    config_hash,
    configuration,
    deployment,
    lines,
    planned,
    record,
    replica,
)

OLD_IMAGE_ID = "sha256:" + "0" * 64
GIB = 1024**3


@pytest.fixture
def root(tmp_path: Path) -> Root:
    return Root(tmp_path / "repo")


def web(root: Root, *more: str, greeting: str = "hello", **kwargs: str) -> DesiredState:
    """One deployment `webapp` of configuration `conf-a` (plus `more` documents)."""
    params = {"greeting": greeting, **kwargs}
    return root.declare(configuration("conf-a", **params), deployment("webapp", "conf-a"), *more)


def only(desired: DesiredState, name: str = "webapp") -> DesiredDeployment:
    return next(d for d in desired.deployments if d.name == name)


def one(p: Plan) -> Change:
    assert len(p.changes) == 1, lines(p)
    return p.changes[0]


def summary_line(change: Change) -> tuple[str, str, str]:
    data = change.to_json()
    return data["action"], data["name"], data["cause"]


# -- create, nothing to do, settle ----------------------------------------------------------


def test_a_new_deployment_is_created_with_every_replica(root: Root):
    desired = web(root, replicas="2")
    d = only(desired)
    p = planned(desired)
    assert lines(p) == [f"+ webapp ({d.id}): new deployment"]
    assert p.summary() == "Plan: 1 to create."
    change = one(p).to_json()
    assert change["createReplicas"] == [0, 1]
    assert change["configurationId"] == "conf-a"
    assert change["configHash"] == config_hash(d) == p.hashes[d.id]
    assert (change["removeContainers"], change["failure"]) == ([], None)


def test_a_deployment_that_runs_as_recorded_needs_nothing(root: Root):
    desired = web(root)
    d = only(desired)
    p = planned(desired, replica(d), records=[record(d)])
    assert (p.changes, p.settle, p.warnings, p.problems) == ((), (), (), ())
    assert p.summary() == "Plan: no changes."
    assert not p.has_changes


def test_running_containers_never_seen_ready_only_settle(root: Root):
    desired = web(root)
    d = only(desired)
    c = replica(d)
    p = planned(desired, c)  # no record: a pass was interrupted before readiness
    assert p.changes == ()
    assert [(s.desired.id, s.containers, s.config_hash) for s in p.settle] == [
        (d.id, (c,), config_hash(d))
    ]


def test_a_record_of_an_older_hash_settles_too(root: Root):
    desired = web(root)
    d = only(desired)
    p = planned(desired, replica(d), records=[record(d, config_hash="old")])
    assert p.changes == () and len(p.settle) == 1


def test_the_serving_configuration_declared_again_after_a_failed_update_settles(root: Root):
    """An update failed while this configuration kept serving (the record names the failed
    one, with its failure); declaring this one again records it RUNNING afresh, replacing
    nothing, so that status no longer names the failed configuration."""
    desired = web(root)
    d = only(desired)
    failed = record(
        d,
        configuration_id="web-broken",
        status_message="update to configuration web-broken failed",
        failed_hash="f" * 64,
    )
    p = planned(desired, replica(d), records=[failed])
    assert p.changes == () and [s.desired.id for s in p.settle] == [d.id]


def test_resource_group_is_shown_unless_default(root: Root):
    desired = root.declare(
        configuration("conf-a", group="team-a"), deployment("webapp", "conf-a", group="team-a")
    )
    d = only(desired)
    assert lines(planned(desired)) == [f"+ webapp [team-a] ({d.id}): new deployment"]
    assert one(planned(desired)).to_json()["resourceGroup"] == "team-a"


def test_plan_json_has_the_format_version_revision_and_changes(root: Root):
    desired = web(root)
    p = planned(desired)
    data = Plan(p.changes, p.problems, ("a warning",), p.settle, p.hashes, "abc123").to_json()
    assert data["formatVersion"] == 1 and data["revision"] == "abc123"
    assert data["warnings"] == ["a warning"] and data["errors"] == []
    assert [c["symbol"] for c in data["changes"]] == ["+"]


# -- update in place --------------------------------------------------------------------------


def test_changed_resources_update_in_place(root: Root):
    desired = web(root)
    d = only(desired)
    old = replica(d, resources={"cpus": 3.0, "memory": 11 * GIB, "restartPolicy": "always"})
    change = one(planned(desired, old, records=[record(d)]))
    assert change.describe() == (
        f"~ webapp ({d.id}): resources changed: cpus 3.0 → 1.0, memory 11Gi → 3Gi, "
        "restartPolicy always → unless-stopped"
    )
    assert change.update == (old,) and change.create == () and change.retire == ()
    assert change.to_json()["updateContainers"] == [old.name]


def test_resources_applied_in_place_earlier_are_not_applied_again(root: Root):
    desired = web(root)
    d = only(desired)
    old = replica(d, resources={"cpus": 3.0, "memory": 11 * GIB, "restartPolicy": "always"})
    applied = record(d, updated_resources={old.id: d.spec.resources()})
    assert planned(desired, old, records=[applied]).changes == ()


def test_more_replicas_create_the_missing_ones(root: Root):
    desired = web(root, replicas="3")
    d = only(desired)
    first = replica(d, index=0)
    change = one(planned(desired, first, records=[record(d, replicas=1)]))
    assert change.describe() == f"~ webapp ({d.id}): replicas 1 → 3"
    assert change.create == (1, 2) and change.retire == ()


def test_fewer_replicas_retire_the_extra_ones(root: Root):
    desired = web(root, replicas="1")
    d = only(desired)
    keep, extra = replica(d, index=0), replica(d, index=1)
    change = one(planned(desired, keep, extra, records=[record(d, replicas=2)]))
    assert summary_line(change) == ("update", "webapp", "replicas 2 → 1")
    assert change.retire == (extra,) and change.create == ()


def test_replica_count_change_without_record_counts_containers(root: Root):
    desired = web(root, replicas="1")
    d = only(desired)
    change = one(planned(desired, replica(d, index=0), replica(d, index=1)))
    assert change.cause == "replicas 2 → 1"


def test_a_duplicate_replica_is_removed_and_recreated(root: Root):
    desired = web(root)
    d = only(desired)
    newer, older = replica(d, created=2_000_000_001), replica(d, created=2_000_000_000)
    change = one(planned(desired, older, newer, records=[record(d)]))
    # The newest one is kept; the duplicate is removed first; nothing to create.
    assert change.action == Action.UPDATE and change.remove_first == (older,)
    assert change.create == ()
    assert change.cause == "extra container of replica 0 (running)"


def test_one_stopped_replica_of_two_is_restored_in_place(root: Root):
    desired = web(root, replicas="2")
    d = only(desired)
    up, down = replica(d, index=0), replica(d, index=1, state="exited")
    change = one(planned(desired, up, down, records=[record(d)]))
    assert change.describe() == f"~ webapp ({d.id}): replica 1 missing or not running"
    assert (change.create, change.remove_first, change.restore) == ((1,), (down,), 1)


def test_left_over_containers_of_an_older_configuration_are_removed(root: Root):
    old_d = only(web(root, greeting="hello"))
    desired = web(root, greeting="hi")
    d = only(desired)
    change = one(planned(desired, replica(d), replica(old_d), records=[record(d)]))
    assert change.cause == "1 container(s) of an older configuration left over"
    assert change.action == Action.UPDATE and len(change.retire) == 1


# -- replace --------------------------------------------------------------------------------


def test_a_config_change_replaces_naming_the_field(root: Root):
    old = replica(only(web(root, greeting="hello")))
    desired = web(root, greeting="bonjour")
    d = only(desired)
    change = one(planned(desired, old, records=[record(d, config_hash=old.config_hash)]))
    assert change.describe() == f"-/+ webapp ({d.id}): config changed: env.GREETING"
    assert change.fields == ("env.GREETING",)
    assert change.retire == (old,) and change.create == (0,)
    assert change.to_json()["removeContainers"] == [old.name]
    assert planned(desired, old).summary() == "Plan: 1 to replace."


def test_a_new_configuration_is_named_in_the_cause(root: Root):
    old_d = only(web(root))
    old = replica(old_d)
    desired = root.declare(configuration("conf-b", greeting="hi"), deployment("webapp", "conf-b"))
    change = one(planned(desired, old, records=[record(old_d)]))
    assert change.cause == "config changed: env.GREETING (configuration conf-a → conf-b)"


def test_a_rebuilt_image_replaces(root: Root):
    desired = web(root)
    d = only(desired)
    old = replica(d, image_id=OLD_IMAGE_ID)
    change = one(planned(desired, old, records=[record(d)]))
    assert change.describe() == f"-/+ webapp ({d.id}): image {IMAGE} was rebuilt (new content)"
    assert change.image_id == IMAGE_ID


def test_an_image_missing_from_the_host_is_no_reason_to_replace(root: Root):
    desired = web(root)
    d = only(desired)
    # Image not on the host: its content cannot be compared; the same fields are the same spec.
    p = planned(desired, replica(d, image_id=OLD_IMAGE_ID), records=[record(d)], images={})
    assert p.changes == ()


def before_health_checks(r: Replica) -> Replica:
    """`r` as a release before continuous health checks made it: no "health" identity field,
    and so another config hash."""
    fields = {k: v for k, v in r.fields.items() if k != "health"}
    return replace(r, fields=fields, config_hash="0" * 64)


def test_a_container_from_before_health_checks_is_not_replaced_by_an_upgrade(root: Root):
    desired = web(root)
    d = only(desired)
    old = before_health_checks(replica(d))
    assert "health" in replica(d).fields  # what a container made now carries
    p = planned(desired, old, records=[record(d, config_hash=old.config_hash)])
    assert p.changes == ()


def test_a_container_from_before_health_checks_is_replaced_by_a_real_change(root: Root):
    old = before_health_checks(replica(only(web(root, greeting="hello"))))
    desired = web(root, greeting="bonjour")
    change = one(planned(desired, old, records=[record(only(desired))]))
    # The new container gets a health check, but the cause names what the user changed.
    assert change.action == Action.REPLACE and change.fields == ("env.GREETING",)
    rebuilt = before_health_checks(replica(only(desired), image_id=OLD_IMAGE_ID))
    change = one(planned(desired, rebuilt, records=[record(only(desired))]))
    assert change.cause == f"image {IMAGE} was rebuilt (new content)"


def llm(root: Root, version: str | None = None, latest: str = "1.1", **kw: str) -> DesiredState:
    pinned = {"modelVersion": version} if version else {}
    return root.declare(
        configuration(
            "llm-conf", "llm-serving", "foundation-models", modelName="tiny-llm", **pinned
        ),
        deployment("chatbot", "llm-conf"),
        models=catalog(latest=latest, **kw),
    )


def test_a_new_model_version_replaces(root: Root):
    old = replica(only(llm(root, version="1.0"), "chatbot"))
    desired = llm(root, version="1.1")
    d = only(desired, "chatbot")
    change = one(planned(desired, old, records=[record(d)]))
    assert change.describe() == f"-/+ chatbot ({d.id}): model version 1.0 → 1.1"
    assert change.fields == ("env.MODEL", "env.WEIGHTS")


def test_latest_moving_replaces_a_deployment_that_follows_it(root: Root):
    old = replica(only(llm(root, latest="1.0"), "chatbot"))
    desired = llm(root, latest="1.1")
    d = only(desired, "chatbot")
    change = one(planned(desired, old, records=[record(d)]))
    assert change.describe() == f"-/+ chatbot ({d.id}): latest moved: 1.0 → 1.1"


def test_a_pinned_deployment_does_not_move_with_latest(root: Root):
    c = replica(only(llm(root, version="1.0", latest="1.0"), "chatbot"))
    desired = llm(root, version="1.0", latest="1.1")
    assert planned(desired, c, records=[record(only(desired, "chatbot"))]).changes == ()


def test_a_container_that_exited_is_replaced_as_drift(root: Root):
    desired = web(root)
    d = only(desired)
    dead = replica(d, state="exited", exit_code=3)
    change = one(planned(desired, dead, records=[record(d)]))
    assert change.describe() == (
        f"-/+ webapp ({d.id}): container exited with code 3 outside the reconciler"
    )
    assert (change.remove_first, change.create, change.restore) == ((dead,), (0,), 1)


def test_a_container_never_started_before_a_record_is_not_drift(root: Root):
    desired = web(root)
    d = only(desired)
    change = one(planned(desired, replica(d, state="created")))
    assert change.cause == "container created but never started"
    assert change.restore == 0


@pytest.mark.parametrize("status", ["RUNNING", "PENDING"])
def test_a_container_removed_by_hand_is_recreated(root: Root, status: str):
    desired = web(root)
    d = only(desired)
    change = one(planned(desired, records=[record(d, status=status)]))
    assert change.describe() == f"+ webapp ({d.id}): container removed outside the reconciler"
    assert change.restore == 1


@pytest.mark.parametrize("status", ["UNKNOWN", "STOPPING"])
def test_no_container_of_a_deployment_not_meant_to_run_is_no_drift(root: Root, status: str):
    desired = web(root)
    change = one(planned(desired, records=[record(only(desired), status=status)]))
    assert (change.cause, change.restore) == ("new deployment", 0)


# -- stop and delete ------------------------------------------------------------------------


def test_target_status_stopped_stops(root: Root):
    d = only(web(root))
    c = replica(d)
    desired = root.declare(configuration("conf-a"), deployment("webapp", "conf-a", "STOPPED"))
    change = one(planned(desired, c, records=[record(d)]))
    assert change.describe() == f"- webapp ({d.id}): targetStatus STOPPED"
    assert change.action == Action.STOP and change.retire == (c,)
    assert planned(desired, c, records=[record(d)]).summary() == "Plan: 1 to stop."


@pytest.mark.parametrize("status", ["PENDING", "RUNNING", "STOPPING"])
def test_target_status_stopped_stops_an_active_record_without_containers(root: Root, status: str):
    desired = root.declare(configuration("conf-a"), deployment("webapp", "conf-a", "STOPPED"))
    d = only(desired)
    assert summary_line(one(planned(desired, records=[record(d, status=status)]))) == (
        "stop",
        "webapp",
        "targetStatus STOPPED",
    )


@pytest.mark.parametrize("status", [None, "STOPPED", "DEAD", "UNKNOWN"])
def test_target_status_stopped_with_nothing_running_is_no_change(root: Root, status: str | None):
    desired = root.declare(configuration("conf-a"), deployment("webapp", "conf-a", "STOPPED"))
    records = [record(only(desired), status=status)] if status else []
    p = planned(desired, records=records)
    assert (p.changes, p.problems, p.settle) == ((), (), ())


def test_a_deployment_removed_from_the_manifests_is_deleted(root: Root):
    gone = only(web(root))
    c = replica(gone)
    desired = root.declare(configuration("conf-b"), deployment("other", "conf-b"))
    p = planned(desired, c, replica(only(desired, "other")), records=[record(gone)])
    assert lines(p) == [f"- webapp ({gone.id}): removed from manifests"]
    assert one(p).retire == (c,) and one(p).desired is None
    assert p.summary() == "Plan: 1 to delete."


def test_an_unrecorded_container_of_no_deployment_is_deleted_by_its_labels(root: Root):
    gone = only(
        root.declare(
            configuration("conf-a", group="team-a"), deployment("webapp", "conf-a", group="team-a")
        )
    )
    desired = root.declare(configuration("conf-b"), deployment("other", "conf-b"))
    p = planned(desired, replica(gone), replica(only(desired, "other")))
    assert lines(p) == [f"- webapp [team-a] ({gone.id}): removed from manifests"]


def test_a_record_without_containers_is_cleared(root: Root):
    gone = only(web(root))
    desired = root.declare(configuration("conf-b"), deployment("other", "conf-b"))
    other = only(desired, "other")
    p = planned(desired, replica(other), records=[record(gone, status="STOPPED"), record(other)])
    assert lines(p) == [f"- webapp ({gone.id}): removed from manifests"]
    assert one(p).retire == ()


def test_an_empty_desired_set_that_would_delete_running_ones_is_refused(root: Root):
    gone = only(web(root))
    desired = root.declare()
    with pytest.raises(UserError) as exc:
        planned(desired, replica(gone), records=[record(gone)])
    assert str(exc.value) == (
        "the manifests declare no deployment at all, which would delete all 1 running ones: "
        "refusing. If that is what you want, pass --allow-empty"
    )
    p = planned(desired, replica(gone), records=[record(gone)], allow_empty=True)
    assert lines(p) == [f"- webapp ({gone.id}): removed from manifests"]


def test_an_empty_desired_set_clears_records_of_deployments_that_run_nothing(root: Root):
    gone = only(web(root))
    p = planned(root.declare(), records=[record(gone, status="DEAD")])
    assert summary_line(one(p)) == ("delete", "webapp", "removed from manifests")


def test_containers_of_another_gitops_root_on_the_instance_are_refused(root: Root):
    desired = web(root)
    stranger = replica(only(desired), root="/elsewhere/repo")
    with pytest.raises(UserError) as exc:
        planned(desired, stranger)
    assert str(exc.value) == (
        f"instance {INSTANCE!r} is also used by the GitOps root /elsewhere/repo (container "
        f"{stranger.name}): give one of the roots another spec.instance in its Settings"
    )


def test_containers_of_this_root_are_not_foreign(root: Root):
    desired = web(root)
    mine = replica(only(desired), root=str(desired.repo.root))
    assert planned(desired, mine, records=[record(only(desired))]).changes == ()


# -- ttl --------------------------------------------------------------------------------------


def ttl_web(root: Root, ttl: str = "10m") -> DesiredState:
    return root.declare(configuration("conf-a"), deployment("webapp", "conf-a", ttl=ttl))


def test_an_expired_ttl_deletes_for_good(root: Root):
    desired = ttl_web(root)
    d = only(desired)
    c = replica(d)
    change = one(planned(desired, c, records=[record(d, created_at=ago(minutes=10))]))
    assert change.describe() == f"- webapp ({d.id}): ttl 10m expired"
    assert (change.action, change.expire, change.retire, change.note) == (
        Action.DELETE,
        True,
        (c,),
        None,
    )


def test_a_ttl_not_yet_expired_changes_nothing(root: Root):
    desired = ttl_web(root)
    d = only(desired)
    rec = record(d, created_at=ago(minutes=9, seconds=59))
    assert planned(desired, replica(d), records=[rec]).changes == ()


def test_ttl_counts_from_creation_in_days(root: Root):
    desired = ttl_web(root, "2d")
    d = only(desired)
    assert planned(desired, replica(d), records=[record(d, created_at=ago(days=1))]).changes == ()
    change = one(planned(desired, replica(d), records=[record(d, created_at=ago(days=2))]))
    assert change.cause == "ttl 2d expired"


def test_a_deployment_deleted_by_its_ttl_is_not_recreated(root: Root):
    desired = ttl_web(root)
    d = only(desired)
    tombstone = record(d, expired=True, status="STOPPED", status_message="deleted: ttl 10m expired")
    p = planned(desired, records=[tombstone])
    assert p.changes == ()
    assert p.warnings == (
        "webapp: deleted when its ttl (10m) expired; remove it from the manifests or deploy it "
        "under a new name",
    )


def test_containers_left_by_an_expired_deployment_are_deleted(root: Root):
    desired = ttl_web(root)
    d = only(desired)
    tombstone = record(d, expired=True, status="STOPPED", status_message="deleted: ttl 10m expired")
    c = replica(d)
    p = planned(desired, c, records=[tombstone])
    change = one(p)
    assert (change.describe(), change.retire, change.expire, change.note) == (
        f"- webapp ({d.id}): ttl expired",
        (c,),
        True,
        "deleted: ttl 10m expired",
    )
    assert len(p.warnings) == 1


# -- DEAD -----------------------------------------------------------------------------------


def dead(d: DesiredDeployment, days: float, **fields: object) -> Record:
    """`d` as recorded DEAD `days` ago, its configuration failed."""
    values: dict[str, object] = {
        "status": "DEAD",
        "status_message": "container exited with code 3",
        "dead_since": ago(days=days),
        "completion_time": ago(days=days),
        "failed_hash": config_hash(d),
    }
    return record(d, **{**values, **fields})


def test_a_deployment_dead_for_seven_days_is_deleted_with_a_tombstone(root: Root):
    desired = web(root)
    d = only(desired)
    since = ago(days=7)
    change = one(planned(desired, records=[dead(d, 7)]))
    assert change.describe() == f"- webapp ({d.id}): DEAD since {since}, more than 7 days"
    assert change.expire and change.note == f"deleted: DEAD since {since}, more than 7 days"


def test_a_deployment_dead_for_less_than_seven_days_stays(root: Root):
    desired = web(root)
    d = only(desired)
    p = planned(desired, records=[dead(d, 6.9)])
    assert p.changes == ()
    assert p.warnings == (
        "webapp is DEAD (container exited with code 3); it is not retried until its "
        "configuration or image changes",
    )


def test_a_dead_tombstone_warns_and_removes_left_overs(root: Root):
    desired = web(root)
    d = only(desired)
    tombstone = dead(d, 9, expired=True)
    warning = (
        "webapp: deleted after 7 days DEAD; remove it from the manifests or deploy it under a "
        "new name"
    )
    assert planned(desired, records=[tombstone]).warnings == (warning,)
    p = planned(desired, replica(d, state="exited"), records=[tombstone])
    assert summary_line(one(p)) == ("delete", "webapp", "DEAD retention expired")
    assert p.warnings == (warning,)


def test_a_dead_deployment_gets_a_new_configuration_within_seven_days(root: Root):
    old = only(web(root))
    desired = root.declare(configuration("conf-b", greeting="hi"), deployment("webapp", "conf-b"))
    d = only(desired)
    change = one(planned(desired, records=[dead(old, 6)]))
    assert change.describe() == f"+ webapp ({d.id}): new configuration conf-b for a DEAD deployment"
    assert change.restore == 0  # a new configuration, not a drift restore


def test_a_dead_deployment_is_refused_a_new_configuration_after_seven_days(root: Root):
    old = only(web(root))
    desired = root.declare(configuration("conf-b", greeting="hi"), deployment("webapp", "conf-b"))
    rec = dead(old, 8)
    p = planned(desired, records=[rec])
    assert p.changes == ()
    assert [(e.pointer, e.message) for e in p.problems] == [
        (
            "/spec/configurationId",
            f"deployment webapp has been DEAD since {rec.dead_since}; a DEAD deployment can get "
            "a new configuration within 7 days only: create a new deployment",
        )
    ]
    assert p.to_json()["errors"][0]["file"].endswith("app.yaml")


def test_a_dead_deployment_is_retried_once_its_image_changes(root: Root):
    desired = web(root)
    d = only(desired)
    rec = dead(d, 1, failed_hash=config_hash(d, OLD_IMAGE_ID))
    change = one(planned(desired, records=[rec]))
    assert change.cause == "new configuration conf-a for a DEAD deployment"


def test_a_dead_deployments_stale_containers_are_cleaned_up(root: Root):
    old = replica(only(web(root, greeting="hello")), state="exited")
    desired = web(root, greeting="hi")
    d = only(desired)
    p = planned(desired, old, records=[dead(d, 1)])
    change = one(p)
    assert change.describe() == f"- webapp ({d.id}): leftover of a DEAD deployment"
    assert change.retire == (old,)
    assert p.warnings[0].startswith("webapp is DEAD (container exited with code 3)")


# -- the failed-hash rule ---------------------------------------------------------------------


def test_a_failed_update_is_not_retried_and_the_old_configuration_keeps_serving(root: Root):
    old = replica(only(web(root)))
    desired = root.declare(configuration("conf-b", greeting="hi"), deployment("webapp", "conf-b"))
    d = only(desired)
    rec = record(
        d,
        configuration_id="conf-b",
        latest_running_configuration_id="conf-a",
        failed_hash=config_hash(d),
        status_message="update failed: not ready within 300 s",
        config_hash=old.config_hash,
    )
    p = planned(desired, old, records=[rec])
    assert p.changes == () and p.settle == ()
    assert p.warnings == (
        "webapp: the update to configuration conf-b failed (update failed: not ready within "
        "300 s); conf-a keeps serving. Change the configuration or image to retry",
    )


def test_a_failed_update_is_retried_after_a_new_change(root: Root):
    old = replica(only(web(root)))
    failed = only(web(root, greeting="hi"))
    desired = web(root, greeting="hola")
    rec = record(failed, failed_hash=config_hash(failed), config_hash=old.config_hash)
    change = one(planned(desired, old, records=[rec]))
    assert (change.action, change.cause) == (Action.REPLACE, "config changed: env.GREETING")


def test_a_failed_update_whose_old_containers_died_is_replaced(root: Root):
    old = replica(only(web(root)), state="exited")
    desired = web(root, greeting="hi")
    d = only(desired)
    rec = record(d, failed_hash=config_hash(d), config_hash=old.config_hash)
    # Nothing alive keeps serving: the rule that holds the update back no longer applies.
    assert one(planned(desired, old, records=[rec])).action == Action.REPLACE


# -- crash loops and restore backoff ------------------------------------------------------------


def test_docker_restarting_a_container_too_often_is_a_crash_loop(root: Root):
    desired = web(root)
    d = only(desired)
    looping = replica(d, state="restarting", restarts=5, exit_code=2)
    change = one(planned(desired, looping, records=[record(d)]))
    assert (
        change.describe() == f"-/+ webapp ({d.id}): container crash-looping (5 restarts by Docker)"
    )
    assert change.failure == (
        "crash loop: container exited with code 2 and was restarted 5 times by Docker; not "
        "retried until its configuration or image changes"
    )
    assert change.remove_first == (looping,)


def test_docker_restarting_a_few_times_is_left_to_docker(root: Root):
    desired = web(root)
    d = only(desired)
    restarting = replica(d, state="restarting", restarts=4, exit_code=2)
    assert planned(desired, restarting, records=[record(d)]).changes == ()


def test_docker_restarts_of_a_deployment_not_running_are_not_a_crash_loop(root: Root):
    desired = web(root)
    d = only(desired)
    looping = replica(d, state="restarting", restarts=9, exit_code=2)
    assert planned(desired, looping).changes == ()  # no record: never came up


def restoring(d: DesiredDeployment, restores: int, last: float) -> Record:
    return record(d, restores=restores, last_restore=ago(seconds=last))


def test_restores_back_off_exponentially(root: Root):
    desired = web(root)
    d = only(desired)
    exited = replica(d, state="exited")
    # Restore 3 is due 2 s after restore 2.
    p = planned(desired, exited, records=[restoring(d, 2, last=1)])
    due = NOW + timedelta(seconds=1)
    assert p.changes == ()
    assert p.warnings == (
        f"webapp: container exited with code 3 outside the reconciler; restore 3 backs off "
        f"until {iso(due)}",
    )
    assert p.waits == (Deadline(due, "restore 3 of webapp"),)
    change = one(planned(desired, exited, records=[restoring(d, 2, last=2)]))
    assert (change.action, change.restore) == (Action.REPLACE, 3)


def test_the_restore_backoff_is_capped_at_a_minute(root: Root):
    desired = web(root)
    d = only(desired)
    # A removed container (not a crash loop) keeps being restored, at most a minute apart.
    p = planned(desired, records=[restoring(d, 9, last=59)])
    assert p.waits == (Deadline(NOW + timedelta(seconds=1), "restore 10 of webapp"),)
    assert one(planned(desired, records=[restoring(d, 9, last=60)])).restore == 10


def test_restores_count_from_zero_after_ten_quiet_minutes(root: Root):
    desired = web(root)
    d = only(desired)
    change = one(planned(desired, replica(d, state="exited"), records=[restoring(d, 4, 600)]))
    assert change.restore == 1 and change.failure is None


def test_a_container_exiting_after_four_restores_is_a_crash_loop(root: Root):
    desired = web(root)
    d = only(desired)
    change = one(planned(desired, replica(d, state="exited"), records=[restoring(d, 4, 599)]))
    assert change.restore == 5
    assert change.failure == (
        "crash loop: container exited with code 3 outside the reconciler after 4 restores "
        "within 10 minutes; not retried until its configuration or image changes"
    )


def test_a_removed_container_is_never_a_crash_loop(root: Root):
    desired = web(root)
    d = only(desired)
    change = one(planned(desired, records=[restoring(d, 4, 30)]))
    assert (change.action, change.restore, change.failure) == (Action.CREATE, 5, None)


# -- STOPPED is final; executable and scenario are kept ------------------------------------------


def test_a_stopped_deployment_cannot_be_restarted(root: Root):
    desired = web(root)
    d = only(desired)
    p = planned(desired, records=[record(d, status="STOPPED")])
    assert p.changes == ()
    assert [(e.pointer, e.message) for e in p.problems] == [
        (
            "/spec/targetStatus",
            "deployment webapp is STOPPED and cannot be restarted (AI Core rule): deploy the "
            "configuration under a new deployment name",
        )
    ]
    errors = p.to_json()["errors"]
    assert errors[0]["line"] is not None and errors[0]["file"].endswith("app.yaml")


def test_a_deployment_declared_stopped_and_never_started_may_start(root: Root):
    desired = web(root)
    d = only(desired)
    p = planned(desired, records=[record(d, status="STOPPED", start_time=None)])
    assert p.problems == ()
    assert summary_line(one(p)) == ("create", "webapp", "new deployment")


def test_a_new_configuration_must_keep_the_executable_and_scenario(root: Root):
    old = only(web(root))
    desired = root.declare(
        configuration("conf-b", "other-serving", "other"), deployment("webapp", "conf-b")
    )
    p = planned(desired, replica(old), records=[record(old)])
    assert p.changes == ()
    assert [(e.pointer, e.message) for e in p.problems] == [
        (
            "/spec/configurationId",
            "deployment webapp runs executable echo-serving of scenario echo; configuration "
            "conf-b uses executable other-serving of scenario other. A new configuration must "
            "keep both: create a new deployment instead",
        )
    ]


def test_a_new_configuration_of_the_same_executable_is_an_update(root: Root):
    old = only(web(root))
    desired = root.declare(configuration("conf-b", greeting="hi"), deployment("webapp", "conf-b"))
    p = planned(desired, replica(old), records=[record(old)])
    assert p.problems == () and one(p).action == Action.REPLACE


# -- model retirement -----------------------------------------------------------------------


def retiring(root: Root, day: str, target: str | None = None) -> DesiredState:
    return root.declare(
        configuration(
            "llm-conf", "llm-serving", "foundation-models", modelName="tiny-llm", modelVersion="1.0"
        ),
        deployment("chatbot", "llm-conf", target),
        models=catalog(retire_10=day),
    )


def test_a_retired_model_version_is_stopped_with_the_reason(root: Root):
    desired = retiring(root, "2030-06-15")
    d = only(desired, "chatbot")
    c = replica(d)
    change = one(planned(desired, c, records=[record(d)]))
    assert change.describe() == f"- chatbot ({d.id}): model tiny-llm:1.0 retired on 2030-06-15"
    assert (change.action, change.retire) == (Action.STOP, (c,))
    assert change.note == (
        "stopped: model tiny-llm:1.0 retired on 2030-06-15; suggested replacement: 1.1"
    )


def test_a_retired_model_version_stays_stopped_with_a_warning(root: Root):
    desired = retiring(root, "2030-06-01")
    d = only(desired, "chatbot")
    p = planned(desired, records=[record(d, status="STOPPED")])
    assert p.changes == () and p.problems == ()  # not the STOPPED-is-final error
    assert p.warnings == (
        "chatbot: stopped: model tiny-llm:1.0 retired on 2030-06-01; suggested replacement: 1.1; "
        "deploy a configuration of a supported version under a new deployment",
    )


def test_a_model_version_retiring_soon_is_a_warning(root: Root):
    desired = retiring(root, "2030-06-25")
    d = only(desired, "chatbot")
    p = planned(desired, replica(d), records=[record(d)])
    assert p.changes == ()
    assert p.warnings == (
        "chatbot: model tiny-llm:1.0 retires on 2030-06-25 (in 10 days); suggested "
        "replacement: 1.1",
    )


def test_a_stopped_deployment_of_a_retired_version_is_left_alone(root: Root):
    desired = retiring(root, "2030-06-01", target="STOPPED")
    p = planned(desired)
    assert (p.changes, p.warnings) == ((), ())


# -- GPUs -----------------------------------------------------------------------------------


def gpu_web(root: Root, *names: str, gpus: tuple[str, ...] = ("0", "1")) -> DesiredState:
    docs = [configuration("gpu-conf", plan="infer.s")]
    docs += [deployment(n, "gpu-conf") for n in names]
    return root.declare(*docs, gpus=gpus)


def test_every_new_gpu_container_gets_its_own_gpu(root: Root):
    p = planned(gpu_web(root, "gpu-a", "gpu-b"))
    assert [(c.name, c.gpus, c.stop_first) for c in p.changes] == [
        ("gpu-a", ("0",), False),
        ("gpu-b", ("1",), False),
    ]
    assert [c["gpus"] for c in p.to_json()["changes"]] == [["0"], ["1"]]


def test_gpus_held_by_running_containers_stay_theirs(root: Root):
    desired = gpu_web(root, "gpu-a", "gpu-b")
    a = only(desired, "gpu-a")
    p = planned(desired, replica(a, gpus=("0",)), records=[record(a)])
    assert [(c.name, c.gpus) for c in p.changes] == [("gpu-b", ("1",))]


def test_a_gpu_replacement_with_no_free_gpu_stops_first(root: Root):
    old = replica(only(gpu_web(root, "gpu-a", gpus=("0",)), "gpu-a"), gpus=("0",))
    desired = root.declare(
        configuration("gpu-conf", plan="infer.s", greeting="hi"),
        deployment("gpu-a", "gpu-conf"),
        gpus=("0",),
    )
    change = one(planned(desired, old, records=[record(only(desired, "gpu-a"))]))
    assert (change.action, change.gpus, change.stop_first) == (Action.REPLACE, ("0",), True)


def test_a_gpu_replacement_with_a_free_gpu_starts_first(root: Root):
    old = replica(only(gpu_web(root, "gpu-a"), "gpu-a"), gpus=("0",))
    desired = root.declare(
        configuration("gpu-conf", plan="infer.s", greeting="hi"),
        deployment("gpu-a", "gpu-conf"),
        gpus=("0", "1"),
    )
    change = one(planned(desired, old))
    assert (change.gpus, change.stop_first) == (("1",), False)


def test_not_enough_gpus_fails_the_change_with_the_reason(root: Root):
    desired = gpu_web(root, "gpu-a", "gpu-b", gpus=("0",))
    a = only(desired, "gpu-a")
    p = planned(desired, replica(a, gpus=("0",)), records=[record(a)])
    change = one(p)
    assert (change.name, change.gpus) == ("gpu-b", ())
    assert change.failure == "not enough free GPUs: needs 1, 0 of the inventory (0) free"
    assert p.to_json()["changes"][0]["failure"] == change.failure


def test_without_a_gpu_inventory_no_gpus_are_assigned(root: Root):
    p = planned(gpu_web(root, "gpu-a", gpus=()))
    assert one(p).gpus == () and one(p).failure is None


# -- hash formats ---------------------------------------------------------------------------


def test_a_container_labelled_unsealed_by_an_earlier_release_is_kept(root: Root):
    # A secret value in the environment: sealed hashes differ from the unsealed ones.
    root.templates = TEMPLATES.replace(
        'GREETING: "{{ inputs.parameters.greeting }}"',
        'GREETING: "{{ inputs.parameters.greeting }}"\n      API_TOKEN: "tok-123456"',
    )
    desired = web(root)
    d = only(desired)
    assert d.spec.has_secrets
    old = replica(d, hashing=UNSEALED)
    assert old.config_hash != config_hash(d)
    p = planned(desired, old, records=[record(d, config_hash=old.config_hash)])
    assert (p.changes, p.settle) == ((), ())
    assert p.hashes[d.id] == old.config_hash  # the hash those labels hold, not a new one
    # Without that container, the sealed format is planned.
    assert planned(desired).hashes[d.id] == config_hash(d)


# -- deadlines --------------------------------------------------------------------------------


def test_deadlines_name_ttl_dead_retention_and_retirement(root: Root):
    desired = root.declare(
        configuration("conf-a"),
        deployment("ttl-app", "conf-a", ttl="2h"),
        deployment("dead-app", "conf-a"),
        configuration(
            "llm-conf", "llm-serving", "foundation-models", modelName="tiny-llm", modelVersion="1.0"
        ),
        deployment("chatbot", "llm-conf"),
        models=catalog(retire_10="2030-07-01"),
    )
    ttl_d, dead_d = only(desired, "ttl-app"), only(desired, "dead-app")
    snapshot = Snapshot(
        INSTANCE,
        {
            ttl_d.id: record(ttl_d, created_at=ago(hours=1)),
            dead_d.id: record(dead_d, status="DEAD", dead_since=ago(days=1)),
        },
    )
    assert sorted(deadlines(desired, snapshot)) == [
        Deadline(NOW + timedelta(hours=1), "ttl 2h of ttl-app expires"),
        Deadline(NOW + timedelta(days=6), "dead-app DEAD for 7 days"),
        Deadline(datetime(2030, 7, 1, tzinfo=UTC), "model tiny-llm:1.0 of chatbot retires"),
    ]


def test_deadlines_skip_tombstones_and_unrecorded_deployments(root: Root):
    desired = ttl_web(root)
    d = only(desired)
    assert deadlines(desired, Snapshot(INSTANCE, {})) == []
    tombstone = record(d, expired=True, created_at=ago(hours=1))
    assert deadlines(desired, Snapshot(INSTANCE, {d.id: tombstone})) == []
