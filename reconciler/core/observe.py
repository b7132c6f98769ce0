"""Observe: the real Docker state of this instance, as plain data.

Two API calls per pass, whatever the number of deployments: one labelled container list (the
summaries carry labels, state, exit status and ports) and one image list (image ids, so that a
rebuilt `image:tag` counts as a change). No container is inspected on this path, except one that
Docker is restarting right now (its restart count tells a crash loop).
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from types import MappingProxyType
from typing import Any

from ..backends import labels as L
from ..backends.base import Observed, Replica, normalize_image
from ..backends.docker.engine import Engine

_EXIT_CODE = re.compile(r"(?:Exited|Restarting) \((-?\d+)\)")


def _json(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def parse_summary(summary: dict[str, Any], port_label_default: int = 8080) -> Replica:
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
    status = summary.get("Status", "")
    code = _EXIT_CODE.search(status)
    return Replica(
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
        status=status,
        exit_code=int(code.group(1)) if code else None,
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


def _restarts(engine: Engine, c: Replica) -> Replica:
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
