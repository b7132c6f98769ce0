"""AI Core's deployment lifecycle: the statuses and the rules over them, in one place.

Pure functions over plain values, used by the planner (what a manifest change may do) and by
the AI API (what a PATCH or DELETE may ask for), so that the two can never disagree. Each rule
returns None when it allows the change, else the reason in words a user can act on (the caller
adds who or what it was about: a manifest field, an HTTP status).
"""

from __future__ import annotations

import enum
from datetime import datetime, timedelta

from ..manifests.crosscheck import TTL_MINIMUM_MINUTES, ttl_minutes


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

DEAD_RETENTION = timedelta(days=7)  # a DEAD deployment is deleted after this long
__all__ = [
    "ACTIVE",
    "DEAD_RETENTION",
    "DELETABLE",
    "RECONFIGURABLE",
    "STOPPABLE",
    "TTL_MINIMUM_MINUTES",
    "Status",
    "dead_expired",
    "delete_refusal",
    "executable_change_refusal",
    "reconfigure_refusal",
    "restart_refusal",
    "stop_refusal",
    "ttl_expires_at",
]


def dead_expired(dead_since: datetime | None, now: datetime) -> bool:
    """Whether a deployment DEAD since `dead_since` is past its retention (then deleted)."""
    return dead_since is not None and dead_since + DEAD_RETENTION <= now


def ttl_expires_at(created: datetime | None, ttl: str | None) -> datetime | None:
    """When a deployment created at `created` with `ttl` (`30m`, `5h`, `2d`) is deleted."""
    if not ttl or created is None:
        return None
    return created + timedelta(minutes=ttl_minutes(ttl))


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
    running: tuple[str | None, str | None], wanted: tuple[str, str]
) -> str | None:
    """A new configuration must keep the deployment's (executable, scenario)."""
    if running != wanted:
        return (
            f"runs executable {running[0]} of scenario {running[1]}; the new configuration "
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
