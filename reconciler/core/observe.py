"""Observe: what runs of this instance, as neutral records, from whichever backend runs it.

The first step of a pass (observe → plan → apply). The backend does the work in as few engine
calls as it can (Docker: one labelled container list and one image list, whatever the number
of deployments); this module only names the step for its callers.
"""

from __future__ import annotations

from ..backends import Backend, Observed


def observe(backend: Backend, instance: str, images: bool = True) -> Observed:
    """This instance's replicas and, for planning, the engine's images (`images=False` for
    callers that only show or route to replicas: one engine call instead of two on Docker)."""
    return backend.observe(instance, images)
