"""A deployment as a Swarm service spec (the Engine API's JSON), and the digest that tells
whether a live service still is what the reconciler made.

One service per deployment: replicas from the template, CPU and memory as limits *and*
reservations (so the scheduler places only what fits), GPUs as a generic-resource reservation
(`gpu`, what nodes advertise with `node-generic-resources`), the readiness probe as the
service's health check with the start-up timeout as its start period, a restart policy with a
bounded number of attempts, and rolling updates start-first with rollback on failure.

Ports are published in host mode on a port Swarm picks per task: the ingress routing mesh
needs IPVS, which not every kernel has, and a fixed host port would deadlock a start-first
update with as many replicas as nodes. The gateway reaches each task at its node's address.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from ...manifests.spec import MODEL_MOUNT, ContainerSpec, Identity
from .. import labels as L
from ..base import ConvergeFailed, Intent
from ..docker.engine import health_check

SERVICE_DIGEST = L.PREFIX + "service-digest"  # of the spec as made (see `digest`)
GPU_KIND = "gpu"  # the generic resource nodes advertise GPUs as
# A replica that keeps failing is started again this often by Swarm, then left failed: the
# reconciler's own crash-loop rule (restores with backoff, then DEAD) takes it from there.
RESTART_ATTEMPTS = 3
RESTART_DELAY_NS = 2_000_000_000
# After each replaced task Swarm watches the new one this long: if it fails meanwhile, the
# update counts as failed and is rolled back.
UPDATE_MONITOR_NS = 5_000_000_000
_NS = 1_000_000_000
_RESTART = {"always": "any", "unless-stopped": "any", "no": "none"}


def service_name(instance: str, deployment_id: str) -> str:
    """At most 57 characters (instance ≤ 40, id 16): Swarm allows 63. `_` never occurs in
    either part, so the name splits back unambiguously."""
    return f"{instance}_{deployment_id}"


def restart_condition(policy: str) -> str:
    return _RESTART.get(policy, "on-failure" if policy.startswith("on-failure") else "any")


def service_spec(
    intent: Intent,
    identity: Identity,
    image: str,
    image_id: str,
    constraints: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The full service spec for `intent` (`image`: how the service names the image, by id or
    digest so that no node resolves a tag), with its digest among the service's labels."""
    d, spec = intent.deployment, intent.deployment.spec
    if spec.gpus < 0:
        raise ConvergeFailed(
            f"{d.name}: gpus 'all' cannot be scheduled on Swarm; give a GPU count in the "
            "resource plan"
        )
    labels = L.replica_labels(intent, identity, image_id, None, ())
    task = {
        "ContainerSpec": _container(spec, image, labels),
        "Resources": _resources(spec),
        "RestartPolicy": {
            "Condition": restart_condition(spec.restart_policy),
            "Delay": RESTART_DELAY_NS,
            "MaxAttempts": RESTART_ATTEMPTS,
        },
        "Placement": {"Constraints": sorted({*constraints, *spec.constraints})},
    }
    # A GPU replica holds its devices: start-first would need twice as many for a moment.
    order = "stop-first" if spec.gpus else "start-first"
    out = {
        "Name": service_name(intent.instance, d.id),
        "Labels": dict(labels),
        "TaskTemplate": task,
        "Mode": {"Replicated": {"Replicas": intent.replicas}},
        "UpdateConfig": {
            "Parallelism": 1,
            "Delay": 0,
            "FailureAction": "rollback",
            "Monitor": UPDATE_MONITOR_NS,
            "MaxFailureRatio": 0,
            "Order": order,
        },
        "RollbackConfig": {
            "Parallelism": 1,
            "Delay": 0,
            "FailureAction": "pause",
            "Monitor": UPDATE_MONITOR_NS,
            "MaxFailureRatio": 0,
            "Order": order,
        },
        "EndpointSpec": {
            "Mode": "dnsrr",
            "Ports": [{"Protocol": "tcp", "TargetPort": spec.port, "PublishMode": "host"}],
        },
    }
    out["Labels"][SERVICE_DIGEST] = digest(out)
    return out


def _container(spec: ContainerSpec, image: str, labels: Mapping[str, str]) -> dict[str, Any]:
    check = health_check(spec)
    container: dict[str, Any] = {
        "Image": image,
        "Labels": dict(labels),
        "Env": [f"{e.name}={e.value}" for e in spec.env],
        "Mounts": _mounts(spec),
        "Healthcheck": {
            "Test": check["test"],
            "Interval": check["interval"],
            "Timeout": check["timeout"],
            "Retries": check["retries"],
            "StartPeriod": check["start_period"],
        },
    }
    if spec.command is not None:
        container["Command"] = list(spec.command)
    if spec.args is not None:
        container["Args"] = list(spec.args)
    if spec.working_dir:
        container["Dir"] = spec.working_dir
    if spec.stop_timeout is not None:
        container["StopGracePeriod"] = spec.stop_timeout * _NS
    return container


def _mounts(spec: ContainerSpec) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = []
    if spec.model_path:
        # A bind mount: the path must exist on every node that may run the replica (a shared
        # filesystem), as for any Swarm service.
        mounts.append(
            {"Type": "bind", "Source": spec.model_path, "Target": MODEL_MOUNT, "ReadOnly": True}
        )
    for m in spec.volumes:
        mounts.append(
            {
                "Type": "volume" if m.is_volume else "bind",
                "Source": m.source,
                "Target": m.target,
                "ReadOnly": m.read_only,
            }
        )
    if spec.shm_size:
        from docker.utils import parse_bytes  # Docker's own reading of "2g", "512m"

        mounts.append(
            {
                "Type": "tmpfs",
                "Target": "/dev/shm",
                "TmpfsOptions": {"SizeBytes": int(parse_bytes(spec.shm_size))},
            }
        )
    return mounts


def _resources(spec: ContainerSpec) -> dict[str, Any]:
    cpus = int(spec.cpus * _NS)
    reservations: dict[str, Any] = {"NanoCPUs": cpus, "MemoryBytes": spec.memory}
    if spec.gpus > 0:
        reservations["GenericResources"] = [
            {"DiscreteResourceSpec": {"Kind": GPU_KIND, "Value": spec.gpus}}
        ]
    return {"Limits": {"NanoCPUs": cpus, "MemoryBytes": spec.memory}, "Reservations": reservations}


def digest(spec: Mapping[str, Any]) -> str:
    """A digest of what the reconciler sets in a service spec, read the same way from the spec
    it builds and from a live service's (`Spec` of its inspect), where Swarm adds defaults: a
    service changed by hand (`docker service update`) reads differently."""
    task = spec.get("TaskTemplate") or {}
    container = task.get("ContainerSpec") or {}
    labels = {k: v for k, v in (spec.get("Labels") or {}).items() if k != SERVICE_DIGEST}
    view = {
        "labels": labels,
        "image": container.get("Image"),
        # Swarm drops an empty list (omitempty): [] and absent read the same.
        "command": container.get("Command") or None,
        "args": container.get("Args") or None,
        "env": container.get("Env") or [],
        "dir": container.get("Dir") or "",
        "stop": container.get("StopGracePeriod") or 0,
        "containerLabels": container.get("Labels") or {},
        "mounts": [
            [m.get("Type"), m.get("Source"), m.get("Target"), bool(m.get("ReadOnly"))]
            for m in container.get("Mounts") or []
        ],
        "health": container.get("Healthcheck") or {},
        "resources": _pruned(task.get("Resources") or {}),
        "restart": _pruned(task.get("RestartPolicy") or {}),
        "placement": sorted((task.get("Placement") or {}).get("Constraints") or []),
        "replicas": ((spec.get("Mode") or {}).get("Replicated") or {}).get("Replicas"),
        "ports": [
            [p.get("TargetPort"), p.get("PublishMode")]
            for p in (spec.get("EndpointSpec") or {}).get("Ports") or []
        ],
    }
    text = json.dumps(view, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _pruned(value: Any) -> Any:
    """Without empty members (Swarm writes some defaults as 0 or {} that a built spec leaves
    out)."""
    if isinstance(value, dict):
        pruned = {k: _pruned(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if v not in (None, 0, "", {}, [])}
    if isinstance(value, list):
        return [_pruned(v) for v in value]
    return value
