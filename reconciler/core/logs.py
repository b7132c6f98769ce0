"""A deployment's log lines: what its replicas wrote, or what was kept when it became DEAD.

For `reconciler logs` (`deployment_logs`) and the AI API (`log_window`), through whichever
backend runs the deployment; secrets the deployment was given are redacted in both.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from ..backends import Backend, LogLine, connect
from ..errors import UserError
from ..manifests.desired import desired_state
from ..manifests.spec import ContainerSpec, redact
from .observe import observe
from .record import read_snapshot


def deployment_logs(
    root: Path,
    name_or_id: str,
    resource_group: str | None = None,
    since: datetime | None = None,
    tail: int | None = None,
    timestamps: bool = False,
) -> Iterator[str]:
    desired = desired_state(root)
    found = desired.find(name_or_id, resource_group)
    backend = connect(desired.repo.settings)
    replicas = observe(backend, desired.repo.instance, images=False).by_deployment().get(found.id)
    if not replicas:
        record = read_snapshot(root, desired.repo.instance).records.get(found.id)
        if record and record.last_logs:
            yield from record.last_logs
            return
        status = record.status if record else "not reconciled yet"
        raise UserError(f"deployment {found.name} has no container ({status}): no log lines")
    several = len(replicas) > 1
    for c in sorted(replicas, key=lambda c: (c.replica, c.created)):
        lines = backend.logs(c, tail=tail, since=since, timestamps=timestamps)
        prefix = f"[{c.replica}] " if several else ""
        for line in redact(lines, found.spec):
            yield prefix + line


def log_window(
    backend: Backend,
    instance: str,
    deployment_id: str,
    since: datetime,
    until: datetime | None,
    spec: ContainerSpec | None,
) -> list[LogLine] | None:
    """The lines a deployment's replicas wrote from `since` to `until` (None: now), in no
    particular order, redacted with `spec` (the declared one; None: a deployment no longer
    declared). None when no replica of it runs (a DEAD deployment: its kept lines are in the
    state's record, `last_logs`)."""
    replicas = observe(backend, instance, images=False).by_deployment().get(deployment_id)
    if not replicas:
        return None
    out = []
    for replica in replicas:
        for line in backend.log_window(replica, since, until):
            if spec is not None:  # secrets never leave through the API
                line = replace(line, text=redact((line.text,), spec)[0])
            out.append(line)
    return out
