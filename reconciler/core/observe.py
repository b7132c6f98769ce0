"""Observe: the real Docker state of this instance, as plain data.

Two API calls per pass, whatever the number of deployments: one labelled container list (the
summaries carry labels, state, exit status and ports) and one image list (image ids, so that a
rebuilt `image:tag` counts as a change). No container is inspected on this path, except one that
Docker is restarting right now (its restart count tells a crash loop).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from ..backends import labels as L
from ..backends.docker.engine import Engine

_EXIT_CODE = re.compile(r"(?:Exited|Restarting) \((-?\d+)\)")


@dataclass(frozen=True)
class ObservedContainer:
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
    restarts: int = 0  # Docker's RestartCount, looked up only for containers restarting now

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def exit_code(self) -> int | None:
        match = _EXIT_CODE.search(self.status)
        return int(match.group(1)) if match else None

    def describe_state(self) -> str:
        if self.state == "exited":
            return f"exited with code {self.exit_code}"
        if self.state == "created":
            return "created but never started"
        return self.state


@dataclass(frozen=True)
class Observed:
    containers: tuple[ObservedContainer, ...]
    images: Mapping[str, str]  # normalized image reference -> image id

    def by_deployment(self) -> dict[str, list[ObservedContainer]]:
        out: dict[str, list[ObservedContainer]] = {}
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


def _json(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def parse_summary(summary: dict[str, Any], port_label_default: int = 8080) -> ObservedContainer:
    labels = summary.get("Labels") or {}
    port = int(labels.get(L.PORT) or port_label_default)
    host_ip, host_port = None, None
    for p in summary.get("Ports") or ():
        if p.get("PrivatePort") == port and p.get("PublicPort"):
            host_ip, host_port = p.get("IP"), int(p["PublicPort"])
            break
    container_ip = network_gateway = ""
    for net in ((summary.get("NetworkSettings") or {}).get("Networks") or {}).values():
        if net and net.get("IPAddress"):
            container_ip, network_gateway = net["IPAddress"], net.get("Gateway") or ""
            break
    names = summary.get("Names") or ["/?"]
    return ObservedContainer(
        id=summary["Id"],
        name=names[0].lstrip("/"),
        deployment_id=labels.get(L.DEPLOYMENT_ID, ""),
        deployment_name=labels.get(L.DEPLOYMENT_NAME, ""),
        resource_group=labels.get(L.RESOURCE_GROUP, ""),
        configuration_id=labels.get(L.CONFIGURATION_ID, ""),
        replica=int(labels.get(L.REPLICA) or 0),
        config_hash=labels.get(L.CONFIG_HASH, ""),
        hash_version=labels.get(L.HASH_VERSION, ""),
        image_id=labels.get(L.IMAGE_ID, ""),
        fields=MappingProxyType(_json(labels.get(L.FIELDS))),
        resources=MappingProxyType(_json(labels.get(L.RESOURCES))),
        gpus=tuple(g for g in labels.get(L.GPUS, "").split(",") if g),
        state=summary.get("State", ""),
        status=summary.get("Status", ""),
        host_ip=host_ip,
        host_port=host_port,
        container_port=port,
        container_ip=container_ip,
        network_gateway=network_gateway,
        created=int(summary.get("Created") or 0),
        root=labels.get(L.ROOT, ""),
        revision=labels.get(L.REVISION, ""),
        model=labels.get(L.MODEL, ""),
    )


def _restarts(engine: Engine, c: ObservedContainer) -> ObservedContainer:
    """A container Docker is restarting (waiting out its restart backoff) may crash-loop: its
    restart count says how often (one inspect, only for these)."""
    if c.state != "restarting":
        return c
    info = engine.inspect(c.id) or {}
    return replace(c, restarts=int(info.get("RestartCount") or 0))


def observe(engine: Engine, instance: str, images: bool = True) -> Observed:
    """This instance's containers and, for planning, the host's images (`images=False` for
    callers that only show or route to containers: one Docker call instead of two)."""
    summaries = engine.list_containers(L.selector(instance))
    containers = tuple(
        sorted(
            (_restarts(engine, parse_summary(s)) for s in summaries),
            key=lambda c: (c.deployment_id, c.replica, c.created, c.id),
        )
    )
    ids: dict[str, str] = {}
    for image in engine.images() if images else ():
        for tag in image.get("RepoTags") or ():
            if tag != "<none>:<none>":
                ids[normalize_image(tag)] = image["Id"]
        for digest in image.get("RepoDigests") or ():
            ids[digest] = image["Id"]
    return Observed(containers, MappingProxyType(ids))
