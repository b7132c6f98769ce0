"""Engine backends: the only code that talks to an engine, behind one interface (`base.Backend`).

`connect` is the one way in: it picks the backend the Settings ask for (`spec.engine.kind`:
Docker, or Docker Swarm) and hands back a `Backend`; nothing else constructs one of an engine
or connects to it. The core, the faces and the AI API see the neutral records of `base` only.
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
    ModelHosts,
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
    "ModelHosts",
    "NotFound",
    "Observed",
    "Replica",
    "connect",
]

DEFAULT_KIND = "docker"
KINDS = ("docker", "swarm")


def connect(settings: Settings | None = None, timeout: float = 60) -> Backend:
    """The backend `settings` choose (`spec.engine`; None: the default, Docker at DOCKER_HOST).
    Nothing is sent until the first call, which says whether the engine is down
    (EngineUnreachable)."""
    engine = settings.engine if settings is not None else None
    kind = engine.kind if engine is not None else DEFAULT_KIND
    # Imported here: whoever only reads neutral records never loads an engine's backend.
    if kind == "docker":
        from .docker.backend import DockerBackend
        from .docker.engine import Engine

        return DockerBackend(Engine.connect(timeout, engine.host if engine else None))
    if kind == "swarm":
        assert engine is not None
        from .swarm.backend import connect as swarm

        return swarm(engine, timeout)
    raise UserError(
        f"the Settings name an unknown engine kind {kind!r} (known: {', '.join(KINDS)})"
    )
