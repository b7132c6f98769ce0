"""Cross-checks: the rules that span manifests (references, uniqueness, required inputs).

Every rule reports at the field that is wrong, and all problems are reported at once. A
reference to an object whose own document failed the schema is not reported again as
"not found": the schema problem already names the real cause.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

from ..errors import Problem, did_you_mean
from . import catalog
from .kinds import (
    Artifact,
    Configuration,
    Deployment,
    Repository,
    ResourcePlan,
    ServingTemplate,
    Settings,
)

TTL_MINIMUM_MINUTES = 10
_TTL = re.compile(r"^([0-9]+)([mMhHdD])$")
_MINUTES = {"m": 1, "h": 60, "d": 24 * 60}


def ttl_minutes(ttl: str) -> int:
    """Minutes of a schema-checked ttl such as `5h`."""
    match = _TTL.match(ttl)
    if not match:
        raise ValueError(f"not a ttl: {ttl!r}")
    return int(match.group(1)) * _MINUTES[match.group(2).lower()]


def check(
    repo: Repository, declared: Iterable[Any], broken: set[tuple[str, str, str]]
) -> list[Problem]:
    declared = list(declared)
    problems = list(_duplicates(declared))
    for config in repo.configurations.values():
        problems += _configuration(repo, config, broken)
    for deployment in repo.deployments:
        problems += _deployment(repo, deployment, broken)
    problems += catalog.check_models(repo)
    problems += _engine(repo)
    return problems


# Settings.spec.engine fields that mean something on a Swarm only.
_SWARM_ONLY = ("nodes", "constraints", "placementTimeoutSeconds", "modelCache")


def _engine(repo: Repository) -> list[Problem]:
    """Swarm's fields under an engine of another kind: set for nothing, most likely a
    forgotten `kind: swarm`."""
    settings, doc = repo.settings, repo.settings.doc
    if doc is None or settings.engine.kind == "swarm":
        return []
    spec = ((doc.body or {}).get("spec") or {}).get("engine") or {}
    return [
        doc.problem(
            f"/spec/engine/{name}",
            f"{name} is used only with kind: swarm (this engine is kind: {settings.engine.kind})",
        )
        for name in _SWARM_ONLY
        if name in spec
    ]


def _key(obj: Any) -> tuple[str, str, str]:
    kind = type(obj).__name__
    if isinstance(obj, Configuration | Deployment | Artifact):
        return kind, obj.resource_group, obj.name
    if isinstance(obj, Settings):
        return kind, "", ""
    return kind, "", obj.name


def _duplicates(declared: list[Any]) -> Iterator[Problem]:
    first: dict[tuple[str, str, str], Any] = {}
    for obj in declared:
        key = _key(obj)
        if key not in first:
            first[key] = obj
            continue
        other = first[key].doc.file.path
        kind, rg, name = key
        if isinstance(obj, Settings):
            yield obj.doc.problem("/kind", f"a second Settings document (the first is in {other})")
        elif isinstance(obj, ServingTemplate | ResourcePlan):
            yield obj.doc.problem("/metadata/name", f"duplicate {kind} {name!r} (also in {other})")
        else:
            yield obj.doc.problem(
                "/metadata/name",
                f"duplicate {kind} {name!r} in resource group {rg} (also in {other})",
            )


def _missing(what: str, name: str, known: Iterable[str], where: str = "") -> str:
    known = sorted(known)
    choices = f"known: {', '.join(known)}" if known else f"no {what} is declared"
    return f"{what} {name!r} not found{where}{did_you_mean(name, known)} ({choices})"


def _configuration(
    repo: Repository, config: Configuration, broken: set[tuple[str, str, str]]
) -> list[Problem]:
    doc, problems = config.doc, []
    template = repo.templates.get(config.executable_id)
    if template is None:
        if ("ServingTemplate", "default", config.executable_id) not in broken:
            msg = _missing("executable", config.executable_id, repo.templates)
            problems.append(doc.problem("/spec/executableId", msg))
    elif template.scenario_id != config.scenario_id:
        problems.append(
            doc.problem(
                "/spec/scenarioId",
                f"executable {template.name!r} belongs to scenario {template.scenario_id!r}, "
                f"not {config.scenario_id!r}",
            )
        )
    problems += _bindings(
        config,
        template,
        "parameterBindings",
        config.parameter_bindings,
        "parameter",
        [p.name for p in template.parameters] if template else None,
    )
    problems += _bindings(
        config,
        template,
        "inputArtifactBindings",
        config.artifact_bindings,
        "artifact input",
        [a.name for a in template.artifacts] if template else None,
    )
    if template is not None and template.scenario_id == config.scenario_id:
        problems += catalog.check_configuration(repo, template, config)
    if template is not None:
        bound = {k for k, _ in config.parameter_bindings}
        resolved = catalog.resolve(repo, template, config)
        if resolved:  # the catalog version supplies what it lists
            bound |= {k for k, _ in resolved.version.parameters} | {catalog.MODEL_VERSION}
        for p in template.parameters:
            if p.default is None and p.name not in bound:
                problems.append(
                    doc.problem(
                        "/spec/parameterBindings" if config.parameter_bindings else "/spec",
                        f"parameter {p.name} of executable {template.name} has no value: "
                        "bind it in parameterBindings",
                    )
                )
        bound = {k for k, _ in config.artifact_bindings}
        for a in template.artifacts:
            if a.name not in bound:
                problems.append(
                    doc.problem(
                        "/spec/inputArtifactBindings" if config.artifact_bindings else "/spec",
                        f"artifact input {a.name} of executable {template.name} is not bound: "
                        "add it to inputArtifactBindings",
                    )
                )
    for i, (_, artifact_id) in enumerate(config.artifact_bindings):
        if (config.resource_group, artifact_id) in repo.artifacts:
            continue
        if ("Artifact", config.resource_group, artifact_id) in broken:
            continue
        rg_artifacts = [aid for (rg, aid) in repo.artifacts if rg == config.resource_group]
        where = f" in resource group {config.resource_group}"
        problems.append(
            doc.problem(
                f"/spec/inputArtifactBindings/{i}/artifactId",
                _missing("artifact", artifact_id, rg_artifacts, where),
            )
        )
    return problems


def _bindings(
    config: Configuration,
    template: ServingTemplate | None,
    field: str,
    bindings: tuple[tuple[str, str], ...],
    what: str,
    declared: list[str] | None,
) -> Iterator[Problem]:
    seen: set[str] = set()
    for i, (key, _) in enumerate(bindings):
        if key in seen:
            yield config.doc.problem(f"/spec/{field}/{i}/key", f"{key!r} is bound twice")
        seen.add(key)
        if declared is not None and template is not None and key not in declared:
            names = ", ".join(declared) if declared else "none"
            yield config.doc.problem(
                f"/spec/{field}/{i}/key",
                f"executable {template.name} has no {what} {key!r}{did_you_mean(key, declared)} "
                f"(declared: {names})",
            )


def _deployment(
    repo: Repository, deployment: Deployment, broken: set[tuple[str, str, str]]
) -> list[Problem]:
    problems = []
    rg = deployment.resource_group
    if (rg, deployment.configuration_id) not in repo.configurations and (
        "Configuration",
        rg,
        deployment.configuration_id,
    ) not in broken:
        known = [cid for (crg, cid) in repo.configurations if crg == rg]
        msg = _missing(
            "configuration", deployment.configuration_id, known, f" in resource group {rg}"
        )
        problems.append(deployment.doc.problem("/spec/configurationId", msg))
    if deployment.ttl is not None and ttl_minutes(deployment.ttl) < TTL_MINIMUM_MINUTES:
        problems.append(
            deployment.doc.problem(
                "/spec/ttl",
                f"ttl {deployment.ttl} is shorter than the minimum of {TTL_MINIMUM_MINUTES}m",
            )
        )
    return problems
