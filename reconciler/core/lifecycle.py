"""AI Core's deployment lifecycle: the statuses and the rules over them, in one place.

Pure functions over plain values, used by the planner (what a manifest change may do) and by
the AI API (what a PATCH or DELETE may ask for), so that the two can never disagree. Each rule
returns None when it allows the change, else the reason in words a user can act on (the caller
adds who or what it was about: a manifest field, an HTTP status).
"""

from __future__ import annotations

import enum
from datetime import UTC, date, datetime, timedelta

from ..manifests.crosscheck import TTL_MINIMUM_MINUTES, ttl_minutes
from ..manifests.spec import Probe
from .record import iso


class Status(enum.StrEnum):
    """A deployment's status, AI Core's words (a StrEnum: it compares and prints as them)."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    DEAD = "DEAD"
    UNKNOWN = "UNKNOWN"


# What may be asked of a deployment in each status (AI Core): stop a PENDING or RUNNING one;
# delete one that runs nothing; give a new configuration to one that runs, or that died lately.
STOPPABLE = frozenset({Status.PENDING, Status.RUNNING})
DELETABLE = frozenset({Status.STOPPED, Status.DEAD, Status.UNKNOWN})
RECONFIGURABLE = frozenset({Status.PENDING, Status.RUNNING, Status.DEAD})
# Statuses in which the deployment has (or is about to have) containers of its own.
ACTIVE = frozenset({Status.PENDING, Status.RUNNING, Status.STOPPING})
# Statuses in which its containers are meant to run: one that died or vanished is drift.
LIVE = frozenset({Status.PENDING, Status.RUNNING})

DEAD_RETENTION = timedelta(days=7)  # a DEAD deployment is deleted after this long
__all__ = [
    "ACTIVE",
    "DEAD_RETENTION",
    "DELETABLE",
    "LIVE",
    "RECONFIGURABLE",
    "STOPPABLE",
    "TTL_MINIMUM_MINUTES",
    "Status",
    "dead_expired",
    "dead_expires_at",
    "dead_reconfigure_refusal",
    "delete_refusal",
    "executable_change_refusal",
    "liveness_due",
    "liveness_limit",
    "not_retried",
    "reconfigure_refusal",
    "restart_refusal",
    "retired",
    "retirement_at",
    "stop_refusal",
    "ttl_expired",
    "ttl_expires_at",
]


def dead_expires_at(dead_since: datetime | None) -> datetime | None:
    """When a deployment DEAD since `dead_since` is deleted (AI Core keeps it DEAD_RETENTION)."""
    return dead_since + DEAD_RETENTION if dead_since is not None else None


def dead_expired(dead_since: datetime | None, now: datetime) -> bool:
    """Whether a deployment DEAD since `dead_since` is past its retention (then deleted)."""
    at = dead_expires_at(dead_since)
    return at is not None and at <= now


def ttl_expires_at(created: datetime | None, ttl: str | None) -> datetime | None:
    """When a deployment created at `created` with `ttl` (`30m`, `5h`, `2d`) is deleted."""
    if not ttl or created is None:
        return None
    return created + timedelta(minutes=ttl_minutes(ttl))


def ttl_expired(created: datetime | None, ttl: str | None, now: datetime) -> bool:
    """Whether the ttl, counted from creation (an update does not restart it), has run out."""
    at = ttl_expires_at(created, ttl)
    return at is not None and at <= now


def retirement_at(day: date) -> datetime:
    """The moment a model version retires: the start of its retirement date, UTC."""
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def retired(day: date | None, now: datetime) -> bool:
    """Whether a model version retiring on `day` is retired at `now`: from then on a deployment
    pinned to it stops working (AI Core), so it is stopped and stays stopped."""
    return day is not None and now.astimezone(UTC).date() >= day


def not_retried(failed_hash: str | None, config_hash: str) -> bool:
    """The failed-hash rule: a configuration (by its config hash, which covers the image's
    content) that failed is not tried again until it changes, so that a broken one does not
    loop. Until then a DEAD deployment stays DEAD, and a failed update leaves the old
    configuration serving."""
    return failed_hash is not None and failed_hash == config_hash


def restart_refusal(status: str | None, ever_started: bool) -> str | None:
    """STOPPED is final: a deployment that ran and was stopped never runs again."""
    if status == Status.STOPPED and ever_started:
        return (
            "is STOPPED and cannot be restarted (AI Core rule): deploy the configuration "
            "under a new deployment name"
        )
    return None


def stop_refusal(status: str, target_status: str) -> str | None:
    if status not in STOPPABLE or target_status == Status.STOPPED:
        return (
            f"is {status} (targetStatus {target_status}): only a PENDING or RUNNING "
            "deployment can be stopped"
        )
    return None


def delete_refusal(status: str) -> str | None:
    if status not in DELETABLE:
        return (
            f"is {status}: stop it first (PATCH targetStatus STOPPED); only STOPPED, DEAD or "
            "UNKNOWN deployments can be deleted"
        )
    return None


def executable_change_refusal(
    running: tuple[str | None, str | None],
    wanted: tuple[str, str],
    *,
    configuration: str | None = None,
) -> str | None:
    """A new configuration must keep the deployment's (executable, scenario). `configuration`
    names the new one in the reason (the planner's manifests know it by name)."""
    if running != wanted:
        new = f"configuration {configuration}" if configuration else "the new configuration"
        return (
            f"runs executable {running[0]} of scenario {running[1]}; {new} "
            f"uses executable {wanted[0]} of scenario {wanted[1]}. A new configuration must "
            "keep both: create a new deployment instead"
        )
    return None


def reconfigure_refusal(
    status: str, target_status: str, dead_since: datetime | None, now: datetime
) -> str | None:
    """A new configuration: for a PENDING or RUNNING deployment, or one DEAD for less than
    DEAD_RETENTION (counted from when it died)."""
    if (
        status not in RECONFIGURABLE
        or target_status == Status.STOPPED
        or (status == Status.DEAD and dead_expired(dead_since, now))
    ):
        return (
            f"is {status}: only a PENDING or RUNNING deployment, or one DEAD for less than "
            f"{DEAD_RETENTION.days} days, can get a new configuration"
        )
    return None


def dead_reconfigure_refusal(
    status: str | None, dead_since: datetime | None, now: datetime
) -> str | None:
    """The DEAD part of `reconfigure_refusal`, as the planner applies it to a manifest: a DEAD
    deployment may get a new configuration only within DEAD_RETENTION of its death (after
    that AI Core has deleted it)."""
    if status == Status.DEAD and dead_expired(dead_since, now):
        return (
            f"has been DEAD since {iso(dead_since)}; a DEAD deployment can get a new "
            f"configuration within {DEAD_RETENTION.days} days only: create a new deployment"
        )
    return None


def liveness_limit(liveness: Probe | None, unready_restart_seconds: int) -> int | None:
    """How long (seconds) a replica may stay unready before it is restarted: what its liveness
    probe tolerates (failureThreshold × periodSeconds), else the instance's
    unreadyRestartSeconds. None: never (0). The engine's one health check is the readiness
    probe, so its unready time stands in for the liveness probe's failures."""
    if liveness is not None:
        return liveness.failure_threshold * liveness.period_seconds
    return unready_restart_seconds or None


def liveness_due(unready_seconds: float | None, limit: int | None) -> bool:
    """Whether a replica unready for `unready_seconds` (None: it is not) is past its limit."""
    return unready_seconds is not None and limit is not None and unready_seconds >= limit
