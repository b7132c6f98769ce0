"""Ownership labels: what marks a container as ours and says what it was created from.

Only containers carrying `reconciler.managed=true` *and* this instance's name are ever listed,
so nothing else on the host can be stopped, changed or removed. Labels are immutable once a
container exists; values that can change in place (resources) are also kept in the state.
"""

from __future__ import annotations

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
