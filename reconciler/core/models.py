"""Models in object stores, between render and plan: each `ai://` / `s3://` model artifact is
read from its store (its objects and their version), so that the plan knows the version (part
of the config hash: a new upload under the same path replaces the containers) and apply knows
what to download into the host's model cache before a container starts.

A store that cannot be read (wrong secret, missing path, down) does not stop a deployment
that serves: while its recorded version is in the cache it goes on with that one (a warning
says why); otherwise the deployment cannot start and becomes DEAD with the store's one-line
reason, retried by the next pass that can read the store (its config hash then differs).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..files import cache_dir
from ..manifests.desired import DesiredDeployment, DesiredState
from ..manifests.store_urls import is_store_url
from ..stores.cache import ModelCache
from ..stores.s3 import Listing, StoreError, listing, locate
from ..stores.secrets import ObjectStoreSecrets, default_path
from .record import Snapshot


def default_cache() -> ModelCache:
    return ModelCache(cache_dir() / "models")


@dataclass(frozen=True)
class Models:
    """What the stores said: listings by version (for apply's downloads), deployments whose
    model cannot be read (id → why), and warnings."""

    listings: Mapping[str, Listing] = field(default_factory=dict)
    unavailable: Mapping[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


def resolve_models(
    desired: DesiredState,
    snapshot: Snapshot,
    secrets: ObjectStoreSecrets | None = None,
    cache: ModelCache | None = None,
) -> tuple[DesiredState, Models]:
    """`desired` with each object-store model's version and cache path in its spec."""
    if not any(is_store_url(d.spec.model_uri) for d in desired.deployments):
        return desired, Models()
    secrets = secrets or ObjectStoreSecrets(default_path(desired.repo.instance))
    cache = cache or default_cache()
    listings: dict[str, Listing] = {}
    seen: dict[tuple[str, str], Listing | StoreError] = {}
    unavailable: dict[str, str] = {}
    warnings: list[str] = []
    deployments = []
    for d in desired.deployments:
        uri = d.spec.model_uri
        if not is_store_url(uri) or d.deployment.target_status != "RUNNING":
            deployments.append(d)
            continue
        assert uri is not None
        if not _local(desired):
            unavailable[d.id] = (
                "models from object stores run on a Docker engine on this machine for now (the "
                "model cache is here; a Swarm's nodes or a remote engine would each need their "
                "own): use a file: URL on a path the engine's host has"
            )
            deployments.append(d)
            continue
        key = (uri, d.deployment.resource_group)
        if key not in seen:
            try:
                seen[key] = listing(locate(uri, d.deployment.resource_group, secrets))
            except StoreError as exc:
                seen[key] = exc
        found = seen[key]
        if isinstance(found, Listing):
            listings[found.version] = found
            deployments.append(_at(d, found.version, cache))
            continue
        rec = snapshot.records.get(d.id)
        kept = rec.model_version if rec else None
        if kept and cache.has(kept):
            warnings.append(f"{d.name}: {found}; it goes on with the version it has")
            deployments.append(_at(d, kept, cache))
        else:
            unavailable[d.id] = str(found)
            deployments.append(d)
    return replace(desired, deployments=tuple(deployments)), Models(
        listings, unavailable, tuple(warnings)
    )


def _local(desired: DesiredState) -> bool:
    """The engine runs containers on this machine, where the cache is."""
    engine = desired.repo.settings.engine
    host = engine.host or os.environ.get("DOCKER_HOST") or "unix://"
    return engine.kind == "docker" and host.startswith("unix:")


def _at(d: DesiredDeployment, version: str, cache: ModelCache) -> DesiredDeployment:
    spec = replace(d.spec, model_version=version, model_path=str(cache.path(version)))
    return replace(d, spec=spec)


def prepare(models: Models, cache: ModelCache, spec_version: str | None) -> Path | None:
    """Download a spec's model into the cache (once per version). Raises StoreError."""
    if spec_version is None or spec_version not in models.listings:
        return None
    return cache.fetch(models.listings[spec_version])


def evict_models(
    desired: DesiredState, snapshot: Snapshot, cache: ModelCache | None = None
) -> list[str]:
    """Keep the host's model cache within `Settings.spec.modelCacheSize`: least recently used
    models go first, never one a deployment declares or last ran."""
    cache = cache or default_cache()
    if not cache.root.is_dir():
        return []
    keep = {d.spec.model_version for d in desired.deployments if d.spec.model_version}
    keep |= {r.model_version for r in snapshot.records.values() if r.model_version}
    return cache.evict(desired.repo.settings.model_cache_size, keep)
