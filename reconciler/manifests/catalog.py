"""The model catalog: generative models, their versions, `latest`, and retirement dates.

A configuration of an executable that the catalog lists binds `modelName` and `modelVersion`
(omitted, or `latest`, means the version marked `isLatest`). Resolution happens at render time,
so the resolved version is part of the container spec and its config hash: when a commit
moves `latest`, every deployment that follows it is replaced (start-first), while pinned ones
never move. A version's `parameters` (image tag, weights, runtime arguments) fill the
executable's parameters that the configuration does not bind itself.

Pure functions over the loaded repository.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from ..errors import Problem, did_you_mean
from .kinds import Configuration, Model, ModelVersion, Repository, ServingTemplate

MODEL_NAME = "modelName"
MODEL_VERSION = "modelVersion"
LATEST = "latest"


@dataclass(frozen=True)
class ResolvedModel:
    model: Model
    version: ModelVersion
    follows_latest: bool  # bound to `latest` (or not bound): moves when the catalog's latest does

    @property
    def label(self) -> str:
        return f"{self.model.name}:{self.version.name}"

    @property
    def retirement(self) -> date | None:
        return parse_date(self.version.retirement_date)

    def retired(self, now: datetime) -> bool:
        day = self.retirement
        return day is not None and now.astimezone(UTC).date() >= day

    def retires_within(self, now: datetime, days: int) -> bool:
        day = self.retirement
        return (
            day is not None and not self.retired(now) and day <= (now + timedelta(days=days)).date()
        )

    def replacement_hint(self) -> str:
        found = self.version.suggested_replacements
        return f"; suggested replacement: {', '.join(found)}" if found else ""


def parse_date(text: str | None) -> date | None:
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


def catalog_for(repo: Repository, executable_id: str) -> list[Model]:
    return [m for m in repo.models.values() if m.executable_id == executable_id]


def _bound(template: ServingTemplate, config: Configuration, name: str) -> str | None:
    value = dict(config.parameter_bindings).get(name)
    if value is None:
        p = template.parameter(name)
        value = p.default if p else None
    return value


def resolve(
    repo: Repository, template: ServingTemplate, config: Configuration
) -> ResolvedModel | None:
    """The catalog version a configuration serves; None when its executable is not in the
    catalog, or when the binding is wrong (check_configuration reports that)."""
    if not catalog_for(repo, template.name):
        return None
    model = repo.models.get(_bound(template, config, MODEL_NAME) or "")
    if model is None or model.executable_id != template.name:
        return None
    wanted = _bound(template, config, MODEL_VERSION) or LATEST
    version = model.latest if wanted == LATEST else model.version(wanted)
    if version is None:
        return None
    return ResolvedModel(model, version, wanted == LATEST)


def check_models(repo: Repository) -> Iterator[Problem]:
    for model in repo.models.values():
        doc = model.doc
        template = repo.templates.get(model.executable_id)
        if template is None:
            known = sorted(repo.templates)
            yield doc.problem(
                "/spec/executableId",
                f"executable {model.executable_id!r} not found"
                f"{did_you_mean(model.executable_id, known)} (known: {', '.join(known) or 'none'})",
            )
        latest = [i for i, v in enumerate(model.versions) if v.is_latest]
        if len(latest) != 1:
            yield doc.problem(
                "/spec/versions",
                f"model {model.name} has {len(latest)} versions marked isLatest: mark exactly one",
            )
        seen: set[str] = set()
        for i, v in enumerate(model.versions):
            if v.name in seen:
                yield doc.problem(f"/spec/versions/{i}/name", f"version {v.name!r} listed twice")
            seen.add(v.name)
            if v.retirement_date and parse_date(v.retirement_date) is None:
                yield doc.problem(
                    f"/spec/versions/{i}/retirementDate",
                    f"{v.retirement_date!r} is not a date (YYYY-MM-DD)",
                )
            if template is not None:
                declared = [p.name for p in template.parameters]
                for key, _ in v.parameters:
                    if key not in declared:
                        yield doc.problem(
                            f"/spec/versions/{i}/parameters/{key}",
                            f"executable {template.name} has no parameter {key!r}"
                            f"{did_you_mean(key, declared)} (declared: {', '.join(declared)})",
                        )


def check_configuration(
    repo: Repository, template: ServingTemplate, config: Configuration
) -> Iterator[Problem]:
    """A configuration of a catalog executable must name a model of it, and a version that
    exists (or `latest`): the error names the valid choices."""
    models = catalog_for(repo, template.name)
    if not models:
        return
    names = sorted(m.name for m in models)
    bindings = [k for k, _ in config.parameter_bindings]
    name = _bound(template, config, MODEL_NAME)
    if name not in names:
        where = (
            f"/spec/parameterBindings/{bindings.index(MODEL_NAME)}/value"
            if MODEL_NAME in bindings
            else "/spec/parameterBindings"
        )
        shown = "not bound" if name is None else f"{name!r} is not in the model catalog"
        yield config.doc.problem(
            where,
            f"{MODEL_NAME} {shown}{did_you_mean(name or '', names)}: executable {template.name} "
            f"serves {', '.join(names)}",
        )
        return
    model = repo.models[name]
    version = _bound(template, config, MODEL_VERSION) or LATEST
    versions = [v.name for v in model.versions]
    if version != LATEST and version not in versions:
        where = (
            f"/spec/parameterBindings/{bindings.index(MODEL_VERSION)}/value"
            if MODEL_VERSION in bindings
            else "/spec/parameterBindings"
        )
        yield config.doc.problem(
            where,
            f"model {name} has no version {version!r}{did_you_mean(version, versions)} "
            f"(versions: {', '.join(versions)}, or latest)",
        )


def retirement_notice(d: Any, now: datetime, days: int) -> str | None:
    """A warning when the model version a running deployment (a DesiredDeployment) serves
    retires within `days`."""
    model: ResolvedModel | None = d.model
    if model is None or d.deployment.target_status != "RUNNING":
        return None
    if not model.retires_within(now, days):
        return None
    left = (model.retirement - now.date()).days if model.retirement else 0
    return (
        f"{d.name}: model {model.label} retires on {model.version.retirement_date} "
        f"(in {left} days){model.replacement_hint()}"
    )
