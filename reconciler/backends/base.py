"""What every engine backend shares: the neutral records of what runs.

A backend (Docker today) observes its engine and reports each replica of each deployment as
a `Replica`; nothing outside `reconciler.backends` sees the engine's own shapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Replica:
    """One replica of a deployment as its engine runs it (a container on Docker), in the
    engine's neutral terms: what the planner, the status and the gateway read."""

    id: str
    name: str
    deployment_id: str
    deployment_name: str
    resource_group: str
    configuration_id: str
    replica: int
    config_hash: str
    hash_version: str
    image_id: str
    fields: Mapping[str, str] = field(compare=False)
    resources: Mapping[str, Any] = field(compare=False)
    gpus: tuple[str, ...]
    state: str  # created | running | restarting | paused | exited | dead | removing
    status: str  # Docker's human text: "Up 5 minutes", "Exited (1) 3 seconds ago"
    host_ip: str | None
    host_port: int | None
    container_port: int
    # The container's own address on its first network with one, and that network's gateway
    # (the host's end of the bridge): the gateway relays here when the host owns that end.
    container_ip: str
    network_gateway: str
    created: int  # unix seconds
    root: str
    revision: str
    model: str = ""  # "name:version" of the catalog model it serves, if any
    restarts: int = 0  # how often the engine restarted it (Docker: for restarting ones only)
    exit_code: int | None = None  # of the last exit, when it exited

    @property
    def running(self) -> bool:
        return self.state == "running"

    def describe_state(self) -> str:
        if self.state == "exited":
            return f"exited with code {self.exit_code}"
        if self.state == "created":
            return "created but never started"
        return self.state


@dataclass(frozen=True)
class Observed:
    containers: tuple[Replica, ...]
    images: Mapping[str, str]  # normalized image reference -> image id

    def by_deployment(self) -> dict[str, list[Replica]]:
        out: dict[str, list[Replica]] = {}
        for c in self.containers:
            out.setdefault(c.deployment_id, []).append(c)
        return out

    def image_id(self, ref: str) -> str | None:
        return self.images.get(normalize_image(ref))


def normalize_image(ref: str) -> str:
    """`busybox` and `docker.io/library/busybox:latest` name the same image."""
    if "@" in ref:
        return ref
    if ":" not in ref.rsplit("/", 1)[-1]:
        ref += ":latest"
    for prefix in (
        "docker.io/library/",
        "index.docker.io/library/",
        "docker.io/",
        "index.docker.io/",
    ):
        if ref.startswith(prefix):
            return ref[len(prefix) :]
    return ref
