"""Ownership labels: what marks a container as ours and says what it was created from.

Only containers carrying `reconciler.managed=true` *and* this instance's name are ever listed,
so nothing else on the host can be stopped, changed or removed. Labels are immutable once a
container exists; values that can change in place (resources) are also kept in the state.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..manifests.spec import Identity
    from .base import Intent

PREFIX = "reconciler."
MANAGED = PREFIX + "managed"
INSTANCE = PREFIX + "instance"
ROOT = PREFIX + "root"
DEPLOYMENT_ID = PREFIX + "deployment-id"
DEPLOYMENT_NAME = PREFIX + "deployment-name"
RESOURCE_GROUP = PREFIX + "resource-group"
CONFIGURATION_ID = PREFIX + "configuration-id"
REPLICA = PREFIX + "replica"
CONFIG_HASH = PREFIX + "config-hash"
HASH_VERSION = PREFIX + "hash-version"
IMAGE_ID = PREFIX + "image-id"  # the image's content id at creation
FIELDS = PREFIX + "fields"  # JSON: identity field -> short digest, to name what changed
RESOURCES = PREFIX + "resources"  # JSON: cpus, memory, restartPolicy at creation
GPUS = PREFIX + "gpus"  # comma-separated device ids, when assigned from the inventory
PORT = PREFIX + "port"  # the container port that serves
REVISION = PREFIX + "revision"  # the manifests' git commit
MODEL = PREFIX + "model"  # the catalog model version served, "name:version" (generative models)


def selector(instance: str) -> list[str]:
    """Docker label filters for this instance's containers (all must match)."""
    return [f"{MANAGED}=true", f"{INSTANCE}={instance}"]


def compact(value: object) -> str:
    """A label value holding JSON: sorted and without spaces, so equal values read equal."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def replica_labels(
    intent: Intent, identity: Identity, image_id: str, replica: int | None, gpu_ids: Sequence[str]
) -> dict[str, str]:
    """What a replica of `intent` carries: ownership, and what it was made from. `replica`:
    its index (None where the engine numbers replicas itself: Swarm's task slots)."""
    d, spec = intent.deployment, intent.deployment.spec
    labels = {
        MANAGED: "true",
        INSTANCE: intent.instance,
        ROOT: intent.root,
        DEPLOYMENT_ID: d.id,
        DEPLOYMENT_NAME: d.name,
        RESOURCE_GROUP: d.deployment.resource_group,
        CONFIGURATION_ID: d.configuration.id,
        CONFIG_HASH: identity.config_hash,
        HASH_VERSION: identity.version,
        IMAGE_ID: image_id,
        FIELDS: compact(dict(identity.digests)),
        RESOURCES: compact(spec.resources()),
        GPUS: ",".join(gpu_ids),
        PORT: str(spec.port),
        REVISION: intent.revision or "",
        MODEL: d.model.label if d.model else "",
    }
    if replica is not None:
        labels[REPLICA] = str(replica)
    return labels


def _json(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def replica_fields(labels: Mapping[str, str]) -> dict[str, Any]:
    """The `Replica` fields its labels say (the inverse of `replica_labels`)."""
    return {
        "deployment_id": labels.get(DEPLOYMENT_ID, ""),
        "deployment_name": labels.get(DEPLOYMENT_NAME, ""),
        "resource_group": labels.get(RESOURCE_GROUP, ""),
        "configuration_id": labels.get(CONFIGURATION_ID, ""),
        "replica": int(labels.get(REPLICA) or 0),
        "config_hash": labels.get(CONFIG_HASH, ""),
        "hash_version": labels.get(HASH_VERSION, ""),
        "image_id": labels.get(IMAGE_ID, ""),
        "fields": MappingProxyType(_json(labels.get(FIELDS))),
        "resources": MappingProxyType(_json(labels.get(RESOURCES))),
        "gpus": tuple(g for g in labels.get(GPUS, "").split(",") if g),
        "root": labels.get(ROOT, ""),
        "revision": labels.get(REVISION, ""),
        "model": labels.get(MODEL, ""),
    }
