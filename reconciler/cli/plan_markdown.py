"""`reconciler plan --format markdown`: a plan as a merge-request comment.

The counts in the heading, one table row per deployment with its action and cause (what fails
and which GPUs, where a change says so), then warnings and errors: the same words as `plan`'s
text, so that a reviewer reads in the comment what `reconcile` will do once the change is
merged. Cells are escaped for GitHub's and GitLab's Markdown: a name, URL or message can
neither break the table nor bring HTML, links or mentions into the comment.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from ..core.plan import Action, Plan
from ..errors import Problem

MARKER = "<!-- reconciler-plan -->"  # lets a CI job find and update its own earlier comment
_ICONS = {
    Action.CREATE: "🟢",
    Action.UPDATE: "🟡",
    Action.REPLACE: "🟠",
    Action.STOP: "🔴",
    Action.DELETE: "🔴",
}
# What Markdown or HTML would read as syntax inside a table cell: emphasis, code, links and
# images ([ ]), HTML (< >), the cell separator, strikethrough, mentions (@), issue references
# (#); and what GitHub's autolinks catch (`://`, `www.`).
_SPECIAL = re.compile(r"([\\`*_{}\[\]<>#|~@])|(?<=[A-Za-z])(:)(?=//)|(?<=www)(\.)")


def cell(text: str) -> str:
    """`text` as plain words in one table cell: one line, its Markdown, HTML and autolink
    characters escaped (GitHub and GitLab both honour backslash escapes, also in tables)."""
    return _SPECIAL.sub(lambda m: "\\" + m.group(0), " ".join(str(text).split()))


def plan_markdown(plan: Plan, title: str = "reconciler plan") -> str:
    lines = [MARKER, f"### {cell(title)}: {_counts(plan)}", ""]
    revision = f"`{plan.revision[:12]}`" if plan.revision else "the working tree"
    lines.append(f"Manifests at {revision}.")
    lines.append("")
    if plan.problems:
        lines += [
            f"**❌ {len(plan.problems)} error(s): nothing can be applied until they are fixed.**",
            "",
            "| File | Where | Problem |",
            "|---|---|---|",
        ]
        for p in plan.problems:
            where = f"line {p.line}" if p.line else ""
            where = " ".join(w for w in (where, p.pointer or "") if w)
            lines.append(f"| {cell(p.file or '')} | {cell(where)} | {cell(p.message)} |")
        lines.append("")
    if plan.changes or plan.settle:
        lines += ["| | Deployment | Resource group | Action | Cause |", "|---|---|---|---|---|"]
        for c in plan.changes:
            cause = cell(c.cause)
            if c.failure:
                cause += f"<br>**will fail:** {cell(c.failure)}"
            if c.gpus:
                first = " (stop first)" if c.stop_first else ""
                cause += f"<br>GPUs: {cell(', '.join(c.gpus))}{first}"
            lines.append(
                f"| {_ICONS[c.action]} | {cell(c.name)} | {cell(c.resource_group)} "
                f"| {c.action.value} | {cause} |"
            )
        for pending in plan.settle:
            d = pending.desired
            lines.append(
                f"| ⏳ | {cell(d.name)} | {cell(d.deployment.resource_group)} | wait "
                "| containers run; readiness not confirmed yet |"
            )
        lines.append("")
    elif not plan.problems:
        lines += ["No changes: the hosts match the manifests.", ""]
    if plan.warnings:
        lines += [f"<details><summary>⚠️ {len(plan.warnings)} warning(s)</summary>", ""]
        lines += [f"- {cell(w)}" for w in plan.warnings]
        lines += ["", "</details>", ""]
    return "\n".join(lines)


def _counts(plan: Plan) -> str:
    if plan.problems:
        return f"{len(plan.problems)} error(s)"
    return plan.summary().removeprefix("Plan: ").rstrip(".")


def unplannable(problems: Iterable[Problem], revision: str | None) -> Plan:
    """A plan of manifests that do not load: their problems only."""
    return Plan(
        changes=(), problems=tuple(problems), warnings=(), settle=(), hashes={}, revision=revision
    )
