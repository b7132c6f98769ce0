"""Load: a GitOps root's YAML files → schema-checked, typed manifest objects.

`load` never raises for bad manifests: it returns what is valid together with every problem
found, so that one `validate` run reports everything at once. Callers that act on the host
must refuse to act while any problem exists (see `desired.desired_state`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..errors import Problem
from . import crosscheck, schema
from .ids import default_instance, deployment_id
from .kinds import (
    DEFAULT_RESOURCE_GROUP,
    DEFAULT_UNREADY_RESTART_SECONDS,
    Artifact,
    ArtifactInput,
    Configuration,
    Deployment,
    EngineSettings,
    Model,
    ModelVersion,
    Parameter,
    Repository,
    ResourcePlan,
    ServingTemplate,
    Settings,
)
from .resource_plans import BUILTIN, parse_memory
from .sources import Document, SourceFile, parse, read_tree

_SCENARIO_ID = "scenarios.ai.sap.com/id"


@dataclass
class _Collected:
    """Typed objects by kind, in file order, plus what was declared but broken."""

    templates: list[ServingTemplate] = field(default_factory=list)
    configurations: list[Configuration] = field(default_factory=list)
    deployments: list[Deployment] = field(default_factory=list)
    artifacts: list[Artifact] = field(default_factory=list)
    plans: list[ResourcePlan] = field(default_factory=list)
    settings: list[Settings] = field(default_factory=list)
    models: list[Model] = field(default_factory=list)
    broken: set[tuple[str, str, str]] = field(default_factory=set)  # (kind, rg, name)


def load(root: Path, files: Iterable[SourceFile] | None = None) -> tuple[Repository, list[Problem]]:
    """Load the root's manifests (or the given files, e.g. read from a git revision)."""
    root = root.resolve()  # host paths in specs are absolute
    problems: list[Problem] = []
    if files is None:
        files, problems = read_tree(root)
    found = _Collected()
    for file in files:
        docs, parse_problems = parse(file)
        problems += parse_problems
        for doc in docs:
            problems += _collect(doc, found)
    settings = found.settings[0] if found.settings else Settings()
    instance = settings.instance or default_instance(root)
    deployments = [
        d if d.id else _with_id(d, instance)
        for d in sorted(found.deployments, key=lambda d: (d.resource_group, d.name))
    ]
    repo = Repository(
        root=root,
        instance=instance,
        settings=settings,
        templates=MappingProxyType(_first_by(found.templates, lambda t: t.name)),
        configurations=MappingProxyType(
            _first_by(found.configurations, lambda c: (c.resource_group, c.name))
        ),
        artifacts=MappingProxyType(
            _first_by(found.artifacts, lambda a: (a.resource_group, a.name))
        ),
        deployments=tuple(_first_by(deployments, lambda d: (d.resource_group, d.name)).values()),
        plans=MappingProxyType({**BUILTIN, **_first_by(found.plans, lambda p: p.name)}),
        models=MappingProxyType(_first_by(found.models, lambda m: m.name)),
    )
    declared = [
        *found.templates,
        *found.configurations,
        *deployments,
        *found.artifacts,
        *found.plans,
        *found.settings,
        *found.models,
    ]
    problems += crosscheck.check(repo, declared, found.broken)
    return repo, problems


def _first_by(items: list[Any], key: Callable[[Any], Any]) -> dict[Any, Any]:
    """Index by key keeping the first occurrence; duplicates are reported by crosscheck."""
    out: dict[Any, Any] = {}
    for item in items:
        out.setdefault(key(item), item)
    return out


def _with_id(d: Deployment, instance: str) -> Deployment:
    return replace(d, id=deployment_id(instance, d.resource_group, d.name))


def _collect(doc: Document, found: _Collected) -> list[Problem]:
    body = doc.body
    errors = schema.check(body)
    if errors:
        if isinstance(body, dict) and isinstance(body.get("metadata"), dict):
            meta = body["metadata"]
            name = meta.get("name")
            if isinstance(name, str):
                rg = meta.get("resourceGroup", DEFAULT_RESOURCE_GROUP)
                found.broken.add((str(body.get("kind")), str(rg), name))
        return [doc.problem(pointer, message) for pointer, message in errors]
    kind = body["kind"]
    meta, spec = body["metadata"], body["spec"]
    if kind == "ServingTemplate":
        found.templates.append(_template(doc, meta, spec))
    elif kind == "Configuration":
        found.configurations.append(_configuration(doc, meta, spec))
    elif kind == "Deployment":
        found.deployments.append(_deployment(doc, meta, spec))
    elif kind == "Artifact":
        found.artifacts.append(_artifact(doc, meta, spec))
    elif kind == "ResourcePlan":
        found.plans.append(_plan(doc, meta, spec))
    elif kind == "Settings":
        found.settings.append(_settings(doc, spec))
    elif kind == "Model":
        found.models.append(_model(doc, meta, spec))
    return []


def _pairs(mapping: dict[str, Any] | None) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((mapping or {}).items()))


def _inputs(spec: dict[str, Any]) -> tuple[tuple[Parameter, ...], tuple[ArtifactInput, ...]]:
    inputs = spec.get("inputs") or {}
    params = tuple(
        Parameter(p["name"], p.get("default"), p.get("description"))
        for p in inputs.get("parameters") or ()
    )
    arts = tuple(
        ArtifactInput(a["name"], a.get("kind"), a.get("description"))
        for a in inputs.get("artifacts") or ()
    )
    return params, arts


def _template(doc: Document, meta: dict[str, Any], spec: dict[str, Any]) -> ServingTemplate:
    params, arts = _inputs(spec)
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    if doc.body["apiVersion"] == schema.AICORE_API_VERSION:
        return ServingTemplate(
            name=meta["name"],
            form="kserve",
            scenario_id=labels[_SCENARIO_ID],
            scenario_name=annotations.get("scenarios.ai.sap.com/name"),
            scenario_description=annotations.get("scenarios.ai.sap.com/description"),
            version_id=labels.get("ai.sap.com/version"),
            description=annotations.get("executables.ai.sap.com/description"),
            parameters=params,
            artifacts=arts,
            cascade_update=annotations.get("executables.ai.sap.com/cascade-update-deployments")
            == "true",
            labels=_pairs(labels),
            annotations=_pairs(annotations),
            body=spec["template"],
            body_pointer="/spec/template",
            doc=doc,
        )
    return ServingTemplate(
        name=meta["name"],
        form="container",
        scenario_id=spec["scenarioId"],
        scenario_name=spec.get("scenarioName"),
        scenario_description=spec.get("scenarioDescription"),
        version_id=spec.get("versionId"),
        description=spec.get("description"),
        parameters=params,
        artifacts=arts,
        cascade_update=bool(spec.get("cascadeUpdateDeployments", False)),
        labels=_pairs(labels),
        annotations=_pairs(annotations),
        body=spec["container"],
        body_pointer="/spec/container",
        doc=doc,
    )


def _configuration(doc: Document, meta: dict[str, Any], spec: dict[str, Any]) -> Configuration:
    return Configuration(
        name=meta["name"],
        resource_group=meta.get("resourceGroup", DEFAULT_RESOURCE_GROUP),
        executable_id=spec["executableId"],
        scenario_id=spec["scenarioId"],
        version_id=spec.get("versionId"),
        parameter_bindings=tuple((b["key"], b["value"]) for b in spec.get("parameterBindings", ())),
        artifact_bindings=tuple(
            (b["key"], b["artifactId"]) for b in spec.get("inputArtifactBindings", ())
        ),
        labels=_pairs(meta.get("labels")),
        doc=doc,
    )


def _deployment(doc: Document, meta: dict[str, Any], spec: dict[str, Any]) -> Deployment:
    return Deployment(
        name=meta["name"],
        resource_group=meta.get("resourceGroup", DEFAULT_RESOURCE_GROUP),
        id="",  # derived once the instance is known
        configuration_id=spec["configurationId"],
        target_status=spec.get("targetStatus", "RUNNING"),
        ttl=spec.get("ttl"),
        labels=_pairs(meta.get("labels")),
        doc=doc,
    )


def _artifact(doc: Document, meta: dict[str, Any], spec: dict[str, Any]) -> Artifact:
    return Artifact(
        name=meta["name"],
        resource_group=meta.get("resourceGroup", DEFAULT_RESOURCE_GROUP),
        kind=spec["kind"],
        url=spec["url"],
        scenario_id=spec["scenarioId"],
        description=spec.get("description"),
        labels=_pairs(meta.get("labels")),
        doc=doc,
    )


def _plan(doc: Document, meta: dict[str, Any], spec: dict[str, Any]) -> ResourcePlan:
    return ResourcePlan(
        name=meta["name"],
        cpus=float(spec["cpus"]),
        memory=parse_memory(spec["memory"]),
        gpus=int(spec.get("gpus", 0)),
        gpu_type=spec.get("gpuType"),
        description=spec.get("description"),
        constraints=tuple(" ".join(c.split()) for c in spec.get("constraints", ())),
        doc=doc,
    )


def _settings(doc: Document, spec: dict[str, Any]) -> Settings:
    return Settings(
        instance=spec.get("instance"),
        publish_address=spec.get("publishAddress", "127.0.0.1"),
        api_url=spec["apiUrl"].rstrip("/") if spec.get("apiUrl") else None,
        retirement_warning_days=spec.get("retirementWarningDays", 30),
        gpus=tuple(spec.get("gpus", ())),
        artifact_roots=tuple(spec.get("artifactRoots", ())),
        object_store_endpoints=tuple(e.rstrip("/") for e in spec.get("objectStoreEndpoints", ())),
        model_cache_size=parse_memory(spec["modelCacheSize"])
        if "modelCacheSize" in spec
        else Settings.model_cache_size,
        unready_restart_seconds=spec.get("unreadyRestartSeconds", DEFAULT_UNREADY_RESTART_SECONDS),
        self_heal=spec.get("selfHeal", True),
        engine=_engine(spec.get("engine") or {}),
        doc=doc,
    )


def _engine(spec: dict[str, Any]) -> EngineSettings:
    return EngineSettings(
        kind=spec.get("kind", "docker"),
        host=spec.get("host"),
        nodes=tuple(spec.get("nodes", ())),
        constraints=tuple(" ".join(c.split()) for c in spec.get("constraints", ())),
        placement_timeout=spec.get("placementTimeoutSeconds", 60),
        model_cache=spec.get("modelCache", EngineSettings.model_cache).rstrip("/") or "/",
    )


def _model(doc: Document, meta: dict[str, Any], spec: dict[str, Any]) -> Model:
    return Model(
        name=meta["name"],
        executable_id=spec["executableId"],
        display_name=spec.get("displayName"),
        provider=spec.get("provider"),
        description=spec.get("description"),
        versions=tuple(
            ModelVersion(
                name=v["name"],
                is_latest=v.get("isLatest", False),
                deprecated=v.get("deprecated", False),
                retirement_date=v.get("retirementDate"),
                context_length=v.get("contextLength"),
                capabilities=tuple(v.get("capabilities", ())),
                streaming_supported=v.get("streamingSupported", False),
                suggested_replacements=tuple(v.get("suggestedReplacements", ())),
                parameters=_pairs(v.get("parameters")),
            )
            for v in spec["versions"]
        ),
        doc=doc,
    )
