"""AI Core's deployment lifecycle as pure functions: the status table of the AI Core docs
(stop, delete, new configuration per status), STOPPED is final, DEAD retention, ttl, model
retirement and the failed-hash rule. No Docker engine, no files."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from reconciler.core import lifecycle
from reconciler.core.lifecycle import (
    ACTIVE,
    DEAD_RETENTION,
    DELETABLE,
    LIVE,
    RECONFIGURABLE,
    STOPPABLE,
    Status,
    dead_expired,
    dead_expires_at,
    dead_reconfigure_refusal,
    delete_refusal,
    executable_change_refusal,
    not_retried,
    reconfigure_refusal,
    restart_refusal,
    retired,
    retirement_at,
    stop_refusal,
    ttl_expired,
    ttl_expires_at,
)

NOW = datetime(2030, 6, 15, 12, 0, 0, tzinfo=UTC)

# The AI Core docs' table: status → (stop, delete, change configuration). DEAD may get a new
# configuration within 7 days (the docs; the spec says RUNNING/PENDING only: the friendlier rule).
TABLE = {
    Status.UNKNOWN: (False, True, False),
    Status.PENDING: (True, False, True),
    Status.RUNNING: (True, False, True),
    Status.STOPPING: (False, False, False),
    Status.STOPPED: (False, True, False),
    Status.DEAD: (False, True, True),
}


def test_statuses_are_ai_cores_words_and_compare_as_strings():
    assert [s.value for s in Status] == [
        "PENDING",
        "RUNNING",
        "STOPPING",
        "STOPPED",
        "DEAD",
        "UNKNOWN",
    ]
    assert Status.DEAD == "DEAD" and f"{Status.STOPPED}" == "STOPPED"
    assert "RUNNING" in STOPPABLE  # raw strings from a record are members too


def test_the_table_covers_every_status():
    assert set(TABLE) == set(Status)


@pytest.mark.parametrize("status", list(Status))
def test_the_sets_follow_the_table(status: Status):
    stop, delete, change = TABLE[status]
    assert (status in STOPPABLE, status in DELETABLE, status in RECONFIGURABLE) == (
        stop,
        delete,
        change,
    )


def test_active_and_live_statuses():
    assert {Status.PENDING, Status.RUNNING, Status.STOPPING} == ACTIVE
    assert {Status.PENDING, Status.RUNNING} == LIVE


# -- stop -------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", list(Status))
def test_stop_follows_the_table(status: Status):
    allowed = TABLE[status][0]
    assert (stop_refusal(status, "RUNNING") is None) == allowed


def test_stop_is_refused_when_already_asked():
    assert stop_refusal("RUNNING", "STOPPED") == (
        "is RUNNING (targetStatus STOPPED): only a PENDING or RUNNING deployment can be stopped"
    )


def test_stop_refusal_names_the_status():
    assert stop_refusal("STOPPED", "STOPPED") == (
        "is STOPPED (targetStatus STOPPED): only a PENDING or RUNNING deployment can be stopped"
    )


# -- delete -----------------------------------------------------------------------------------


@pytest.mark.parametrize("status", list(Status))
def test_delete_follows_the_table(status: Status):
    assert (delete_refusal(status) is None) == TABLE[status][1]


def test_a_running_deployment_is_stopped_before_it_is_deleted():
    assert delete_refusal("RUNNING") == (
        "is RUNNING: stop it first (PATCH targetStatus STOPPED); only STOPPED, DEAD or UNKNOWN "
        "deployments can be deleted"
    )


# -- STOPPED is final -------------------------------------------------------------------------


def test_a_stopped_deployment_that_ran_cannot_be_restarted():
    assert restart_refusal("STOPPED", ever_started=True) == (
        "is STOPPED and cannot be restarted (AI Core rule): deploy the configuration under a "
        "new deployment name"
    )


def test_a_deployment_stopped_before_it_ever_ran_may_start():
    assert restart_refusal("STOPPED", ever_started=False) is None


@pytest.mark.parametrize("status", [s for s in Status if s != Status.STOPPED] + [None])
def test_only_stopped_is_final(status: str | None):
    assert restart_refusal(status, ever_started=True) is None


# -- a new configuration ----------------------------------------------------------------------


@pytest.mark.parametrize("status", list(Status))
def test_a_new_configuration_follows_the_table(status: Status):
    dead_since = NOW - timedelta(days=1) if status == Status.DEAD else None
    allowed = reconfigure_refusal(status, "RUNNING", dead_since, NOW) is None
    assert allowed == TABLE[status][2]


def test_a_dead_deployment_gets_a_new_configuration_within_seven_days_only():
    assert reconfigure_refusal("DEAD", "RUNNING", NOW - timedelta(days=6, hours=23), NOW) is None
    assert reconfigure_refusal("DEAD", "RUNNING", NOW - timedelta(days=7), NOW) == (
        "is DEAD: only a PENDING or RUNNING deployment, or one DEAD for less than 7 days, can "
        "get a new configuration"
    )


def test_a_deployment_being_stopped_gets_no_new_configuration():
    assert reconfigure_refusal("RUNNING", "STOPPED", None, NOW) is not None


def test_the_planners_dead_rule_names_the_time_of_death():
    since = NOW - timedelta(days=8)
    assert dead_reconfigure_refusal("DEAD", since, NOW) == (
        "has been DEAD since 2030-06-07T12:00:00Z; a DEAD deployment can get a new "
        "configuration within 7 days only: create a new deployment"
    )
    assert dead_reconfigure_refusal("DEAD", NOW - timedelta(days=6), NOW) is None
    assert dead_reconfigure_refusal("DEAD", None, NOW) is None  # time of death unknown
    assert dead_reconfigure_refusal("RUNNING", since, NOW) is None


def test_a_new_configuration_keeps_executable_and_scenario():
    assert executable_change_refusal(("echo", "scn"), ("echo", "scn")) is None
    assert executable_change_refusal(("echo", "scn"), ("other", "scn")) == (
        "runs executable echo of scenario scn; the new configuration uses executable other of "
        "scenario scn. A new configuration must keep both: create a new deployment instead"
    )


def test_the_scenario_alone_changing_is_refused_too():
    refusal = executable_change_refusal(("echo", "a"), ("echo", "b"), configuration="conf-b")
    assert refusal == (
        "runs executable echo of scenario a; configuration conf-b uses executable echo of "
        "scenario b. A new configuration must keep both: create a new deployment instead"
    )


# -- DEAD retention ---------------------------------------------------------------------------


def test_dead_retention_is_seven_days_from_death():
    assert timedelta(days=7) == DEAD_RETENTION
    since = NOW - timedelta(days=3)
    assert dead_expires_at(since) == NOW + timedelta(days=4)
    assert dead_expires_at(None) is None


def test_a_dead_deployment_expires_at_exactly_seven_days():
    assert not dead_expired(NOW - DEAD_RETENTION + timedelta(seconds=1), NOW)
    assert dead_expired(NOW - DEAD_RETENTION, NOW)
    assert not dead_expired(None, NOW)


# -- ttl --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ttl", "minutes"), [("10m", 10), ("5h", 300), ("2d", 2880), ("90M", 90), ("1H", 60)]
)
def test_ttl_counts_from_creation(ttl: str, minutes: int):
    created = NOW - timedelta(hours=1)
    assert ttl_expires_at(created, ttl) == created + timedelta(minutes=minutes)


def test_no_ttl_or_no_creation_time_never_expires():
    assert ttl_expires_at(None, "10m") is None
    assert ttl_expires_at(NOW, None) is None
    assert not ttl_expired(None, "10m", NOW)
    assert not ttl_expired(NOW - timedelta(days=365), None, NOW)


def test_ttl_expires_at_the_minute():
    assert ttl_expired(NOW - timedelta(minutes=10), "10m", NOW)
    assert not ttl_expired(NOW - timedelta(minutes=9, seconds=59), "10m", NOW)


def test_the_ttl_minimum_is_ten_minutes():
    assert lifecycle.TTL_MINIMUM_MINUTES == 10


# -- model retirement -------------------------------------------------------------------------


def test_a_version_is_retired_from_the_start_of_its_retirement_date_utc():
    day = date(2030, 6, 15)
    assert retirement_at(day) == datetime(2030, 6, 15, tzinfo=UTC)
    assert retired(day, datetime(2030, 6, 15, 0, 0, tzinfo=UTC))
    assert not retired(day, datetime(2030, 6, 14, 23, 59, 59, tzinfo=UTC))
    assert not retired(None, NOW)


def test_retirement_is_judged_in_utc():
    # 01:00 on the 15th at UTC+2 is still the 14th in UTC.
    east = timezone(timedelta(hours=2))
    assert not retired(date(2030, 6, 15), datetime(2030, 6, 15, 1, 0, tzinfo=east))


# -- the failed-hash rule ---------------------------------------------------------------------


def test_a_failed_configuration_is_not_retried_until_it_changes():
    assert not_retried("abc", "abc")
    assert not not_retried("abc", "abd")
    assert not not_retried(None, "abc")


def test_every_rule_is_exported():
    assert set(lifecycle.__all__) <= set(dir(lifecycle))
    for name in ("not_retried", "retired", "ttl_expired", "dead_reconfigure_refusal"):
        assert name in lifecycle.__all__
