"""AI API resources (scenarios, executables, configurations, artifacts, deployments) as the
upstream API shapes them, built from the desired state and the deployment statuses.

Pure functions over plain data. Timestamps of manifest objects come from their files (when a
file last changed); deployments carry the reconciler's own timestamps.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..manifests.desired import DesiredState
from ..manifests.kinds import Artifact, Configuration, ServingTemplate
from ..manifests.sources import Document


def file_time(root: Path, doc: Document | None) -> str:
    """When the manifest holding `doc` last changed (ISO, UTC)."""
    moment = datetime.now(UTC)
    if doc is not None:
        with contextlib.suppress(OSError):  # a file removed meanwhile: now
            moment = datetime.fromtimestamp(os.stat(root / doc.file.path).st_mtime, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def labels(pairs: Iterable[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"key": k, "value": v} for k, v in pairs]


def scenarios(state: DesiredState) -> list[dict[str, Any]]:
    """Scenarios are declared by the templates that belong to them."""
    found: dict[str, dict[str, Any]] = {}
    for t in sorted(state.repo.templates.values(), key=lambda t: t.name):
        when = file_time(state.repo.root, t.doc)
        s = found.setdefault(
            t.scenario_id,
            {
                "id": t.scenario_id,
                "name": t.scenario_name or t.scenario_id,
                "description": t.scenario_description or "",
                "labels": [],
                "createdAt": when,
                "modifiedAt": when,
            },
        )
        s["createdAt"], s["modifiedAt"] = min(s["createdAt"], when), max(s["modifiedAt"], when)
        if t.scenario_name and s["name"] == t.scenario_id:
            s["name"] = t.scenario_name
    return sorted(found.values(), key=lambda s: s["id"])


def executable(state: DesiredState, t: ServingTemplate) -> dict[str, Any]:
    when = file_time(state.repo.root, t.doc)
    return {
        "id": t.name,
        "name": t.name,
        "description": t.description or "",
        "scenarioId": t.scenario_id,
        "versionId": t.version_id or "",
        "deployable": True,
        "parameters": [
            {
                "name": p.name,
                "type": "string",
                **({"default": p.default} if p.default is not None else {}),
                **({"description": p.description} if p.description else {}),
            }
            for p in t.parameters
        ],
        "inputArtifacts": [
            {
                "name": a.name,
                **({"kind": a.kind} if a.kind else {}),
                **({"description": a.description} if a.description else {}),
            }
            for a in t.artifacts
        ],
        "outputArtifacts": [],
        "labels": labels(t.labels),
        "createdAt": when,
        "modifiedAt": when,
    }


def executables(state: DesiredState, scenario_id: str) -> list[dict[str, Any]]:
    return [
        executable(state, t)
        for t in sorted(state.repo.templates.values(), key=lambda t: t.name)
        if t.scenario_id == scenario_id
    ]


def versions(state: DesiredState, scenario_id: str) -> list[dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for t in state.repo.templates.values():
        if t.scenario_id != scenario_id or not t.version_id:
            continue
        when = file_time(state.repo.root, t.doc)
        found.setdefault(
            t.version_id,
            {
                "id": t.version_id,
                "scenarioId": scenario_id,
                "description": "",
                "createdAt": when,
                "modifiedAt": when,
            },
        )
    return sorted(found.values(), key=lambda v: v["id"])


def configuration(state: DesiredState, c: Configuration) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": c.id,
        "name": c.name,
        "executableId": c.executable_id,
        "scenarioId": c.scenario_id,
        "parameterBindings": [{"key": k, "value": v} for k, v in c.parameter_bindings],
        "inputArtifactBindings": [{"key": k, "artifactId": a} for k, a in c.artifact_bindings],
        "createdAt": file_time(state.repo.root, c.doc),
    }
    if c.version_id:
        out["versionId"] = c.version_id
    return out


def artifact(state: DesiredState, a: Artifact) -> dict[str, Any]:
    when = file_time(state.repo.root, a.doc)
    return {
        "id": a.id,
        "name": a.name,
        "kind": a.kind,
        "url": a.url,
        "scenarioId": a.scenario_id,
        "description": a.description or "",
        "labels": labels(a.labels),
        "createdAt": when,
        "modifiedAt": when,
    }


def deployment(status: dict[str, Any], state: DesiredState | None) -> dict[str, Any]:
    """A `reconciler status` item in the upstream shape: required fields never null."""
    out = dict(status)
    out.pop("name", None)  # upstream deployments have no name; the manifests' is kept below
    declared = state.find_declared(status["id"]) if state else None
    fallback = (
        file_time(state.repo.root, declared.deployment.doc if declared else None) if state else None
    )
    out["createdAt"] = status.get("createdAt") or fallback
    out["modifiedAt"] = status.get("modifiedAt") or out["createdAt"]
    out["deploymentUrl"] = status.get("deploymentUrl") or ""
    out["configurationName"] = status.get("configurationName") or status.get("configurationId")
    out["targetStatus"] = status.get("targetStatus") or "RUNNING"
    out["labels"] = [{"key": "reconciler.name", "value": status["name"]}]
    return {k: v for k, v in out.items() if v is not None}


def models(state: DesiredState, scenario_id: str) -> list[dict[str, Any]]:
    """The model catalog of a scenario (its executables' models), in the upstream shape."""
    out = []
    for m in sorted(state.repo.models.values(), key=lambda m: m.name):
        template = state.repo.templates.get(m.executable_id)
        if template is None or template.scenario_id != scenario_id:
            continue
        out.append(
            {
                "model": m.name,
                "executableId": m.executable_id,
                "displayName": m.display_name or m.name,
                "provider": m.provider or "",
                "description": m.description or "",
                "accessType": "Local",
                "allowedScenarios": [{"scenarioId": scenario_id, "executableId": m.executable_id}],
                "versions": [
                    {
                        "name": v.name,
                        "isLatest": v.is_latest,
                        "deprecated": v.deprecated,
                        "retirementDate": v.retirement_date or "",
                        "contextLength": v.context_length,
                        "capabilities": list(v.capabilities),
                        "streamingSupported": v.streaming_supported,
                        "suggestedReplacements": list(v.suggested_replacements),
                    }
                    for v in m.versions
                ],
            }
        )
    return out
