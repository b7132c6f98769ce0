"""Docker's JSON, read into the neutral records: the only place that knows its shapes.

A container summary (one entry of the labelled container list) becomes a `Replica`; an image
list the reference → id map; an event an `Event`; an inspect document the facts a readiness
probe needs (`Inspected`). Docker's summaries carry no exit code of their own, only the human
status text ("Exited (1) 3 seconds ago"), so the code is read from that text here.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from .. import labels as L
from ..base import HEALTH_READY, HEALTH_STARTING, HEALTH_UNREADY, Event, Replica, normalize_image

_EXIT_CODE = re.compile(r"(?:Exited|Restarting) \((-?\d+)\)")
# The summary's status text ends with the health check's verdict, when the container has one:
# "Up 5 minutes (healthy)", "Up 2 seconds (health: starting)", "Up 1 minute (unhealthy)".
_HEALTH = {"(healthy)": HEALTH_READY, "(unhealthy)": HEALTH_UNREADY}
_STARTING = "(health: starting)"
# How long a container has been up, in Docker's words (go-units' HumanDuration): the summary
# carries no start time, and one inspect per container would cost the no-op path a call each.
_UP = re.compile(
    r"^Up (?:(?P<less>Less than a second)|(?P<about>About an? (?P<aunit>minute|hour))"
    r"|(?P<n>\d+) (?P<unit>second|minute|hour|day|week|month|year)s?)"
)
_UNIT_SECONDS = {
    "second": 1,
    "minute": 60,
    "hour": 3600,
    "day": 86400,
    "week": 7 * 86400,
    "month": 30 * 86400,
    "year": 365 * 86400,
}
# Output of a check that could not probe at all (engine.NO_PROBE_TOOL, or an image without a
# shell): that is no health check, not a model server that stopped answering.
NO_PROBE_TOOL = "reconciler-healthcheck: no probe tool"
_NO_SHELL = re.compile(r'exec: "/bin/sh": .*(no such file|not found)', re.IGNORECASE)


def _published(summary: dict[str, Any], port: int) -> tuple[str | None, int | None]:
    for p in summary.get("Ports") or ():
        if p.get("PrivatePort") == port and p.get("PublicPort"):
            return p.get("IP"), int(p["PublicPort"])
    return None, None


def _network(summary: dict[str, Any]) -> tuple[str, str]:
    """The container's address on its first network with one, and that network's gateway."""
    for net in ((summary.get("NetworkSettings") or {}).get("Networks") or {}).values():
        if net and net.get("IPAddress"):
            return net["IPAddress"], net.get("Gateway") or ""
    return "", ""


def uptime_seconds(status: str) -> float | None:
    """How long a container has been up by its summary's `Status` ("Up 5 seconds (healthy)",
    "Up About a minute"): at least this long (None: not up)."""
    match = _UP.match(status)
    if not match:
        return None
    if match["less"]:
        return 0.0
    if match["about"]:
        return float(_UNIT_SECONDS[match["aunit"]])
    return float(int(match["n"]) * _UNIT_SECONDS[match["unit"]])


def parse_summary(
    summary: dict[str, Any], port_label_default: int = 8080, now: float | None = None
) -> Replica:
    labels = summary.get("Labels") or {}
    port = int(labels.get(L.PORT) or port_label_default)
    host_ip, host_port = _published(summary, port)
    container_ip, network_gateway = _network(summary)
    names = summary.get("Names") or ["/?"]
    status = summary.get("Status", "")
    code = _EXIT_CODE.search(status)
    health = next((h for text, h in _HEALTH.items() if status.endswith(text)), "")
    if status.endswith(_STARTING):
        health = HEALTH_STARTING
    up = uptime_seconds(status)
    started = None if up is None else (time.time() if now is None else now) - up
    return Replica(
        id=summary["Id"],
        name=names[0].lstrip("/"),
        **L.replica_fields(labels),
        state=summary.get("State", ""),
        status=status,
        exit_code=int(code.group(1)) if code else None,
        host_ip=host_ip,
        host_port=host_port,
        container_port=port,
        container_ip=container_ip,
        network_gateway=network_gateway,
        created=int(summary.get("Created") or 0),
        image=summary.get("Image") or "",
        health=health,
        started=started,
    )


def parse_health(info: dict[str, Any], replica: Replica) -> Replica:
    """An unhealthy replica with what its last check said (from its inspect document) and how
    long it has been failing; one whose check could not probe at all has no check ("")."""
    health = (info.get("State") or {}).get("Health") or {}
    log = health.get("Log") or []
    output = str(log[-1].get("Output") or "").strip() if log else ""
    if output.startswith(NO_PROBE_TOOL) or _NO_SHELL.search(output):
        return replace(replica, health="", health_detail=output)
    return replace(
        replica,
        health_detail=output or "the health check failed",
        unready_seconds=_unready_seconds(health, info),
    )


def _unready_seconds(health: dict[str, Any], info: dict[str, Any]) -> float | None:
    """How long the current streak of failed checks has lasted, a lower bound by Docker's own
    clock (no host clock is compared with it): from the start of the streak's first check
    in the log to the end of the last one. Docker keeps only the last five checks, so a
    longer streak lasted at least FailingStreak - 1 intervals from its first check to its
    last (the interval between checks does not include the checks themselves)."""
    log = health.get("Log") or []
    streak = int(health.get("FailingStreak") or 0)
    interval_ns = ((info.get("Config") or {}).get("Healthcheck") or {}).get("Interval") or 0
    by_count = (streak - 1) * interval_ns / 1e9 if streak else None
    failing = list(itertools.takewhile(lambda e: e.get("ExitCode") != 0, reversed(log)))
    first = _time(failing[-1].get("Start")) if failing else None
    last = _time(log[-1].get("End")) if log else None
    by_log = (last - first).total_seconds() if first and last and last >= first else None
    known = [s for s in (by_count, by_log) if s is not None]
    return max(known) if known else None


def _time(text: Any) -> datetime | None:
    """An RFC 3339 time as Docker writes it (nanoseconds: Python keeps microseconds)."""
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def image_ids(images: Iterable[dict[str, Any]]) -> dict[str, str]:
    """Normalized image reference (tag or digest) → image id, from Docker's image list."""
    ids: dict[str, str] = {}
    for image in images:
        for tag in image.get("RepoTags") or ():
            if tag != "<none>:<none>":
                ids[normalize_image(tag)] = image["Id"]
        for digest in image.get("RepoDigests") or ():
            ids[digest] = image["Id"]
    return ids


def parse_event(event: dict[str, Any], caused: Callable[[str], bool]) -> Event:
    """`caused`: whether the backend itself stopped or removed a container (by id), asked as
    the event comes (the call may be older than the stream)."""
    actor = event.get("Actor") or {}
    attributes = actor.get("Attributes") or {}
    container = actor.get("ID") or event.get("id") or ""
    return Event(
        replica_id=container,
        action=event.get("Action") or event.get("status") or "?",
        instance=attributes.get(L.INSTANCE) or "",
        name=attributes.get(L.DEPLOYMENT_NAME) or attributes.get("name") or container[:12],
        time_ns=int(event["timeNano"]) if event.get("timeNano") else None,
        own=bool(container) and caused(container),
    )


def since_argument(ns: int) -> str:
    """Docker's `since` format ("seconds.nanoseconds") for a moment in nanoseconds."""
    return f"{ns // 10**9}.{ns % 10**9:09d}"


@dataclass(frozen=True)
class Inspected:
    """What a readiness probe reads of one container's inspect document."""

    status: str  # created | running | restarting | exited | dead ...
    oom_killed: bool
    restarting: bool
    restart_count: int
    exit_code: int | None
    address: str  # its own address on its default network ("" when none)
    published: tuple[str, int] | None  # (host, port) of the serving port, once published


def parse_inspect(info: dict[str, Any], port: int) -> Inspected:
    state = info.get("State") or {}
    network = info.get("NetworkSettings") or {}
    bindings = (network.get("Ports") or {}).get(f"{port}/tcp") or []
    published = None
    if bindings:
        host = bindings[0].get("HostIp") or "127.0.0.1"
        host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        published = (host, int(bindings[0]["HostPort"]))
    return Inspected(
        status=state.get("Status") or "",
        oom_killed=bool(state.get("OOMKilled")),
        restarting=bool(state.get("Restarting")),
        restart_count=int(info.get("RestartCount") or 0),
        exit_code=state.get("ExitCode"),
        address=network.get("IPAddress") or "",
        published=published,
    )
