"""The AI Core / KServe form: a rendered InferenceService → a container `Draft`.

What maps (KServe → Docker): predictor `containers[0]` image, command, args, env, first port,
`workingDir`, `readinessProbe` and `livenessProbe` (`httpGet.path` and `port`, or `tcpSocket`,
and `periodSeconds`, `timeoutSeconds`, `failureThreshold`, `successThreshold`; a `tcpSocket` or
`exec` probe, or no readiness probe, means "ready when the port accepts connections", as Knative
does), `resources.limits["nvidia.com/gpu"]` (GPU count), `minReplicas`, `maxReplicas` and
`containerConcurrency` (the autoscaler's bounds), `terminationGracePeriodSeconds` (stop
timeout), the `ai.sap.com/resourcePlan` (or `ai.sap.com/instanceType`) label, and `STORAGE_URI`
(the model, mounted at /mnt/models). Fields that only make sense on Kubernetes are accepted
and ignored.
"""

from __future__ import annotations

from typing import Any

from ..errors import RenderError
from . import schema
from .spec import DEFAULT_PORT, Draft, EnvVar, Probe, is_secret_name

RESOURCE_PLAN_LABELS = ("ai.sap.com/resourcePlan", "ai.sap.com/instanceType")
STORAGE_URI = "STORAGE_URI"
GPU_RESOURCE = "nvidia.com/gpu"
# KServe's built-in model-format predictors need KServe's serving runtimes.
_MODEL_FORMATS = (
    "model",
    "sklearn",
    "xgboost",
    "lightgbm",
    "tensorflow",
    "pytorch",
    "triton",
    "onnx",
    "pmml",
    "paddle",
    "huggingface",
)


def to_draft(spec: Any, labels: dict[str, str], annotations: dict[str, str]) -> Draft:
    """Map a rendered, parsed `spec` (pointers in errors are relative to it)."""
    if not isinstance(spec, dict):
        raise _error(("", "must be a mapping with a predictor"))
    predictor = spec.get("predictor")
    if isinstance(predictor, dict):
        for fmt in _MODEL_FORMATS:
            if fmt in predictor:
                raise _error(
                    (
                        f"/predictor/{fmt}",
                        f"KServe's built-in '{fmt}' predictor is not supported on Docker hosts: "
                        "use predictor.containers with a model server image",
                    )
                )
    for unsupported in ("transformer", "explainer"):
        if unsupported in spec:
            raise _error((f"/{unsupported}", f"a KServe {unsupported} is not supported yet"))
    problems = schema.problems_for("kserve-inferenceservice", spec)
    if problems:
        raise _error(*problems)
    container = predictor["containers"][0]
    if len(predictor["containers"]) > 1:
        raise _error(("/predictor/containers/1", "only one container per predictor is supported"))

    env: list[EnvVar] = []
    model_uri = None
    for i, item in enumerate(container.get("env", ())):
        if "valueFrom" in item:
            raise _error(
                (
                    f"/predictor/containers/0/env/{i}/valueFrom",
                    "valueFrom (Kubernetes secrets) is not supported: "
                    "bind the value as a parameter",
                )
            )
        value = _text(item.get("value", ""))
        env.append(EnvVar(item["name"], value, is_secret_name(item["name"])))
        if item["name"] == STORAGE_URI:
            model_uri = value or None

    ports = container.get("ports") or [{"containerPort": DEFAULT_PORT}]
    readiness = _probe(container.get("readinessProbe") or {}, "readinessProbe", ports)
    raw_liveness = container.get("livenessProbe")
    liveness = _probe(raw_liveness, "livenessProbe", ports) if raw_liveness else None
    limits = (container.get("resources") or {}).get("limits") or {}
    gpus = limits.get(GPU_RESOURCE)
    plan = next((labels[k] for k in RESOURCE_PLAN_LABELS if labels.get(k)), None)
    min_replicas = predictor.get("minReplicas", 1)
    return Draft(
        image=container["image"],
        command=_texts(container.get("command")),
        args=_texts(container.get("args")),
        env=tuple(env),
        port=ports[0]["containerPort"],
        readiness=readiness,
        liveness=liveness,
        resource_plan=plan,
        gpus=_gpus(gpus) if gpus is not None else None,
        # minReplicas 0: scaled to zero by `reconciler serve` when idle (core.autoscale).
        replicas=min_replicas,
        max_replicas=predictor.get("maxReplicas"),
        container_concurrency=predictor.get("containerConcurrency", 0),
        model_uri=model_uri,
        working_dir=container.get("workingDir"),
        stop_timeout=predictor.get("terminationGracePeriodSeconds"),
        labels=tuple(sorted(labels.items())),
        annotations=tuple(sorted(annotations.items())),
    )


def _probe(probe: dict[str, Any], key: str, ports: list[dict[str, Any]]) -> Probe:
    """A probe as Kubernetes writes it (the schema checked its shape and ranges)."""
    action = probe.get("httpGet")
    http = action is not None
    if not http:
        action = probe.get("tcpSocket")
    action = action if isinstance(action, dict) else {}
    return Probe(
        # Kubernetes GETs "/" when httpGet names no path.
        path=(action.get("path") or "/") if http else None,
        port=_probe_port(action.get("port"), key, ports),
        period_seconds=probe.get("periodSeconds", Probe.period_seconds),
        timeout_seconds=probe.get("timeoutSeconds", Probe.timeout_seconds),
        failure_threshold=probe.get("failureThreshold", Probe.failure_threshold),
        success_threshold=probe.get("successThreshold", Probe.success_threshold),
    )


def _probe_port(port: Any, key: str, ports: list[dict[str, Any]]) -> int | None:
    """A probe's port: a number, or the name of one of the container's ports."""
    if port is None:
        return None
    if isinstance(port, int) or (isinstance(port, str) and port.isdigit()):
        return int(port)
    for p in ports:
        if p.get("name") == port:
            return int(p["containerPort"])
    raise _error(
        (f"/predictor/containers/0/{key}", f"port {port!r} is not the name of a container port")
    )


def _error(*problems: tuple[str, str]) -> RenderError:
    """Problems inside the rendered spec, named by their pointers within it."""
    text = "; ".join(f"at {pointer or '/'}: {message}" for pointer, message in problems)
    return RenderError("", f"in the rendered spec {text}")


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _texts(values: list[Any] | None) -> tuple[str, ...] | None:
    return None if values is None else tuple(_text(v) for v in values)


def _gpus(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise _error(
            ("/predictor/containers/0/resources/limits", f"{GPU_RESOURCE} must be a number")
        ) from None
