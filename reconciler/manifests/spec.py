"""The resolved container spec: the single type the rest of the pipeline consumes.

Both ServingTemplate forms render into a `ContainerSpec`. Its fields fall into three groups,
which decide how a change is applied (the lesson of docker compose's config-hash labels):

* identity fields (image, command, env, ports, mounts, GPUs ...) are hashed into the config
  hash; a change replaces the container;
* resources (CPU, memory, restart policy) are applied in place with `docker update`;
* behaviour of the reconciler itself (replicas, the start-up wait) changes no container.

The readiness probe is both: the reconciler waits for it at start, and on Docker it is also the
container's own HEALTHCHECK, which cannot be changed in place. So what the health check holds
(path, port, timings, start period) is an identity field ("health"); a spec from before probes
were settable gets that field too, so upgrading replaces every container once (start-first).

Hashes and field digests end up in container labels, the state snapshot and plan output, which
more people see than the manifests' secrets. So a secret environment value enters them only
sealed: as an HMAC-SHA256 under the instance's own key (`record.label_key`), never as a plain
digest that a short secret could be guessed back from (hash version 2). A spec without secret
values hashes as version 1, as before.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .scaling import Policy, policy

# Bump when the meaning of `identity_fields` changes; containers labelled with an older version
# are compared field by field where possible instead of being recreated wholesale.
# 2: secret values sealed with the instance's key; 1: no secret values, or secret values
# unsealed as earlier releases wrote them (kept only for deployments labelled so: plan.py).
HASH_VERSION = "2"
UNSEALED_HASH_VERSION = "1"
MODEL_MOUNT = "/mnt/models"
DEFAULT_PORT = 8080
DEFAULT_READINESS_PATH = "/v2/health/ready"
DEFAULT_STARTUP_TIMEOUT = 300
# Kubernetes' probe defaults (KServe inherits them), so a template moved between the two behaves
# the same.
DEFAULT_PERIOD_SECONDS = 10
DEFAULT_TIMEOUT_SECONDS = 1
DEFAULT_FAILURE_THRESHOLD = 3
DEFAULT_SUCCESS_THRESHOLD = 1
DEFAULT_RESTART_POLICY = "unless-stopped"
REDACTED = "***"
# Environment variables whose values are never printed or written to state files.
_SECRET_NAME = re.compile(r"(?i)(secret|token|passw(or)?d|api[_-]?key|credential|private[_-]?key)")


# A probe path goes into a URL and (shell-quoted) into the container's health check command:
# only an absolute path of URL characters, nothing a shell or a URL parser could misread.
PROBE_PATH = re.compile(r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/?-]*$")
PROBE_LIMITS = {  # field: (minimum, maximum): sane for a model server, enforced after rendering
    "periodSeconds": (1, 3600),
    "timeoutSeconds": (1, 600),
    "failureThreshold": (1, 100),
    "successThreshold": (1, 100),
}


def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


@dataclass(frozen=True)
class EnvVar:
    name: str
    value: str
    secret: bool = False


@dataclass(frozen=True)
class Mount:
    source: str  # an absolute host path, or the name of a Docker volume
    target: str
    read_only: bool = False

    @property
    def is_volume(self) -> bool:
        return not self.source.startswith("/")


@dataclass(frozen=True)
class Probe:
    """A readiness or liveness probe in Kubernetes' terms: HTTP GET on `path` (None: the port
    accepts a TCP connection) of `port` (None: the container's serving port)."""

    path: str | None = DEFAULT_READINESS_PATH
    port: int | None = None
    period_seconds: int = DEFAULT_PERIOD_SECONDS
    timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS
    failure_threshold: int = DEFAULT_FAILURE_THRESHOLD
    # Docker marks a container healthy after one success; a higher threshold is kept for the
    # record (and other engines) but has no effect there.
    success_threshold: int = DEFAULT_SUCCESS_THRESHOLD

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "port": self.port,
            "periodSeconds": self.period_seconds,
            "timeoutSeconds": self.timeout_seconds,
            "failureThreshold": self.failure_threshold,
            "successThreshold": self.success_threshold,
        }


@dataclass(frozen=True)
class ContainerSpec:
    image: str
    command: tuple[str, ...] | None
    args: tuple[str, ...] | None
    env: tuple[EnvVar, ...]
    port: int
    model_uri: str | None  # the model artifact's URL (STORAGE_URI), mounted at MODEL_MOUNT
    model_path: str | None  # its host path, for file: URLs
    volumes: tuple[Mount, ...]
    gpus: int  # -1 = all
    shm_size: str | None
    ipc_mode: str | None
    working_dir: str | None
    stop_timeout: int | None
    # In place:
    resource_plan: str
    cpus: float
    memory: int
    restart_policy: str
    # The reconciler's own behaviour (the readiness probe is also the container's health check:
    # see `health_check`):
    readiness: Probe
    startup_timeout: int
    replicas: int  # minReplicas: 0 scales to zero when idle (reconciler.core.autoscale)
    max_replicas: int  # > replicas: the autoscaler moves the count between the two
    labels: tuple[tuple[str, str], ...] = ()
    annotations: tuple[tuple[str, str], ...] = ()
    # Kept for the core to act on; Docker has one health check per container and it serves
    # readiness ("RUNNING means answering"), so liveness is no part of the container.
    liveness: Probe | None = None
    # Where an engine with several nodes may place replicas (the resource plan's Swarm
    # placement constraints); no effect on one Docker host.
    constraints: tuple[str, ...] = ()
    container_concurrency: int = 0  # requests one replica takes at once (0: no limit)
    # An object-store model's version (its objects' digest: reconciler.stores.s3), set when a
    # plan has read the store; part of the identity, so a new upload replaces the containers.
    model_version: str | None = None

    @property
    def autoscaled(self) -> bool:
        """The count follows the load (`reconciler serve`'s autoscaler), within the bounds."""
        return self.max_replicas > self.replicas

    def scaling(self) -> Policy:
        """How the count follows the load: the bounds and the template's autoscaling
        annotations (raises PolicyError for an annotation that cannot be read)."""
        return policy(
            self.replicas, self.max_replicas, dict(self.annotations), self.container_concurrency
        )

    @property
    def readiness_path(self) -> str | None:
        """The readiness probe's HTTP path; None: a TCP connect."""
        return self.readiness.path

    @property
    def probe_port(self) -> int:
        return self.readiness.port or self.port

    def health_check(self) -> dict[str, Any]:
        """What the container's own health check holds: an identity field, since an engine
        cannot change it in place. The start-up timeout is its start period (model loading)."""
        return {
            "path": self.readiness.path,
            "port": self.probe_port,
            "period": self.readiness.period_seconds,
            "timeout": self.readiness.timeout_seconds,
            "retries": self.readiness.failure_threshold,
            "startPeriod": self.startup_timeout,
        }

    @property
    def has_secrets(self) -> bool:
        return any(e.secret for e in self.env)

    def identity(self, image_id: str | None, hashing: Hashing) -> Identity:
        """What this spec's container labels say, in `hashing`'s format."""
        seal = hashing.seal if self.has_secrets and hashing.sealed else None
        fields = self.identity_fields(seal)
        version = HASH_VERSION if seal else UNSEALED_HASH_VERSION
        canonical = json.dumps(
            {"v": version, "fields": fields, "imageId": image_id or ""},
            sort_keys=True,
            separators=(",", ":"),
        )
        return Identity(
            version=version,
            config_hash=hashlib.sha256(canonical.encode()).hexdigest(),
            digests={
                # Short digests per identity field: enough to name what changed.
                k: hashlib.sha256(f"{k}={v}".encode()).hexdigest()[:10]
                for k, v in fields.items()
            },
        )

    def identity_fields(self, seal: Seal | None = None) -> dict[str, str]:
        """Every field whose change needs a new container, flattened and canonical; with
        `seal`, secret values as their keyed digests (without: only for version 1)."""
        fields: dict[str, Any] = {
            "image": self.image,
            "command": self.command,
            "args": self.args,
            "port": self.port,
            "model": self.model_uri,
            "modelVersion": self.model_version,  # (None for file: models: their hash stays)
            "gpus": self.gpus,
            "shmSize": self.shm_size,
            "ipc": self.ipc_mode,
            "workingDir": self.working_dir,
            "stopTimeout": self.stop_timeout,
            "health": self.health_check(),
            # Only when set: specs without constraints keep the hash they always had.
            "placement": list(self.constraints) or None,
        }
        for env in self.env:
            name = f"env.{env.name}"
            fields[name] = seal(name, env.value) if seal and env.secret else env.value
        for mount in self.volumes:
            fields[f"volume.{mount.target}"] = [mount.source, mount.read_only]
        return {k: json.dumps(v, separators=(",", ":")) for k, v in fields.items() if v is not None}

    def resources(self) -> dict[str, Any]:
        return {"cpus": self.cpus, "memory": self.memory, "restartPolicy": self.restart_policy}

    def to_dict(self, redact: bool = True) -> dict[str, Any]:
        """Plain, JSON-ready view (secret values replaced by *** unless `redact` is False)."""
        return {
            "image": self.image,
            "command": list(self.command) if self.command is not None else None,
            "args": list(self.args) if self.args is not None else None,
            "env": {e.name: (REDACTED if e.secret and redact else e.value) for e in self.env},
            "secretEnv": sorted(e.name for e in self.env if e.secret),
            "port": self.port,
            "readinessPath": self.readiness_path,
            "readinessProbe": self.readiness.to_dict(),
            "livenessProbe": self.liveness.to_dict() if self.liveness else None,
            "startupTimeout": self.startup_timeout,
            "model": {
                "uri": self.model_uri,
                **({"version": self.model_version} if self.model_version else {}),
                "hostPath": self.model_path,
                "mountPath": MODEL_MOUNT,
            }
            if self.model_uri
            else None,
            "volumes": [
                {"source": m.source, "target": m.target, "readOnly": m.read_only}
                for m in self.volumes
            ],
            "resourcePlan": self.resource_plan,
            "cpus": self.cpus,
            "memory": self.memory,
            "gpus": self.gpus,
            "shmSize": self.shm_size,
            "ipc": self.ipc_mode,
            "workingDir": self.working_dir,
            "stopTimeout": self.stop_timeout,
            "restartPolicy": self.restart_policy,
            "replicas": self.replicas,
            "maxReplicas": self.max_replicas,
            "containerConcurrency": self.container_concurrency,
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "constraints": list(self.constraints),
        }


Seal = Callable[[str, str], str]  # (field name, secret value) -> keyed digest


@dataclass(frozen=True)
class Identity:
    """A container's identity as its labels carry it (reconciler.hash-version, config-hash,
    fields): the config hash covers the identity fields and the image's content id (a rebuilt
    tag is a change); the field digests name what changed, never a value."""

    version: str
    config_hash: str
    digests: Mapping[str, str]


@dataclass(frozen=True, eq=False)
class Hashing:
    """How secret values are sealed: `key` yields the instance's key, read (or made) the first
    time a spec with a secret value is hashed. Without `key`, the unsealed format of earlier
    releases: to recognise their containers, and kept only for deployments an earlier release
    labelled so (plan._hashing_for)."""

    key: Callable[[], bytes] | None = field(default=None, repr=False)

    @property
    def sealed(self) -> bool:
        return self.key is not None

    def seal(self, name: str, value: str) -> str:
        if self.key is None:
            return value
        # The field name is part of the message: one value under two names seals differently.
        digest = hmac.new(self.key(), f"{name}={value}".encode(), hashlib.sha256).hexdigest()
        return f"hmac-sha256:{digest}"


UNSEALED = Hashing()


@dataclass
class Draft:
    """What a template form says, before the resource plan and host paths are applied."""

    image: str
    command: tuple[str, ...] | None = None
    args: tuple[str, ...] | None = None
    env: tuple[EnvVar, ...] = ()
    port: int = DEFAULT_PORT
    readiness: Probe = Probe()
    liveness: Probe | None = None
    startup_timeout: int = DEFAULT_STARTUP_TIMEOUT
    resource_plan: str | None = None
    gpus: int | None = None  # None: the resource plan's
    replicas: int = 1
    max_replicas: int | None = None
    container_concurrency: int = 0
    model_uri: str | None = None
    volumes: tuple[tuple[str, str, bool], ...] = ()  # (source as written, target, read only)
    working_dir: str | None = None
    restart_policy: str = DEFAULT_RESTART_POLICY
    shm_size: str | None = None
    ipc_mode: str | None = None
    stop_timeout: int | None = None
    labels: tuple[tuple[str, str], ...] = ()
    annotations: tuple[tuple[str, str], ...] = ()


def redact(lines: Iterable[str], spec: ContainerSpec) -> tuple[str, ...]:
    """Log lines with the spec's secret values replaced by ***."""
    secrets = [e.value for e in spec.env if e.secret and len(e.value) >= 4]
    out = []
    for line in lines:
        for secret in secrets:
            line = line.replace(secret, "***")
        out.append(line)
    return tuple(out)
