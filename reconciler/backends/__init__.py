"""Engine backends: the only code that talks to an engine, behind one interface (`base.Backend`).

`connect` is the one way in: it picks the backend the Settings ask for (Docker, the only one so
far) and hands back a `Backend`; nothing else constructs one of an engine or connects to it.
The core, the faces and the AI API see the neutral records of `base` only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import UserError
from .base import (
    Backend,
    Capabilities,
    Converged,
    ConvergeFailed,
    EngineError,
    EngineUnreachable,
    Event,
    EventStream,
    Intent,
    Interrupted,
    LogLine,
    NotFound,
    Observed,
    Replica,
)

if TYPE_CHECKING:
    from ..manifests.kinds import Settings

__all__ = [
    "Backend",
    "Capabilities",
    "ConvergeFailed",
    "Converged",
    "EngineError",
    "EngineUnreachable",
    "Event",
    "EventStream",
    "Intent",
    "Interrupted",
    "LogLine",
    "NotFound",
    "Observed",
    "Replica",
    "connect",
]

DEFAULT_KIND = "docker"


def connect(settings: Settings | None = None, timeout: float = 60) -> Backend:
    """The backend `settings` choose (None: the default, Docker at DOCKER_HOST). Nothing is
    sent until the first call, which says whether the engine is down (EngineUnreachable)."""
    # Settings name no backend yet; the Swarm backend adds the field and its branch here.
    kind = getattr(settings, "backend", None) or DEFAULT_KIND
    if kind == "docker":
        # Imported here: whoever only reads neutral records never loads the Docker backend.
        from .docker.backend import DockerBackend
        from .docker.engine import Engine

        return DockerBackend(Engine.connect(timeout))
    raise UserError(f"the Settings name an unknown backend {kind!r} (known: {DEFAULT_KIND})")
