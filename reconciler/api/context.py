"""What the AI API's endpoints share: the `ApiContext` (the GitOps root, its desired state,
write-back, reconcile trigger and backend), and the dependencies that hand it and the caller
(who, in which resource group) to each endpoint.

The backend is used in two small methods only, `statuses` and `log_lines`, so that the
endpoints never see it.
"""

# No `from __future__ import annotations`: FastAPI reads the dependencies' annotations at
# runtime.
import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Header, Request

from ..backends import Backend, EngineUnreachable, LogLine, Observed
from ..core.logs import log_window
from ..core.observe import observe
from ..core.record import Snapshot, read_snapshot, snapshot_version
from ..core.status import deployment_statuses
from ..errors import ManifestError
from ..files import FileVersion, file_version
from ..manifests.desired import DesiredState, desired_state
from ..manifests.sources import yaml_paths
from .auth import AuthError, Credentials, Identity
from .errors import ApiError
from .writeback import WriteBack, Written

ANONYMOUS = Identity("anonymous", "anonymous", ("*",))


@dataclass
class Caller:
    identity: Identity
    resource_group: str


class ApiContext:
    """What the endpoints share: the root, its current desired state, writes and reconciles."""

    def __init__(
        self,
        root: Path,
        backend: Backend,
        credentials: Credentials | None,
        trigger: Callable[[str], None],
        api_url: str | None = None,
        recent: Callable[[str], Observed | None] | None = None,
    ) -> None:
        self.root = root
        self.backend = backend
        # An instance's containers as someone listed them a moment ago (serve's routing
        # table), or None: statuses list them then.
        self.recent = recent
        self.credentials = credentials  # None: --no-auth
        self.trigger = trigger
        self.api_url = api_url
        self.writeback = WriteBack(root)
        self._lock = threading.Lock()
        self._stamp: tuple[tuple[str, FileVersion | None], ...] | None = None
        self._state: DesiredState | None = None
        self.problems: tuple[str, ...] = ()
        self._snapshot: tuple[tuple[FileVersion, str], Snapshot] | None = None

    def _files_stamp(self) -> tuple[tuple[str, FileVersion | None], ...]:
        """Which manifest files exist, and which version of each: a cheap change detector."""
        out = []
        for path in yaml_paths(self.root):
            with contextlib.suppress(OSError):  # unreadable: the next look sees it again
                out.append((str(path), file_version(path)))
        return tuple(out)

    def state(self) -> DesiredState:
        """The desired state, reloaded when a manifest file changed; the last valid one (and
        its problems noted) while the manifests are broken."""
        with self._lock:
            stamp = self._files_stamp()
            if stamp != self._stamp:
                try:
                    self._state = desired_state(self.root)
                    self.problems = ()
                except ManifestError as exc:
                    self.problems = tuple(exc.lines())
                self._stamp = stamp
            if self._state is None:
                raise ApiError(
                    503,
                    "the manifests are invalid; fix them (reconciler validate): "
                    + "; ".join(self.problems[:3]),
                )
            return self._state

    def adopt(self, written: Written) -> None:
        with self._lock:
            self._state = written.desired
            self._stamp = self._files_stamp()
            self.problems = ()

    # -- the backend's uses ---------------------------------------------------------------------

    def snapshot(self, state: DesiredState) -> Snapshot:
        """The recorded snapshot, parsed again only when its file changed (a pass wrote it):
        with hundreds of deployments, parsing it costs more than the rest of a status list.
        Callers only read it."""
        version = snapshot_version(self.root)  # (before reading: never newer than the file)
        key = (version, state.repo.instance) if version is not None else None
        cached = self._snapshot
        if key is not None and cached is not None and cached[0] == key:
            return cached[1]
        snapshot = read_snapshot(self.root, state.repo.instance)
        if key is not None:
            self._snapshot = (key, snapshot)
        return snapshot

    def statuses(self, state: DesiredState, base_url: str) -> list[dict[str, Any]]:
        snapshot = self.snapshot(state)
        observed, problem = None, None
        if self.recent is not None:
            observed = self.recent(state.repo.instance)
        if observed is None:
            try:
                observed = observe(self.backend, state.repo.instance, images=False)
            except EngineUnreachable as exc:
                problem = str(exc)
        api_url = self.api_url or state.repo.settings.api_url or base_url
        return deployment_statuses(snapshot, state, observed, problem, api_url=api_url)

    def log_lines(
        self, state: DesiredState, deployment_id: str, since: datetime, until: datetime | None
    ) -> list[LogLine] | None:
        """What the deployment's replicas wrote from `since` to `until`, secrets redacted; None
        when none runs (a DEAD deployment's kept lines are in the state)."""
        declared = state.find_declared(deployment_id)
        if declared is None:
            # No longer declared (its container runs until the next pass): which of its values
            # are secret is no longer known, so no live line can be redacted or shown; only
            # the lines the state kept, redacted when they were kept.
            return None
        return log_window(
            self.backend, state.repo.instance, deployment_id, since, until, declared.spec
        )


# -- the endpoints' dependencies --------------------------------------------------------------


def context(request: Request) -> ApiContext:
    """The app's context (create_app keeps it in app.state)."""
    ctx: ApiContext = request.app.state.context
    return ctx


ContextDep = Annotated[ApiContext, Depends(context)]


def authenticate(credentials: Credentials | None, authorization: str | None) -> Identity:
    if credentials is None:
        return ANONYMOUS
    if not authorization or not authorization.lower().startswith("bearer "):
        raise ApiError(401, "missing bearer token: get one at /oauth/token")
    try:
        return credentials.verify(authorization[7:].strip())
    except AuthError as exc:
        raise ApiError(401, str(exc)) from None


READS = frozenset({"GET", "HEAD", "OPTIONS"})


def caller(
    request: Request,
    ctx: ContextDep,
    authorization: Annotated[str | None, Header()] = None,
    ai_resource_group: Annotated[
        str | None, Header(alias="AI-Resource-Group", max_length=253)
    ] = None,
) -> Caller:
    """Who calls (their bearer token checked), in which resource group they may act."""
    identity = authenticate(ctx.credentials, authorization)
    group = ai_resource_group or "default"
    if not identity.may_use(group):
        raise ApiError(403, f"client {identity.name} may not use resource group {group}")
    if identity.read_only and request.method not in READS:
        raise ApiError(403, f"client {identity.name} is read-only: it may not change anything")
    return Caller(identity, group)


CallerDep = Annotated[Caller, Depends(caller)]


def base_url(request: Request) -> str:
    """This server's URL as the relay names it (server.ApiRelay): its own host:port, or what a
    trusted proxy said; never a caller's Host."""
    return str(request.base_url).rstrip("/")
