"""The manifest kinds as immutable, typed objects.

These are built from schema-valid documents only, so their fields can be trusted. Each object
keeps the `Document` it came from (excluded from comparison) so that later checks can report a
problem at the right file, line and field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from .sources import Document

DEFAULT_RESOURCE_GROUP = "default"
DEFAULT_UNREADY_RESTART_SECONDS = 300

TemplateForm = Literal["kserve", "container"]
TargetStatus = Literal["RUNNING", "STOPPED"]


@dataclass(frozen=True)
class Parameter:
    name: str
    default: str | None = None
    description: str | None = None


@dataclass(frozen=True)
class ArtifactInput:
    name: str
    kind: str | None = None
    description: str | None = None


@dataclass(frozen=True)
class ServingTemplate:
    """An executable. Its name is the executable id; templates are shared by all resource
    groups, as AI Core's serving templates are managed at the level of the main tenant."""

    name: str
    form: TemplateForm
    scenario_id: str
    scenario_name: str | None
    scenario_description: str | None
    version_id: str | None
    description: str | None
    parameters: tuple[Parameter, ...]
    artifacts: tuple[ArtifactInput, ...]
    cascade_update: bool
    labels: tuple[tuple[str, str], ...]
    annotations: tuple[tuple[str, str], ...]
    # The part to render: the KServe InferenceService (kserve form) or the container mapping.
    body: Any = field(compare=False, repr=False)
    body_pointer: str = field(compare=False, repr=False)
    doc: Document = field(compare=False, repr=False)

    def parameter(self, name: str) -> Parameter | None:
        return next((p for p in self.parameters if p.name == name), None)

    def artifact(self, name: str) -> ArtifactInput | None:
        return next((a for a in self.artifacts if a.name == name), None)


@dataclass(frozen=True)
class Configuration:
    """Values for an executable's inputs. Its id is its name, unique per resource group."""

    name: str
    resource_group: str
    executable_id: str
    scenario_id: str
    version_id: str | None
    parameter_bindings: tuple[tuple[str, str], ...]
    artifact_bindings: tuple[tuple[str, str], ...]
    labels: tuple[tuple[str, str], ...]
    doc: Document = field(compare=False, repr=False)

    @property
    def id(self) -> str:
        return self.name


@dataclass(frozen=True)
class Deployment:
    name: str
    resource_group: str
    id: str
    configuration_id: str
    target_status: TargetStatus
    ttl: str | None
    labels: tuple[tuple[str, str], ...]
    doc: Document = field(compare=False, repr=False)


@dataclass(frozen=True)
class Artifact:
    name: str
    resource_group: str
    kind: str
    url: str
    scenario_id: str
    description: str | None
    labels: tuple[tuple[str, str], ...]
    doc: Document = field(compare=False, repr=False)

    @property
    def id(self) -> str:
        return self.name


@dataclass(frozen=True)
class ResourcePlan:
    name: str
    cpus: float
    memory: int  # bytes
    gpus: int
    gpu_type: str | None = None
    description: str | None = None
    constraints: tuple[str, ...] = ()  # swarm placement constraints (node.labels.gpu==a100)
    doc: Document | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class ModelVersion:
    name: str
    is_latest: bool = False
    deprecated: bool = False
    retirement_date: str | None = None  # YYYY-MM-DD, UTC
    context_length: int | None = None
    capabilities: tuple[str, ...] = ()
    streaming_supported: bool = False
    suggested_replacements: tuple[str, ...] = ()
    parameters: tuple[tuple[str, str], ...] = ()  # values for the executable's parameters


@dataclass(frozen=True)
class Model:
    """A generative model of the catalog; shared by all resource groups (as AI Core's global
    foundation-models scenario)."""

    name: str
    executable_id: str
    display_name: str | None
    provider: str | None
    description: str | None
    versions: tuple[ModelVersion, ...]
    doc: Document = field(compare=False, repr=False)

    def version(self, name: str) -> ModelVersion | None:
        return next((v for v in self.versions if v.name == name), None)

    @property
    def latest(self) -> ModelVersion | None:
        marked = [v for v in self.versions if v.is_latest]
        return marked[0] if len(marked) == 1 else None


@dataclass(frozen=True)
class EngineSettings:
    """Settings.spec.engine: which engine runs the deployments, and where it is."""

    kind: str = "docker"  # docker | swarm
    host: str | None = None  # a Docker host URL; None: DOCKER_HOST, else the local socket
    # swarm: the nodes' Docker hosts, that images are copied to (none: nodes pull them).
    nodes: tuple[str, ...] = ()
    constraints: tuple[str, ...] = ()  # swarm: placement constraints of every deployment
    placement_timeout: int = 60  # swarm: seconds a replica may wait for a node that fits
    # swarm: the folder on every node that keeps its models from object stores (one folder
    # per version, filled by the storage initializer's job on the nodes).
    model_cache: str = "/var/lib/reconciler/models"


@dataclass(frozen=True)
class Settings:
    instance: str | None = None
    publish_address: str = "127.0.0.1"
    api_url: str | None = None  # public base URL of `reconciler serve`, without trailing /
    retirement_warning_days: int = 30
    gpus: tuple[str, ...] = ()
    # spec.artifactRoots: host folders `file:` artifacts may point into besides the root.
    artifact_roots: tuple[str, ...] = ()
    # spec.objectStoreEndpoints: the endpoints a tenant's object-store secret may name.
    object_store_endpoints: tuple[str, ...] = ()
    model_cache_size: int = 100 * 1024**3  # spec.modelCacheSize, in bytes
    # spec.unreadyRestartSeconds: a replica without a liveness probe that stays unready this
    # long is restarted (0: never restarted for unreadiness alone).
    unready_restart_seconds: int = DEFAULT_UNREADY_RESTART_SECONDS
    # spec.selfHeal: watch and serve restore containers changed by hand (false: reported only).
    self_heal: bool = True
    engine: EngineSettings = EngineSettings()
    doc: Document | None = field(default=None, compare=False, repr=False)


RGKey = tuple[str, str]  # (resource group, id)


@dataclass(frozen=True, eq=False)
class Repository:
    """Everything one GitOps root declares, after schema checks (invalid documents left out)."""

    root: Path
    instance: str
    settings: Settings
    templates: MappingProxyType[str, ServingTemplate]
    configurations: MappingProxyType[RGKey, Configuration]
    artifacts: MappingProxyType[RGKey, Artifact]
    deployments: tuple[Deployment, ...]
    plans: MappingProxyType[str, ResourcePlan]
    models: MappingProxyType[str, Model] = field(default_factory=lambda: MappingProxyType({}))
