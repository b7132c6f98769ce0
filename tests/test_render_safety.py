"""Rendering is safe to expose to API tenants (issue 13, "Safe to expose"):

- a binding value or an artifact URL is only ever the text of the one scalar its placeholder
  stands in, whatever characters it holds, in both template forms (finding 1a);
- a `file:` artifact resolves (symlinks followed) inside the GitOps root, its models/ folder
  or a folder Settings `spec.artifactRoots` allow-lists; tenants' artifacts (the AI API's
  manifests/api/) only inside models/ and the allow-list (finding 1b);
- a template cannot make rendering use much memory or time (finding 5).

Everything runs against real files through the real CLI; the memory bounds are measured as the
peak RSS of a real `reconciler validate` process.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from reconciler.errors import ManifestError
from reconciler.manifests import render
from reconciler.manifests.desired import desired_state
from reconciler.manifests.load import load
from reconciler.manifests.sources import API_FOLDER
from tests.conftest import ECHO_MANIFESTS, ECHO_TEMPLATE, cli
from tests.forked_cli import run_cli

# -- finding 1a: values never change the structure of the spec --------------------------------

# One executable per form; every placeholder context AI Core's YAML text allows: double-quoted,
# single-quoted, plain, block scalar, inside a flow sequence, in the labels and annotations.
TEMPLATES = """
apiVersion: ai.sap.com/v1alpha1
kind: ServingTemplate
metadata:
  name: attack-kserve
  annotations:
    scenarios.ai.sap.com/name: "attack"
  labels:
    scenarios.ai.sap.com/id: "attack"
    ai.sap.com/version: "1.0"
spec:
  inputs:
    parameters:
      - name: modelName
        type: string
    artifacts:
      - name: model
  template:
    apiVersion: "serving.kserve.io/v1beta1"
    metadata:
      annotations: |
        note: "{{inputs.parameters.modelName}}"
      labels: |
        ai.sap.com/resourcePlan: starter
        team: '{{inputs.parameters.modelName}}'
    spec: |
      predictor:
        minReplicas: 1
        containers:
        - name: kserve-container
          image: "registry.local/serve:1"
          args: ["--name", "{{inputs.parameters.modelName}}", --plain={{inputs.parameters.modelName}}]
          ports:
            - containerPort: 8080
          env:
            - name: STORAGE_URI
              value: "{{inputs.artifacts.model}}"
            - name: MODEL_NAME
              value: "{{inputs.parameters.modelName}}"
            - name: PLAIN
              value: {{inputs.parameters.modelName}}
            - name: SINGLE
              value: '{{inputs.parameters.modelName}}'
            - name: BLOCK
              value: |
                {{inputs.parameters.modelName}}
---
apiVersion: reconciler/v1
kind: ServingTemplate
metadata:
  name: attack-container
spec:
  scenarioId: attack
  inputs:
    parameters: [{name: modelName}]
    artifacts: [{name: model}]
  container:
    image: registry.local/serve:1
    args: ["--name", "{{ inputs.parameters.modelName }}"]
    env:
      MODEL_NAME: "{{ inputs.parameters.modelName }}"
      URI: "{{ inputs.artifacts.model }}"
    modelArtifact: model
"""

PAYLOADS = {
    "quote-newline": 'x"\ncommand: [sh]\nfoo: "',
    # Indented to the container's keys: on the old code this added command and workingDir.
    "command-and-workdir": 'x"\n    command: [sh, -c, id]\n    workingDir: "/',
    "all-gpus": 'x"\n    resources:\n      limits:\n        nvidia.com/gpu: -1\n    workingDir: "/',
    "single-quote": "x'\n    command: [sh]\n    workingDir: '/",
    "jinja": "{{ 7*7 }}{% if true %}yes{% endif %}",
    "document": "---\nkind: X",
    "line-separator": 'x"\u2028    command: [sh]\u2028    workingDir: "/',
    "next-line": 'x"\x85    command: [sh]\x85    workingDir: "/',
    "flow": 'x", "--evil"], command: [sh], "a": ["',
    "yaml-syntax": "&a !!python/object:os.system *a {a: b} [1] # c",
    "unicode": "é ü 中文 🙂 \u2029 \ufeff end",
}


def manifests(value: str) -> str:
    """The configurations as JSON (YAML reads JSON), so that any value is written exactly."""
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "reconciler/v1",
            "kind": "Artifact",
            "metadata": {"name": "model-1"},
            "spec": {"kind": "model", "url": f"file:models/{value}", "scenarioId": "attack"},
        }
    ]
    for form, short in (("kserve", "k"), ("container", "c")):
        docs += [
            {
                "apiVersion": "reconciler/v1",
                "kind": "Configuration",
                "metadata": {"name": f"{short}-config"},
                "spec": {
                    "executableId": f"attack-{form}",
                    "scenarioId": "attack",
                    "parameterBindings": [{"key": "modelName", "value": value}],
                    "inputArtifactBindings": [{"key": "model", "artifactId": "model-1"}],
                },
            },
            {
                "apiVersion": "reconciler/v1",
                "kind": "Deployment",
                "metadata": {"name": f"{short}-dep"},
                "spec": {"configurationId": f"{short}-config"},
            },
        ]
    return "\n---\n".join(yaml_json(d) for d in docs) + "\n"


# JSON is YAML, except that YAML reads astral characters, not surrogate pairs, and takes raw
# line breaks (NEL, LS, PS) inside quotes as folding: those get YAML's own escapes.
_YAML_ESCAPES = {0x85: "\\N", 0x2028: "\\L", 0x2029: "\\P", 0xFEFF: "\\uFEFF"}


def yaml_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False).translate(_YAML_ESCAPES)


def rendered_specs(root: Path) -> dict[str, dict[str, Any]]:
    specs = {}
    for name in ("k-dep", "c-dep"):
        result = cli("render", name, "--root", root, "--json")
        assert result.code == 0, result.err
        specs[name] = json.loads(result.out)["spec"]
    return specs


def replaced(value: Any, old: str, new: str) -> Any:
    if isinstance(value, str):
        return value.replace(old, new)
    if isinstance(value, dict):
        return {replaced(k, old, new): replaced(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [replaced(v, old, new) for v in value]
    return value


@pytest.mark.parametrize("payload", PAYLOADS.values(), ids=PAYLOADS.keys())
def test_a_value_is_only_ever_the_one_scalar_of_its_placeholder(gitops, payload: str):
    """The spec rendered with a hostile value is the spec rendered with a harmless one, the
    value standing verbatim wherever the harmless one stood (same keys, same command, working
    dir and GPUs), in both template forms and in the artifact URL."""
    benign = rendered_specs(
        gitops({"templates/t.yaml": TEMPLATES, "manifests/m.yaml": manifests("benign")}, "ok")
    )
    root = gitops({"templates/t.yaml": TEMPLATES, "manifests/m.yaml": manifests(payload)})
    attacked = rendered_specs(root)
    for name in benign:
        host_path = attacked[name]["model"].pop("hostPath")
        benign[name]["model"].pop("hostPath")
        assert attacked[name] == replaced(benign[name], "benign", payload), name
        assert (attacked[name]["command"], attacked[name]["workingDir"]) == (None, None)
        assert attacked[name]["gpus"] == 0
        models = os.path.realpath(root / "models")
        assert os.path.commonpath((host_path, models)) == models
    kserve = attacked["k-dep"]
    assert kserve["env"]["MODEL_NAME"] == payload
    assert kserve["env"]["PLAIN"] == payload
    assert kserve["env"]["BLOCK"] == payload + "\n"
    assert kserve["env"]["STORAGE_URI"] == f"file:models/{payload}"
    assert kserve["args"] == ["--name", payload, f"--plain={payload}"]
    assert kserve["labels"]["team"] == payload
    assert kserve["annotations"]["note"] == payload


def test_a_plain_placeholder_still_gives_a_number(gitops):
    """`containerPort: {{p}}` (unquoted) is a number as before, but a value that is not a number
    stays text: the value never becomes a mapping or a list."""
    template = TEMPLATES.replace("containerPort: 8080", "containerPort: {{inputs.parameters.port}}")
    template = template.replace(
        "      - name: modelName\n        type: string\n",
        "      - name: modelName\n        type: string\n      - name: port\n        default: '9001'\n",
        1,
    )
    root = gitops({"templates/t.yaml": template, "manifests/m.yaml": manifests("benign")})
    assert rendered_specs(root)["k-dep"]["port"] == 9001
    bad = manifests("benign").replace(
        '[{"key": "modelName", "value": "benign"}]',
        json.dumps(
            [
                {"key": "modelName", "value": "benign"},
                {"key": "port", "value": "9001\n          workingDir: /"},
            ]
        ),
        1,
    )
    (root / "manifests/m.yaml").write_text(bad)
    result = cli("validate", "--root", root)
    assert result.code == 1 and "Traceback" not in result.err
    (line,) = [x for x in result.lines if not x.startswith("error: ")]
    assert "/spec/template/spec: in the rendered spec at /predictor/containers/0/ports/0" in line
    assert "must be an integer" in line


# -- finding 1b: file: artifacts stay where the operator allows ------------------------------

OUTSIDE_MANIFESTS = ECHO_MANIFESTS.replace("url: file:models/echo", "url: {url}")


def artifact_root(gitops, url: str, extra: dict[str, str] | None = None) -> Path:
    return gitops(
        {
            "templates/echo.yaml": ECHO_TEMPLATE,
            "manifests/echo.yaml": OUTSIDE_MANIFESTS.replace("{url}", json.dumps(url)),
            **(extra or {}),
        }
    )


def only_problem(root: Path) -> str:
    result = cli("validate", "--root", root)
    assert result.code == 1, result.out
    assert "Traceback" not in result.err
    (line,) = [x for x in result.lines if not x.startswith("error: ")]
    return line


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc",
        "file://localhost/etc/passwd",
        "file:../outside",
        "file:models/../../outside",
        "file:models/%2e%2e/%2e%2e/outside",
        "file:models/escape/secret",
    ],
)
def test_a_file_artifact_outside_the_root_is_refused(gitops, tmp_path: Path, url: str):
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside/secret").write_text("key")
    root = artifact_root(gitops, url)
    (root / "models").mkdir()
    (root / "models/escape").symlink_to(tmp_path / "outside")  # a link inside, leading out
    line = only_problem(root)
    assert line.startswith("manifests/echo.yaml:")
    assert "/spec/url:" in line and "outside the GitOps root" in line
    assert "spec.artifactRoots" in line
    # Without the artifact's problem nothing renders: no deployment can mount it.
    with pytest.raises(ManifestError):
        desired_state(root)


def test_artifact_roots_allow_a_folder_outside_the_root(gitops, tmp_path: Path):
    shared = tmp_path / "shared-models"
    (shared / "echo").mkdir(parents=True)
    settings = (
        "apiVersion: reconciler/v1\nkind: Settings\nmetadata: {name: host}\n"
        f"spec: {{artifactRoots: [{json.dumps(str(shared))}]}}\n"
    )
    root = artifact_root(gitops, f"file://{shared}/echo", {"manifests/settings.yaml": settings})
    result = cli("render", "echo", "--root", root, "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["spec"]["model"]["hostPath"] == str(shared.resolve() / "echo")
    # A relative entry is a schema error at the Settings document (so the folder is not
    # allowed, and the artifact is reported too).
    (root / "manifests/settings.yaml").write_text(settings.replace(str(shared), "relative/dir"))
    result = cli("validate", "--root", root)
    assert result.code == 1 and "Traceback" not in result.err
    assert any(
        line.startswith("manifests/settings.yaml:") and "/spec/artifactRoots/0" in line
        for line in result.lines
    ), result.err


def test_the_real_path_is_mounted_and_checked_again_when_rendering(gitops, tmp_path: Path):
    """The mount source is the resolved path (a link changed later does not move the mount),
    and rendering resolves it again: a link turned to point outside is refused."""
    root = artifact_root(gitops, "file:models/current")
    (root / "models/v1").mkdir(parents=True)
    (root / "models/current").symlink_to("v1")
    spec = desired_state(root).deployments[0].spec
    assert spec.model_path == str((root / "models/v1").resolve())
    (tmp_path / "elsewhere").mkdir()
    (root / "models/current").unlink()
    (root / "models/current").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ManifestError) as info:
        desired_state(root)
    (problem,) = info.value.problems
    assert problem.pointer == "/spec/url" and "outside the GitOps root" in problem.message
    # The check at render time itself, for a path resolved after validation:
    repo, _ = load(root)
    with pytest.raises(render.RenderError, match="outside the GitOps root"):
        render.model_host_path(repo, "file:models/current", tenant=False)


def test_tenants_artifacts_may_use_only_the_model_folders(gitops):
    """An artifact written by the AI API (manifests/api/...) may not point at the root's other
    folders (state, manifests, a credentials file kept there), though an operator's may."""
    assert render.API_FOLDER == API_FOLDER
    artifact = (
        "apiVersion: reconciler/v1\nkind: Artifact\nmetadata: {{name: {name}}}\n"
        "spec: {{kind: model, url: {url}, scenarioId: echo}}\n"
    )
    root = gitops(
        {
            "templates/echo.yaml": ECHO_TEMPLATE,
            "manifests/echo.yaml": ECHO_MANIFESTS,
            "manifests/ops.yaml": artifact.format(name="ops-state", url="file:state"),
            "manifests/api/default/artifact-mine.yaml": artifact.format(
                name="mine", url="file:models/mine"
            ),
        }
    )
    assert cli("validate", "--root", root).code == 0
    (root / "manifests/api/default/artifact-state.yaml").write_text(
        artifact.format(name="tenant-state", url="file:state")
    )
    line = only_problem(root)
    assert line.startswith("manifests/api/default/artifact-state.yaml:")
    assert "/spec/url:" in line and "models/" in line and "spec.artifactRoots" in line


STORAGE_FROM_PARAMETER = (
    TEMPLATES.split("---")[0]
    .replace('value: "{{inputs.artifacts.model}}"', 'value: "{{inputs.parameters.uri}}"')
    .replace(
        "    artifacts:\n      - name: model\n",
        "      - name: uri\n        type: string\n",
    )
)


def parameter_configuration(uri: str) -> str:
    return json.dumps(
        {
            "apiVersion": "reconciler/v1",
            "kind": "Configuration",
            "metadata": {"name": "by-uri"},
            "spec": {
                "executableId": "attack-kserve",
                "scenarioId": "attack",
                "parameterBindings": [
                    {"key": "modelName", "value": "m"},
                    {"key": "uri", "value": uri},
                ],
            },
        }
    )


def test_a_model_path_made_from_a_parameter_is_checked_when_rendering(gitops):
    """STORAGE_URI filled from a parameter is no artifact: only rendering can check it, with
    the tenants' rule when the configuration is a tenant's (manifests/api/...)."""
    operator = "manifests/ops.yaml"
    tenants = "manifests/api/default/configuration-by-uri.yaml"
    for i, (where, uri, allowed) in enumerate(
        [
            (operator, "file:state/x", True),
            (operator, "file:///etc", False),
            (tenants, "file:models/x", True),
            (tenants, "file:state/x", False),
            (tenants, "file:///etc", False),
        ]
    ):
        root = gitops(
            {"templates/t.yaml": STORAGE_FROM_PARAMETER, where: parameter_configuration(uri)},
            name=f"case-{i}",
        )
        result = cli("validate", "--root", root)
        if allowed:
            assert result.code == 0, (where, uri, result.err)
            continue
        line = only_problem(root)
        assert line.startswith(where + ":"), (uri, line)
        assert "/spec/inputArtifactBindings: model artifact " + uri in line


# -- finding 5: memory and time bombs ----------------------------------------------------------

# Runs `reconciler validate` in a child process of its own (tests/forked_cli.py), whose peak RSS
# is measured; an address-space limit there only protects this machine from the old, unbounded
# code: the bound under test is far lower.
PEAK_RSS_LIMIT_MIB = 300  # a process that loads the package is about 60–90 MiB

REPLACE_CHAIN = '"a"' + '|replace("a", "aaaaaaaaaa")' * 9
BOMBS = {
    "center": '{{ "a"|center(999999999) }}',
    "ljust": '{{ "x".ljust(10**9) }}',
    "rjust": '{{ "x".rjust(999999999) }}',
    "zfill": '{{ "x".zfill(10**9) }}',
    "expandtabs": '{{ "\\t".expandtabs(999999999) }}',
    "indent": '{{ "x"|indent(999999999) }}',
    "replace-filter-chain": "{{ " + REPLACE_CHAIN + " }}",
    "replace-method-chain": '{{ "a"' + '.replace("a", "aaaaaaaaaa")' * 9 + " }}",
    "str-format-width": '{{ "{:>999999999}".format(1) }}',
    "percent-width": '{{ "%999999999d" % 1 }}',
    "format-filter": '{{ "%.999999999f"|format(1.5) }}',
    "tojson-indent": "{{ [1, [2, 3]]|tojson(999999999) }}",
    "batch-fill": '{{ [1]|batch(999999999, "x")|list|length }}',
    "lipsum": "{{ lipsum(999999999) }}",
    "to-bytes": '{{ (1).to_bytes(999999999, "big")|length }}',
    "concat-doubling": (
        '{% set a = "x" * 100000 %}{% set b = a~a~a~a~a~a~a~a~a~a %}'
        "{% set c = b~b~b~b~b~b~b~b~b~b %}{% set d = c~c~c~c~c~c~c~c~c~c %}"
        "{% set e = d~d~d~d~d~d~d~d~d~d %}{{ e|length }}"
    ),
    "shared-lists": (
        "{% set a = [1] * 100000 %}{% set b = [a, a, a, a, a, a, a, a, a, a] %}"
        "{% set c = [b, b, b, b, b, b, b, b, b, b] %}{% set d = [c, c, c, c, c, c, c, c, c, c] %}"
        "{{ [d, d, d, d, d, d, d, d, d, d] }}"
    ),
    "output-in-a-set-block": (
        '{% set a = "x" * 100000 %}{% set out %}{% for i in a %}{{ a }}{% endfor %}{% endset %}'
        "{{ out|length }}"
    ),
    "nested-loops": (
        '{% set a = "x" * 100000 %}{% for i in a %}{% for j in a %}{% endfor %}{% endfor %}'
    ),
}


def validate_measured(root: Path) -> tuple[int, list[str], int]:
    # (the timeout is a hang guard only: the bounded code answers in well under a second)
    run = run_cli("validate", "--root", root, timeout=120)
    lines = [line for line in run.result.lines if not line.startswith("error: ")]
    return run.result.code, lines, run.peak_mib


@pytest.mark.parametrize("expression", BOMBS.values(), ids=BOMBS.keys())
def test_template_bombs_fail_fast_in_little_memory(gitops, expression: str):
    template = ECHO_TEMPLATE.replace(
        'GREETING: "{{ inputs.parameters.greeting }}"', f"GREETING: {json.dumps(expression)}"
    )
    root = gitops({"templates/echo.yaml": template, "manifests/echo.yaml": ECHO_MANIFESTS})
    code, lines, peak_mib = validate_measured(root)
    assert code == 1, lines
    assert "Traceback" not in "\n".join(lines)
    (line,) = lines
    assert line.startswith("templates/echo.yaml:")
    assert "/spec/container/env/GREETING: unsafe template expression refused:" in line
    assert peak_mib < PEAK_RSS_LIMIT_MIB, f"peak RSS {peak_mib} MiB: {line}"


def test_loops_are_bounded(gitops):
    """Jinja's sandbox caps range() at 100000 items; nested loops (over ranges or over long
    values) are counted."""
    template = ECHO_TEMPLATE.replace(
        'GREETING: "{{ inputs.parameters.greeting }}"',
        'GREETING: "{% for i in range(10**9) %}x{% endfor %}"',
    )
    root = gitops({"templates/echo.yaml": template, "manifests/echo.yaml": ECHO_MANIFESTS})
    line = only_problem(root)
    assert "/spec/container/env/GREETING:" in line and "MAX_RANGE (100000)" in line
    nested = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    template = ECHO_TEMPLATE.replace(
        'GREETING: "{{ inputs.parameters.greeting }}"', f"GREETING: {json.dumps(nested)}"
    )
    root = gitops(
        {"templates/echo.yaml": template, "manifests/echo.yaml": ECHO_MANIFESTS}, name="ranges"
    )
    code, lines, peak_mib = validate_measured(root)
    assert code == 1 and len(lines) == 1, lines
    assert "too much work" in lines[0] and "/spec/container/env/GREETING" in lines[0]
    loop = "{% for i in inputs.parameters.greeting %}{% for j in inputs.parameters.greeting %}"
    template = ECHO_TEMPLATE.replace(
        'GREETING: "{{ inputs.parameters.greeting }}"',
        f'GREETING: "{loop}{{{{ i }}}}{{% endfor %}}{{% endfor %}}"',
    )
    long_value = ECHO_MANIFESTS.replace(
        "  inputArtifactBindings:",
        f"  parameterBindings: [{{key: greeting, value: {'y' * 5000}}}]\n  inputArtifactBindings:",
    )
    root = gitops({"templates/echo.yaml": template, "manifests/echo.yaml": long_value}, name="long")
    code, lines, peak_mib = validate_measured(root)
    assert code == 1 and len(lines) == 1, lines
    assert "too much work" in lines[0] and "/spec/container/env/GREETING" in lines[0]
    assert peak_mib < PEAK_RSS_LIMIT_MIB


def ordinary(name: str) -> str:
    return (
        "{% macro up(v) %}{{ v|upper }}{% endmacro %}"
        f"{{{{ up(inputs.parameters.{name}) }}}}-{{{{ '%s!'|format(inputs.parameters.{name}) }}}}"
        "-{{ '{:>3}'.format(1) }}-{% for c in 'abc' %}{{ loop.index }}{{ c }}{% endfor %}"
        f"-{{% filter upper %}}x{{{{ inputs.parameters.{name} }}}}{{% endfilter %}}"
        "-{{ ['a', 'b']|join(',') }}-{{ 'ab' ~ 'cd' }}-{{ 'x' * 3 }}-{{ 2 ** 10 }}"
    )


def test_ordinary_templates_render_with_ordinary_values(gitops):
    """The bounds leave room for what templates really do (macros, filters, loops, format,
    filter blocks), in both forms, and an everyday value with quotes in it (a model called
    `O'Brien "v2"`) is just text in AI Core's YAML form too."""
    value = 'O\'Brien "v2"'
    expected = f'O\'BRIEN "V2"-{value}!-  1-1a2b3c-XO\'BRIEN "V2"-a,b-abcd-xxx-1024'
    template = ECHO_TEMPLATE.replace(
        'GREETING: "{{ inputs.parameters.greeting }}"',
        f"GREETING: {json.dumps(ordinary('greeting'))}",
    )
    root = gitops(
        {
            "templates/echo.yaml": template,
            "manifests/echo.yaml": ECHO_MANIFESTS.replace(
                "  inputArtifactBindings:",
                f"  parameterBindings: [{{key: greeting, value: {json.dumps(value)}}}]\n"
                "  inputArtifactBindings:",
            ),
        }
    )
    result = cli("render", "echo", "--root", root, "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["spec"]["env"]["GREETING"] == expected
    kserve = TEMPLATES.replace(
        'value: "{{inputs.parameters.modelName}}"', f"value: {json.dumps(ordinary('modelName'))}"
    )
    root = gitops({"templates/t.yaml": kserve, "manifests/m.yaml": manifests(value)}, name="k")
    assert rendered_specs(root)["k-dep"]["env"]["MODEL_NAME"] == expected


def test_call_blocks_are_refused_clearly(gitops):
    expression = "{% macro m() %}{{ caller() }}{% endmacro %}{% call m() %}x{% endcall %}"
    template = ECHO_TEMPLATE.replace(
        'GREETING: "{{ inputs.parameters.greeting }}"', f"GREETING: {json.dumps(expression)}"
    )
    root = gitops({"templates/echo.yaml": template, "manifests/echo.yaml": ECHO_MANIFESTS})
    line = only_problem(root)
    assert "/spec/container/env/GREETING: {% call %} blocks are not supported" in line
