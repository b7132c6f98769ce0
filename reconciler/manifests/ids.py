"""Identifiers derived from names: instances and deployment ids.

A deployment id must be stable (it is part of the deployment URL clients keep) and look like
AI Core's (`d` + 15 hex characters), so it is a hash of what names the deployment: the
instance, the resource group and the deployment's name.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path


def deployment_id(instance: str, resource_group: str, name: str) -> str:
    digest = hashlib.sha256(f"{instance}\0{resource_group}\0{name}".encode()).hexdigest()
    return "d" + digest[:15]


def default_instance(root: Path) -> str:
    """The root folder's name plus a hash of its absolute path: two clones of one repository on
    the same host are two instances and never touch each other's containers."""
    path = root.resolve()
    base = re.sub(r"[^a-z0-9-]+", "-", path.name.lower()).strip("-")[:32] or "root"
    return f"{base}-{hashlib.sha256(str(path).encode()).hexdigest()[:6]}"
