"""Human-readable output for the command line: plans, progress and status tables.

Plain, stable text when the output is not a terminal (golden tests and CI logs rely on it);
colour and a live progress bar only on a terminal.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import click

from ..core.plan import Action, Plan

_COLOURS = {
    Action.CREATE: "green",
    Action.UPDATE: "yellow",
    Action.REPLACE: "yellow",
    Action.STOP: "red",
    Action.DELETE: "red",
}


def plan_text(plan: Plan, colour: bool = False) -> list[str]:
    lines = []
    for change in plan.changes:
        group = "" if change.resource_group == "default" else f" [{change.resource_group}]"
        head = f"{change.symbol:>3} {change.action.value:<7} {change.name}{group}"
        head += f" ({change.deployment_id})"
        if colour:
            head = click.style(head, fg=_COLOURS[change.action])
        lines.append(f"{head}: {change.cause}")
        if change.failure:
            lines.append(f"      will fail: {change.failure}")
        if change.gpus:
            lines.append(
                f"      GPUs: {', '.join(change.gpus)}"
                + (" (stop first)" if change.stop_first else "")
            )
    for pending in plan.settle:
        lines.append(
            f"    wait    {pending.desired.name} ({pending.desired.id}): containers run; "
            "readiness not confirmed yet"
        )
    for warning in plan.warnings:
        lines.append(
            ("warning: " if not colour else click.style("warning: ", fg="yellow")) + warning
        )
    lines.append(plan.summary())
    return lines


class Progress:
    """Reports apply's outcomes: one line per finished deployment, under a live bar on a
    terminal. Callable as apply's reporter; `start` once the plan is accepted."""

    def __init__(self, live: bool) -> None:
        self._live = live
        self._lock = threading.Lock()
        self._bar: Any = None
        self._task: Any = None

    def start(self, total: int) -> None:
        if not self._live or total == 0:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, SpinnerColumn, TextColumn
        from rich.progress import Progress as Bar

        self._bar = Bar(
            SpinnerColumn(),
            TextColumn("applying"),
            BarColumn(),
            MofNCompleteColumn(),
            console=Console(file=sys.stderr),
            transient=True,
        )
        self._bar.start()
        self._task = self._bar.add_task("apply", total=total)

    def __call__(self, name: str, line: str) -> None:
        with self._lock:
            if self._bar is None:
                click.echo(line)
                return
            self._bar.console.print(line, markup=False, highlight=False)
            self._bar.advance(self._task)

    def note(self, name: str, line: str) -> None:
        """A line of progress (a model's download): printed, not counted as done."""
        with self._lock:
            text = f"{name}: {line}"
            if self._bar is None:
                click.echo(text, err=True)
            else:
                self._bar.console.print(text, markup=False, highlight=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def status_table(items: list[dict[str, Any]]) -> str:
    if not items:
        return "no deployments"
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, pad_edge=False, show_edge=False)
    columns = ("NAME", "ID", "STATUS", "TARGET", "REPLICAS", "CONFIGURATION", "URL", "MESSAGE")
    for column in columns:
        table.add_column(column, overflow="fold")
    for s in items:
        name = (
            s["name"] if s["resourceGroup"] == "default" else f"{s['name']} [{s['resourceGroup']}]"
        )
        cells = (
            name,
            s["id"],
            s["status"],
            s["targetStatus"],
            replicas_text(s),
            s["configurationId"],
            s["deploymentUrl"],
            s["statusMessage"],
        )
        table.add_row(*(Text(c or "") for c in cells))  # Text: no markup in user data
    console = Console(width=200, no_color=True, highlight=False)
    with console.capture() as captured:
        console.print(table)
    return "\n".join(line.rstrip() for line in captured.get().splitlines())


def replicas_text(s: dict[str, Any]) -> str:
    """Replicas serving / asked for, and an autoscaled deployment's bounds: "2/3 (1-4)";
    "0/0 (0-1)" is one scaled to zero."""
    scaling = (s.get("details") or {}).get("scaling") or {}
    desired = scaling.get("desiredReplicas")
    if desired is None:
        return ""
    text = f"{scaling.get('currentReplicas', 0)}/{desired}"
    if scaling.get("autoscaled"):
        predictor = (scaling.get("backendDetails") or {}).get("predictor") or {}
        text += f" ({predictor.get('minReplicas')}-{predictor.get('maxReplicas')})"
    return text


def engine_lines(engine: dict[str, Any]) -> str:
    """A Swarm's nodes under the status table: where replicas can run, and which cannot."""
    lines = [f"\nengine: {engine['kind']} at {engine.get('host', '?')}"]
    for n in engine.get("nodes", ()):
        gpus = f", {n['gpus']} GPU" if n.get("gpus") else ""
        lines.append(
            f"  node {n['hostname']} {n['address']}: {n['role']}, {n['state']}, "
            f"{n['availability']}{gpus}"
        )
    return "\n".join(lines)
