"""A deployment's log lines: its containers' output, or what was kept when it became DEAD."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from ..backends.docker.engine import Engine
from ..errors import UserError
from ..manifests.desired import desired_state
from ..manifests.spec import redact
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
    engine = Engine.connect()
    containers = (
        observe(engine, desired.repo.instance, images=False).by_deployment().get(found.id, [])
    )
    if not containers:
        record = read_snapshot(root, desired.repo.instance).records.get(found.id)
        if record and record.last_logs:
            yield from record.last_logs
            return
        status = record.status if record else "not reconciled yet"
        raise UserError(f"deployment {found.name} has no container ({status}): no log lines")
    several = len(containers) > 1
    for c in sorted(containers, key=lambda c: (c.replica, c.created)):
        raw = engine.logs(
            c.id, tail=tail if tail is not None else "all", since=since, timestamps=timestamps
        )
        prefix = f"[{c.replica}] " if several else ""
        for line in redact(raw.decode(errors="replace").splitlines(), found.spec):
            yield prefix + line
