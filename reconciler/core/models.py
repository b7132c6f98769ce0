"""Models in object stores, between render and plan: each `ai://`, `s3://` or `https://` model
artifact is read from its store (its objects and their version), so that the plan knows the
version (part of the config hash: a new upload under the same path replaces the containers)
and apply knows what to download into the host's model cache before a container starts.

A store that cannot be read (wrong secret, missing path, down) does not stop a deployment
that serves: while its recorded version is in the cache it goes on with that one (a warning
says why); otherwise the deployment cannot start and becomes DEAD with the store's one-line
reason, retried by the next pass that can read the store (its config hash then differs).

A URL may pin a version (`?version=<hex>`, a prefix of the version `plan` shows): the store's
version is taken only when it matches; once the store has moved on, a deployment goes on with
the pinned version while the cache has it (a warning), and is DEAD with what to do otherwise.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from ..backends import ModelHosts
from ..manifests.desired import DesiredDeployment, DesiredState
from ..manifests.render import tenants_uri
from ..manifests.store_urls import (
    PIN_DIGITS,
    endpoint_problem,
    is_store_url,
    parse_store_url,
    split_pin,
)
from ..stores.artifacts import list_artifact
from ..stores.listing import Listing, StoreError
from ..stores.secrets import ObjectStoreSecrets, default_path
from .record import Snapshot

NO_MODEL_HOSTS = (
    "this engine's hosts cannot get models from object stores (an engine on another machine "
    "has no model cache here): use a file: URL on a path the engine's host has"
)


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
    cache: ModelHosts | None,
    secrets: ObjectStoreSecrets | None = None,
) -> tuple[DesiredState, Models]:
    """`desired` with each object-store model's version and cache path in its spec. `cache`:
    where the engine's hosts keep models (Backend.models)."""
    if not any(is_store_url(d.spec.model_uri) for d in desired.deployments):
        return desired, Models()
    secrets = secrets or ObjectStoreSecrets(default_path(desired.repo.instance))
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
        if cache is None:
            unavailable[d.id] = NO_MODEL_HOSTS
            deployments.append(d)
            continue
        refused = _refused(desired, d, uri)
        if refused is not None:
            unavailable[d.id] = refused
            deployments.append(d)
            continue
        where, pin = _pinned(uri)
        key = (where, d.deployment.resource_group)  # (pins of one model: listed once)
        if key not in seen:
            try:
                seen[key] = list_artifact(uri, d.deployment.resource_group, secrets)
            except StoreError as exc:
                seen[key] = exc
        found = seen[key]
        if isinstance(found, Listing) and (pin is None or found.version.startswith(pin)):
            listings[found.version] = found
            deployments.append(_at(d, found.version, cache))
            continue
        kept = _kept(d, snapshot, cache, pin)
        if isinstance(found, Listing):  # the store has moved on from the pin
            assert pin is not None
            now = found.version[:PIN_DIGITS]
            if kept:
                warnings.append(
                    f"{d.name}: {_shown(uri)} is pinned to version {pin}; the store has a newer "
                    f"one ({now}): it goes on with {pin} from the model cache"
                )
            else:
                unavailable[d.id] = (
                    f"{_shown(uri)}: pinned to version {pin}, the store has {now} and the model "
                    f"cache has no {pin}: pin ?version={now} (or no version) to take the "
                    f"store's, or put version {pin} back in the store"
                )
        elif kept:
            warnings.append(f"{d.name}: {found}; it goes on with the version it has")
        else:
            unavailable[d.id] = str(found)
        deployments.append(_at(d, kept, cache) if kept else d)
    return replace(desired, deployments=tuple(deployments)), Models(
        listings, unavailable, tuple(warnings)
    )


def _refused(desired: DesiredState, d: DesiredDeployment, uri: str) -> str | None:
    """Why the reconciler may not download a tenant's https:// model: its origin is not in
    Settings spec.objectStoreEndpoints (SSRF from this host). The AI API refuses such an
    artifact when it is made; this also covers a URL a tenant's configuration made the
    template write (a parameter as STORAGE_URI) and an origin an operator removed since."""
    try:
        parsed = parse_store_url(uri)
    except ValueError:
        return None  # (the listing says what is wrong with it)
    # render's rule for whose a model URL is (the same as for file: URLs)
    if parsed.scheme != "https" or not tenants_uri(desired.repo, d.configuration, uri):
        return None
    problem = endpoint_problem(desired.repo.settings.object_store_endpoints, parsed.origin)
    return f"{_shown(uri)}: {problem}" if problem else None


def _pinned(uri: str) -> tuple[str, str | None]:
    """The URL without its pin (`?version=<hex>`), and the pin (validation has refused a bad
    one: it is then no pin here, and the store's listing says what is wrong)."""
    try:
        return split_pin(uri)
    except ValueError:
        return uri, None


def _shown(uri: str) -> str:
    """The URL for a message: no query (an https:// one may hold a signature) and no pin."""
    return uri.split("?", 1)[0]


def _kept(
    d: DesiredDeployment, snapshot: Snapshot, cache: ModelHosts, pin: str | None
) -> str | None:
    """A version in the cache the deployment can go on with when the store gives none it may
    take: the one it last ran; pinned, any version the pin matches that a deployment of its
    resource group ran (the version is a digest of the objects, where they were read from and
    as whom, so that copy is the same model; another tenant's never is, whatever it pins)."""
    own = snapshot.records.get(d.id)
    candidates = [own.model_version if own else None]
    if pin is not None:
        group = d.deployment.resource_group
        candidates += sorted(
            r.model_version or "" for r in snapshot.records.values() if r.resource_group == group
        )
    for version in candidates:
        if version and (pin is None or version.startswith(pin)) and cache.has(version):
            return version
    return None


def _at(d: DesiredDeployment, version: str, cache: ModelHosts) -> DesiredDeployment:
    spec = replace(d.spec, model_version=version, model_path=str(cache.path(version)))
    return replace(d, spec=spec)


def prepare(
    models: Models,
    cache: ModelHosts | None,
    spec_version: str | None,
    say: Callable[[str], None] | None = None,
) -> None:
    """Download a spec's model into the cache (once per version), saying how it goes when it
    is large. Raises StoreError."""
    if cache is None or spec_version is None or spec_version not in models.listings:
        return
    found = models.listings[spec_version]
    meter = DownloadMeter(found.location.describe(), say) if say is not None else None
    cache.fetch(found, progress=meter)
    if meter is not None:
        meter.finished()


class DownloadMeter:
    """Progress lines for a large download (LARGE bytes or more): when it starts or resumes,
    every EVERY seconds with its share, bytes and speed, and when it is done."""

    LARGE = 32 * 1024 * 1024
    EVERY = 5.0

    def __init__(self, what: str, say: Callable[[str], None]) -> None:
        self.what = what
        self.say = say
        self.lock = threading.Lock()
        self.started = time.monotonic()
        self.last = self.started
        self.first: int | None = None  # bytes already there when it began (a resumed one)
        self.done = self.total = 0

    def __call__(self, done: int, total: int) -> None:
        with self.lock:
            self.done, self.total = done, total
            if total < self.LARGE:
                return
            now = time.monotonic()
            if self.first is None:
                self.first = done
                resumed = f", resuming at {_mb(done)}" if done else ""
                self.say(f"downloading the model {self.what} ({_mb(total)}{resumed})")
            elif now - self.last >= self.EVERY and done < total:
                self.last = now
                speed = (done - self.first) / max(now - self.started, 1e-6)
                self.say(
                    f"downloading the model: {100 * done // total}% ({_mb(done)} of "
                    f"{_mb(total)}, {_mb(speed)}/s)"
                )

    def finished(self) -> None:
        if self.first is not None:
            seconds = time.monotonic() - self.started
            self.say(f"model downloaded: {_mb(self.total)} in {seconds:.1f}s")


def _mb(count: float) -> str:
    return f"{count / 1e6:.0f} MB" if count >= 1e6 else f"{count / 1e3:.0f} kB"


def evict_models(desired: DesiredState, snapshot: Snapshot, cache: ModelHosts | None) -> list[str]:
    """Keep the hosts' model cache within `Settings.spec.modelCacheSize`: least recently used
    models go first, never one a deployment declares or last ran."""
    if cache is None:
        return []
    keep = {d.spec.model_version for d in desired.deployments if d.spec.model_version}
    keep |= {r.model_version for r in snapshot.records.values() if r.model_version}
    return cache.evict(desired.repo.settings.model_cache_size, keep, desired.repo.instance)
