"""Desired state: every deployment the manifests declare, with its resolved container spec.

This is `validate`'s core and the input of `plan`. It is all-or-nothing: if any manifest has a
problem, `desired_state` raises with every problem found and nothing downstream may act (a parse
error must never read as "nothing is desired" and prune deployments).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from ..errors import ManifestError, UserError
from .catalog import ResolvedModel
from .catalog import resolve as resolve_model
from .kinds import Configuration, Deployment, Repository, RGKey, ServingTemplate
from .load import load
from .render import render_all
from .sources import SourceFile
from .spec import ContainerSpec


@dataclass(frozen=True)
class DesiredDeployment:
    deployment: Deployment
    configuration: Configuration
    template: ServingTemplate
    spec: ContainerSpec
    model: ResolvedModel | None = None  # the catalog version it serves (generative models)

    @property
    def id(self) -> str:
        return self.deployment.id

    @property
    def name(self) -> str:
        return self.deployment.name


@dataclass(frozen=True, eq=False)
class DesiredState:
    repo: Repository
    deployments: tuple[DesiredDeployment, ...]
    specs: MappingProxyType[RGKey, ContainerSpec]  # every configuration's rendering

    def find_declared(self, deployment_id: str) -> DesiredDeployment | None:
        return next((d for d in self.deployments if d.id == deployment_id), None)

    def find(self, name_or_id: str, resource_group: str | None = None) -> DesiredDeployment:
        """The deployment with this id, or this name (in `resource_group` if given)."""
        by_id = [d for d in self.deployments if d.id == name_or_id]
        if by_id:
            return by_id[0]
        named = [
            d
            for d in self.deployments
            if d.name == name_or_id
            and (resource_group is None or d.deployment.resource_group == resource_group)
        ]
        if len(named) == 1:
            return named[0]
        if len(named) > 1:
            groups = ", ".join(d.deployment.resource_group for d in named)
            raise UserError(
                f"deployment {name_or_id!r} exists in several resource groups ({groups}): "
                "pass --resource-group or use its id"
            )
        known = ", ".join(d.name for d in self.deployments) or "none"
        raise UserError(f"no deployment named or with id {name_or_id!r} (deployments: {known})")


def desired_state(root: Path, files: Iterable[SourceFile] | None = None) -> DesiredState:
    repo, problems = load(root, files)
    specs, render_problems = render_all(repo)
    problems += render_problems
    if problems:
        raise ManifestError(problems)
    deployments = []
    for d in repo.deployments:
        configuration = repo.configurations[(d.resource_group, d.configuration_id)]
        template = repo.templates[configuration.executable_id]
        deployments.append(
            DesiredDeployment(
                deployment=d,
                configuration=configuration,
                template=template,
                spec=specs[(d.resource_group, d.configuration_id)],
                model=resolve_model(repo, template, configuration),
            )
        )
    return DesiredState(repo, tuple(deployments), MappingProxyType(specs))
