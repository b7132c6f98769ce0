"""Swarm's JSON (services, tasks, nodes), read into the neutral records.

A replica is a task: the newest task of each slot of a service that Swarm still wants running
(its history of failed and replaced tasks is kept by Swarm, and only counted here). A slot
whose tasks all ended, with Swarm no longer restarting it (its restart attempts spent), reads
as an exited replica with the last task's error, so that the planner sees it as it sees a dead
container. Swarm reports a task `running` only once its health check passed, and replaces one
that turns unhealthy itself: a running task is ready, one still starting is not.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .. import labels as L
from ..base import HEALTH_READY, HEALTH_STARTING, HEALTH_UNREADY, Replica
from .service import GPU_KIND, SERVICE_DIGEST, digest

# Task states on the way to running (Swarm's order), and those of a task that ended.
STARTING = ("new", "allocated", "pending", "assigned", "accepted", "preparing", "ready", "starting")
FAILED = frozenset({"failed", "rejected", "orphaned"})
ENDED = FAILED | {"complete", "shutdown", "remove"}
# What Swarm says of a task no node can take (not an error: it waits for one).
NO_NODE = "no suitable node"


@dataclass(frozen=True)
class Node:
    id: str
    hostname: str
    address: str
    state: str  # ready | down | unknown | disconnected
    availability: str  # active | pause | drain
    role: str  # manager | worker
    gpus: int  # generic resources of kind gpu it advertises


def parse_nodes(nodes: Iterable[Mapping[str, Any]]) -> dict[str, Node]:
    out = {}
    for n in nodes:
        desc, status, spec = n.get("Description") or {}, n.get("Status") or {}, n.get("Spec") or {}
        generic = (desc.get("Resources") or {}).get("GenericResources") or []
        gpus = sum(
            1 for g in generic if (g.get("NamedResourceSpec") or {}).get("Kind") == GPU_KIND
        ) + sum(
            int((g.get("DiscreteResourceSpec") or {}).get("Value") or 0)
            for g in generic
            if (g.get("DiscreteResourceSpec") or {}).get("Kind") == GPU_KIND
        )
        out[n["ID"]] = Node(
            id=n["ID"],
            hostname=desc.get("Hostname") or n["ID"][:12],
            address=status.get("Addr") or "",
            state=status.get("State") or "unknown",
            availability=spec.get("Availability") or "active",
            role=spec.get("Role") or "worker",
            gpus=gpus,
        )
    return out


def unix_time(stamp: str | None) -> float | None:
    """Swarm's RFC 3339 times ("2026-12-03T14:00:00.123456789Z") as unix seconds."""
    if not stamp or stamp.startswith("0001-"):
        return None
    whole, _, rest = stamp.rstrip("Z").partition(".")
    try:
        seconds = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None
    digits = "".join(ch for ch in rest if ch.isdigit())[:9]
    return seconds + (int(digits) / 10 ** len(digits) if digits else 0.0)


def task_error(task: Mapping[str, Any]) -> str:
    """What Swarm says of a task, its error first: "task: non-zero exit (1)", "no suitable
    node (insufficient resources on 3 nodes)"."""
    status = task.get("Status") or {}
    return str(status.get("Err") or status.get("Message") or status.get("State") or "")


def changed_by_hand(service: Mapping[str, Any]) -> bool:
    """The live spec no longer reads as the one the reconciler made (`docker service update`
    by hand): its tasks are then not of the configuration their labels name."""
    spec = service.get("Spec") or {}
    made = (spec.get("Labels") or {}).get(SERVICE_DIGEST)
    return bool(made) and made != digest(spec)


def current_tasks(tasks: Iterable[Mapping[str, Any]]) -> list[tuple[Mapping[str, Any], int]]:
    """The tasks Swarm wants running (during a start-first update a slot has two: the old one
    serves until the new one is healthy), and for a slot with none, its newest task when that
    failed and nothing replaces it; each with how many of its slot's tasks of the same
    configuration failed before."""
    slots: dict[tuple[str, int], list[Mapping[str, Any]]] = {}
    for t in tasks:
        slots.setdefault((t.get("ServiceID", ""), int(t.get("Slot") or 0)), []).append(t)
    out = []
    for group in slots.values():
        # By time, not text: Docker trims the nanoseconds' trailing zeros.
        group.sort(key=lambda t: unix_time(t.get("CreatedAt")) or 0.0, reverse=True)
        wanted = [t for t in group if t.get("DesiredState") in ("running", "ready", "accepted")]
        if not wanted and task_state(group[0]) in FAILED:
            wanted = group[:1]  # its restarts spent: what killed it is what the planner sees
        for chosen in wanted:
            same = task_labels(chosen).get(L.CONFIG_HASH)
            failed = sum(
                1
                for t in group
                if t is not chosen
                and task_state(t) in FAILED
                and task_labels(t).get(L.CONFIG_HASH) == same
            )
            out.append((chosen, failed))
    return out


def task_state(task: Mapping[str, Any]) -> str:
    return str((task.get("Status") or {}).get("State") or "")


def task_labels(task: Mapping[str, Any]) -> Mapping[str, str]:
    return ((task.get("Spec") or {}).get("ContainerSpec") or {}).get("Labels") or {}


def _published(task: Mapping[str, Any], port: int) -> int | None:
    for p in ((task.get("Status") or {}).get("PortStatus") or {}).get("Ports") or ():
        if p.get("TargetPort") == port and p.get("PublishedPort"):
            return int(p["PublishedPort"])
    return None


def parse_task(
    task: Mapping[str, Any],
    service: Mapping[str, Any],
    nodes: Mapping[str, Node],
    failed_before: int = 0,
) -> Replica:
    labels = dict(task_labels(task))
    fields = L.replica_fields(labels)
    if changed_by_hand(service):
        # Not the configuration its labels name: the planner sees a changed field and
        # updates the service back.
        fields["fields"] = {**fields["fields"], "swarm service edited by hand": "?"}
        fields["config_hash"] = "changed-by-hand"
    slot = int(task.get("Slot") or 0)
    fields["replica"] = max(slot - 1, 0)
    status = task.get("Status") or {}
    state, node = task_state(task), nodes.get(task.get("NodeID") or "")
    port = int(labels.get(L.PORT) or 8080)
    health, detail = "", ""
    if state == "running":
        shown, health = "running", HEALTH_READY
        if node is not None and node.state != "ready":
            # Swarm still lists it running until it moves it: not reachable meanwhile.
            health, detail = HEALTH_UNREADY, f"its node {node.hostname} is {node.state}"
    elif state in STARTING and task.get("DesiredState") != "shutdown":
        shown, health = "starting", HEALTH_STARTING
        detail = str(status.get("Err") or "")
    else:
        shown = "exited"
    gpus = tuple(
        str((g.get("NamedResourceSpec") or {}).get("Value"))
        for g in task.get("AssignedGenericResources") or ()
        if (g.get("NamedResourceSpec") or {}).get("Kind") == GPU_KIND
    )
    name = ((service.get("Spec") or {}).get("Name")) or task.get("ServiceID", "")
    exit_code = (status.get("ContainerStatus") or {}).get("ExitCode")
    return Replica(
        id=task["ID"],
        name=f"{name}.{slot}",
        **{**fields, "gpus": gpus or fields["gpus"]},
        state=shown,
        status=f"{state}: {task_error(task)}" if state != "running" else "running",
        exit_code=int(exit_code) if shown == "exited" and exit_code is not None else None,
        host_ip=node.address if node else None,
        host_port=_published(task, port),
        container_port=port,
        container_ip="",
        network_gateway="",
        created=int(unix_time(task.get("CreatedAt")) or 0),
        restarts=failed_before,
        node=node.hostname if node else "",
        image=((task.get("Spec") or {}).get("ContainerSpec") or {}).get("Image") or "",
        health=health,
        health_detail=detail,
        started=unix_time(status.get("Timestamp")) if state == "running" else None,
    )


def task_hash(task: Mapping[str, Any]) -> str:
    """The configuration a task was made from (its container labels' config hash)."""
    return str(task_labels(task).get(L.CONFIG_HASH) or "")
