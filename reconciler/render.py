"""Render: a Configuration and its ServingTemplate → a resolved `ContainerSpec`.

Templates are Jinja2 rendered in an immutable sandbox with `StrictUndefined`: a template can read
`inputs.parameters.NAME` and `inputs.artifacts.NAME` and nothing else; attribute access to
internals (`''.__class__`) and memory bombs (`'x' * 10**9`) fail with a clear error. Parameter
resolution is AI Core's: the configuration's binding wins, else the template's default (so a
deployment that does not bind a parameter follows later changes of the default). An artifact
placeholder renders to the artifact's URL.

Templates are checked once (syntax, every placeholder declared) and compiled once; a rendering
is computed per configuration, since every deployment of a configuration runs the same spec.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml
from jinja2 import StrictUndefined, Template, TemplateError, TemplateSyntaxError, meta, nodes
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from . import catalog
from .errors import Problem, RenderError, did_you_mean
from .kinds import Configuration, Repository, RGKey, ServingTemplate
from .kserve import STORAGE_URI, to_draft
from .resource_plans import DEFAULT_PLAN
from .sources import load_yaml
from .spec import MODEL_MOUNT, ContainerSpec, Draft, EnvVar, Mount, is_secret_name

_GROUPS = ("parameters", "artifacts")
# Argo-style names may contain '-', which Jinja would read as a minus: `{{inputs.parameters.
# model-name}}` is rewritten to `{{ inputs.parameters["model-name"] }}` before compiling.
_HYPHENATED = re.compile(
    r"\{\{\s*inputs\s*\.\s*(parameters|artifacts)\s*\.\s*([A-Za-z0-9_]*-[A-Za-z0-9_-]*)\s*\}\}"
)
_MAX_PRODUCT = 100_000
_VOLUME_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]+$")


class _Sandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox that also refuses to build huge values."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int) and abs(right) > 64:
            raise SecurityError("exponent too large in template")
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                sized = isinstance(seq, str | list | tuple) and isinstance(n, int)
                if sized and len(seq) * n > _MAX_PRODUCT:
                    raise SecurityError("repeating a value that often would exhaust memory")
        return super().call_binop(context, operator, left, right)


_ENV = _Sandbox(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)


def _prepare(source: str) -> str:
    return _HYPHENATED.sub(r'{{ inputs.\1["\2"] }}', source)


def _is_template(text: str) -> bool:
    return "{{" in text or "{%" in text or "{#" in text


@functools.lru_cache(maxsize=8192)
def _compile(source: str) -> Template:
    return _ENV.from_string(_prepare(source))


# -- checking templates ---------------------------------------------------------------------


def _strings(value: Any, pointer: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield pointer, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, f"{pointer}/{str(k).replace('~', '~0').replace('/', '~1')}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings(v, f"{pointer}/{i}")


def _references(ast: nodes.Template) -> Iterator[tuple[nodes.Node, str, str | None]]:
    """(node, group, name) of every `inputs.GROUP[.NAME]` the template reads."""

    def key(node: nodes.Node) -> str | None:
        if isinstance(node, nodes.Getattr):
            return node.attr
        if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            return str(node.arg.value)
        return None

    for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
        inner = node.node  # type: ignore[attr-defined]
        if isinstance(inner, nodes.Name) and inner.name == "inputs":
            group = key(node)
            if group not in _GROUPS:
                yield node, group or "?", None
        elif (
            isinstance(inner, nodes.Getattr | nodes.Getitem)
            and isinstance(inner.node, nodes.Name)
            and inner.node.name == "inputs"
            and key(inner) in _GROUPS
        ):
            name = key(node)
            if name is not None:
                yield node, key(inner) or "", name


def check_template(template: ServingTemplate) -> list[Problem]:
    """Syntax and placeholder problems of a template, independent of any configuration."""
    doc = template.doc
    declared = {
        "parameters": [p.name for p in template.parameters],
        "artifacts": [a.name for a in template.artifacts],
    }
    problems: list[Problem] = []
    for pointer, text in _strings(template.body, template.body_pointer):
        if not _is_template(text):
            continue
        try:
            ast = _ENV.parse(_prepare(text))
        except TemplateSyntaxError as exc:
            problems.append(
                doc.problem(pointer, f"template syntax error: {exc.message}", exc.lineno)
            )
            continue
        for name in sorted(meta.find_undeclared_variables(ast) - {"inputs"}):
            problems.append(
                doc.problem(
                    pointer,
                    f"unknown variable {name!r}: templates can read inputs.parameters.NAME "
                    "and inputs.artifacts.NAME",
                )
            )
        for node, group, name in _references(ast):
            if name is None:
                problems.append(
                    doc.problem(
                        pointer,
                        f"inputs.{group} does not exist: use inputs.parameters or inputs.artifacts",
                        node.lineno,
                    )
                )
            elif name not in declared[group]:
                hint = did_you_mean(name, declared[group])
                problems.append(
                    doc.problem(
                        pointer,
                        f"inputs.{group}.{name} is not declared in spec.inputs.{group}{hint}",
                        node.lineno,
                    )
                )
    if template.form == "container":
        artifact = template.body.get("modelArtifact")
        literal = isinstance(artifact, str) and not _is_template(artifact)
        if literal and artifact not in declared["artifacts"]:
            problems.append(
                doc.problem(
                    f"{template.body_pointer}/modelArtifact",
                    f"{artifact!r} is not a declared artifact input"
                    f"{did_you_mean(artifact, declared['artifacts'])}",
                )
            )
    return problems


# -- rendering ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Inputs:
    """Resolved input values of one configuration."""

    parameters: dict[str, str]
    artifacts: dict[str, str]

    def context(self) -> dict[str, Any]:
        return {"inputs": {"parameters": self.parameters, "artifacts": self.artifacts}}


def resolve_inputs(
    repo: Repository, template: ServingTemplate, config: Configuration
) -> Inputs | None:
    """Binding wins, else the default; None when something is missing (crosscheck reports it)."""
    bound = dict(config.parameter_bindings)
    resolved = catalog.resolve(repo, template, config)
    # A catalog version's serving values sit between the binding and the template default.
    served = dict(resolved.version.parameters) if resolved else {}
    if resolved and template.parameter(catalog.MODEL_VERSION):
        served[catalog.MODEL_VERSION] = resolved.version.name  # `latest` resolved
        bound.pop(catalog.MODEL_VERSION, None)
    parameters = {}
    for p in template.parameters:
        value = bound.get(p.name, served.get(p.name, p.default))
        if value is None:
            return None
        parameters[p.name] = value
    artifact_ids = dict(config.artifact_bindings)
    artifacts = {}
    for a in template.artifacts:
        artifact = repo.artifacts.get((config.resource_group, artifact_ids.get(a.name, "")))
        if artifact is None:
            return None
        artifacts[a.name] = artifact.url
    return Inputs(parameters, artifacts)


def _render_text(text: str, pointer: str, inputs: Inputs) -> str:
    if not _is_template(text):
        return text
    try:
        return _compile(text).render(inputs.context())
    except SecurityError as exc:
        raise RenderError(pointer, f"unsafe template expression refused: {exc}") from None
    except UndefinedError as exc:
        raise RenderError(pointer, f"template reads an undefined value: {exc}") from None
    except TemplateError as exc:
        raise RenderError(pointer, f"template error: {exc}") from None
    except Exception as exc:  # a user's expression may raise anything, e.g. 1/0
        raise RenderError(
            pointer, f"template expression failed: {type(exc).__name__}: {exc}"
        ) from None


def _render_tree(value: Any, pointer: str, inputs: Inputs) -> Any:
    if isinstance(value, str):
        return _render_text(value, pointer, inputs)
    if isinstance(value, dict):
        return {k: _render_tree(v, f"{pointer}/{k}", inputs) for k, v in value.items()}
    if isinstance(value, list):
        return [_render_tree(v, f"{pointer}/{i}", inputs) for i, v in enumerate(value)]
    return value


def _render_yaml(value: Any, pointer: str, inputs: Inputs) -> Any:
    """KServe's text blocks: render, then parse the result as YAML."""
    if not isinstance(value, str):
        return _render_tree(value, pointer, inputs)
    text = _render_text(value, pointer, inputs)
    try:
        return load_yaml(text)
    except yaml.YAMLError as exc:
        detail = str(exc).replace("\n", " ")
        raise RenderError(pointer, f"the rendered text is not valid YAML: {detail}") from None


def _kserve_draft(template: ServingTemplate, inputs: Inputs) -> Draft:
    base = template.body_pointer
    body = template.body
    metadata = body.get("metadata") or {}
    labels = _string_map(
        _render_yaml(metadata.get("labels") or {}, f"{base}/metadata/labels", inputs)
    )
    annotations = _string_map(
        _render_yaml(metadata.get("annotations") or {}, f"{base}/metadata/annotations", inputs)
    )
    spec = _render_yaml(body["spec"], f"{base}/spec", inputs)
    try:
        return to_draft(spec, labels, annotations)
    except RenderError as exc:
        raise RenderError(f"{base}/spec", exc.message) from None


def _string_map(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RenderError("", "labels and annotations must be a mapping")
    return {str(k): "" if v is None else str(v) for k, v in value.items()}


def _int(value: Any, pointer: str, minimum: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise RenderError(pointer, f"must be a whole number, not {value!r}") from None
    if number < minimum:
        raise RenderError(pointer, f"must be at least {minimum}, not {number}")
    return number


def _container_draft(template: ServingTemplate, inputs: Inputs) -> Draft:
    base = template.body_pointer
    c = _render_tree(template.body, base, inputs)
    raw_env = c.get("env") or {}
    if isinstance(raw_env, dict):
        env = [EnvVar(k, v, is_secret_name(k)) for k, v in raw_env.items()]
    else:
        env = [
            EnvVar(e["name"], e["value"], e.get("secret", is_secret_name(e["name"])))
            for e in raw_env
        ]
    model_uri = None
    if "modelArtifact" in c:
        name = c["modelArtifact"]
        if name not in inputs.artifacts:
            raise RenderError(f"{base}/modelArtifact", f"{name!r} is not a declared artifact input")
        model_uri = inputs.artifacts[name]
        if not any(e.name == STORAGE_URI for e in env):
            env.append(EnvVar(STORAGE_URI, model_uri))
    replicas = _int(c.get("replicas", 1), f"{base}/replicas", 0)
    return Draft(
        image=c["image"],
        command=tuple(c["command"]) if "command" in c else None,
        args=tuple(c["args"]) if "args" in c else None,
        env=tuple(env),
        port=_int(c.get("port", 8080), f"{base}/port", 1),
        readiness_path=c.get("readinessPath", Draft.readiness_path),
        startup_timeout=_int(
            c.get("startupTimeout", Draft.startup_timeout), f"{base}/startupTimeout", 1
        ),
        resource_plan=c.get("resourcePlan"),
        gpus=_int(c["gpus"], f"{base}/gpus", -1) if "gpus" in c else None,
        replicas=max(1, replicas),
        max_replicas=_int(c["maxReplicas"], f"{base}/maxReplicas", 1)
        if "maxReplicas" in c
        else None,
        model_uri=model_uri,
        volumes=tuple(
            (v["source"], v["target"], v.get("readOnly", False)) for v in c.get("volumes", ())
        ),
        working_dir=c.get("workingDir"),
        restart_policy=c.get("restartPolicy", Draft.restart_policy),
        shm_size=c.get("shmSize"),
        ipc_mode=c.get("ipc"),
        stop_timeout=_int(c["stopTimeout"], f"{base}/stopTimeout", 0)
        if "stopTimeout" in c
        else None,
    )


def model_host_path(root: Path, uri: str) -> str:
    """Host path of a `file:` model URL: `file:///abs/path`, or `file:rel/path` under the root."""
    parts = urlsplit(uri)
    if parts.scheme.lower() != "file":
        raise RenderError(
            "/spec/inputArtifactBindings",
            f"model artifact {uri}: only file: URLs can be mounted at {MODEL_MOUNT} "
            f"(the {parts.scheme}: scheme is not supported yet)",
            blame="configuration",
        )
    if parts.netloc not in ("", "localhost"):
        raise RenderError(
            "/spec/inputArtifactBindings",
            f"model artifact {uri}: file URLs must be local (file:///path or file:relative/path)",
            blame="configuration",
        )
    path = unquote(parts.path)
    return os.path.normpath(path if path.startswith("/") else os.path.join(root, path))


def _mounts(
    root: Path, volumes: tuple[tuple[str, str, bool], ...], pointer: str
) -> tuple[Mount, ...]:
    mounts = []
    for i, (source, target, read_only) in enumerate(volumes):
        if source.startswith("/"):
            host = os.path.normpath(source)
        elif "/" in source or source.startswith("."):
            host = os.path.normpath(os.path.join(root, source))
        elif _VOLUME_NAME.match(source):
            host = source  # a named Docker volume
        else:
            raise RenderError(
                f"{pointer}/{i}/source", f"{source!r} is neither a path nor a volume name"
            )
        mounts.append(Mount(host, target, read_only))
    return tuple(mounts)


def _finish(repo: Repository, template: ServingTemplate, draft: Draft) -> ContainerSpec:
    plan_name = draft.resource_plan or DEFAULT_PLAN
    plan = repo.plans.get(plan_name)
    if plan is None:
        where = (
            "/spec/template/metadata/labels"
            if template.form == "kserve"
            else f"{template.body_pointer}/resourcePlan"
        )
        raise RenderError(
            where,
            f"resource plan {plan_name!r} not found{did_you_mean(plan_name, repo.plans)} "
            f"(known: {', '.join(sorted(repo.plans))})",
        )
    return ContainerSpec(
        image=draft.image,
        command=draft.command,
        args=draft.args,
        env=draft.env,
        port=draft.port,
        model_uri=draft.model_uri,
        model_path=model_host_path(repo.root, draft.model_uri) if draft.model_uri else None,
        volumes=_mounts(repo.root, draft.volumes, f"{template.body_pointer}/volumes"),
        gpus=plan.gpus if draft.gpus is None else draft.gpus,
        shm_size=draft.shm_size,
        ipc_mode=draft.ipc_mode,
        working_dir=draft.working_dir,
        stop_timeout=draft.stop_timeout,
        resource_plan=plan.name,
        cpus=plan.cpus,
        memory=plan.memory,
        restart_policy=draft.restart_policy,
        readiness_path=draft.readiness_path,
        startup_timeout=draft.startup_timeout,
        replicas=draft.replicas,
        max_replicas=max(draft.replicas, draft.max_replicas or draft.replicas),
        labels=draft.labels,
        annotations=draft.annotations,
    )


def render_configuration(
    repo: Repository, template: ServingTemplate, config: Configuration, inputs: Inputs
) -> ContainerSpec:
    if template.form == "kserve":
        draft = _kserve_draft(template, inputs)
    else:
        draft = _container_draft(template, inputs)
    return _finish(repo, template, draft)


def render_all(repo: Repository) -> tuple[dict[RGKey, ContainerSpec], list[Problem]]:
    """Render every configuration whose references are sound; problems of the others are
    already reported by the cross-checks and are not repeated here."""
    problems: list[Problem] = []
    sound: dict[str, ServingTemplate] = {}
    for template in repo.templates.values():
        template_problems = check_template(template)
        problems += template_problems
        if not template_problems:
            sound[template.name] = template
    specs: dict[RGKey, ContainerSpec] = {}
    for key, config in repo.configurations.items():
        template = sound.get(config.executable_id)
        if template is None or template.scenario_id != config.scenario_id:
            continue
        inputs = resolve_inputs(repo, template, config)
        if inputs is None:
            continue
        try:
            specs[key] = render_configuration(repo, template, config, inputs)
        except RenderError as exc:
            if exc.blame == "configuration":
                problems.append(config.doc.problem(exc.pointer, exc.message))
            else:
                problems.append(
                    template.doc.problem(
                        exc.pointer, f"{exc.message} (rendering configuration {config.name})"
                    )
                )
    return specs, problems
