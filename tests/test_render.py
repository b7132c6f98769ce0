"""Rendering: parameter resolution, the sandbox, both template forms, resource plans, ids."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from reconciler.errors import ManifestError
from reconciler.manifests import render as render_module
from reconciler.manifests.desired import desired_state
from tests.conftest import ECHO_MANIFESTS, ECHO_TEMPLATE, FIXTURES, cli


def rendered(root: Path, name: str = "echo") -> dict:
    result = cli("render", name, "--root", root, "--json")
    assert result.code == 0, result.err
    return json.loads(result.out)


def failure(root: Path) -> list[str]:
    result = cli("validate", "--root", root)
    assert result.code == 1, result.out
    assert "Traceback" not in result.err
    return [line for line in result.lines if not line.startswith("error: ")]


def with_bindings(manifests: str, **values: str) -> str:
    bindings = "".join(f'    - key: {k}\n      value: "{v}"\n' for k, v in values.items())
    return manifests.replace(
        "  inputArtifactBindings:", f"  parameterBindings:\n{bindings}  inputArtifactBindings:"
    )


# -- parameter resolution -------------------------------------------------------------------


def test_template_default_applies_when_unbound(echo_repo: Path):
    spec = rendered(echo_repo)["spec"]
    assert spec["image"] == "echo/server:hello"
    assert spec["env"]["GREETING"] == "hello"


def test_binding_wins_over_default(gitops):
    root = gitops(
        {
            "templates/echo.yaml": ECHO_TEMPLATE,
            "manifests/echo.yaml": with_bindings(ECHO_MANIFESTS, greeting="bonjour"),
        }
    )
    assert rendered(root)["spec"]["env"]["GREETING"] == "bonjour"


def test_unbound_parameter_follows_a_changed_default(echo_repo: Path):
    template = echo_repo / "templates/echo.yaml"
    template.write_text(template.read_text().replace("default: hello", "default: hi"))
    assert rendered(echo_repo)["spec"]["env"]["GREETING"] == "hi"


def test_artifact_placeholder_renders_to_the_url_and_mounts_the_model(echo_repo: Path):
    spec = rendered(echo_repo)["spec"]
    assert spec["env"]["STORAGE_URI"] == "file:models/echo"
    assert spec["model"] == {
        "uri": "file:models/echo",
        "hostPath": str((echo_repo / "models/echo").resolve()),
        "mountPath": "/mnt/models",
    }


SRV_MODELS = """
apiVersion: reconciler/v1
kind: Settings
metadata: {name: host}
spec: {artifactRoots: [/srv/models]}
"""


def test_absolute_file_url(gitops):
    manifests = ECHO_MANIFESTS.replace("url: file:models/echo", "url: file:///srv/models/echo%201")
    root = gitops(
        {
            "templates/echo.yaml": ECHO_TEMPLATE,
            "manifests/echo.yaml": manifests,
            "manifests/settings.yaml": SRV_MODELS,  # a folder outside the root: allow-listed
        }
    )
    assert rendered(root)["spec"]["model"]["hostPath"] == "/srv/models/echo 1"


def test_a_model_artifact_that_cannot_be_mounted_is_rejected_at_the_configuration(gitops):
    manifests = ECHO_MANIFESTS.replace("url: file:models/echo", "url: gs://bucket/models/echo")
    root = gitops({"templates/echo.yaml": ECHO_TEMPLATE, "manifests/echo.yaml": manifests})
    (line,) = failure(root)
    assert line.startswith("manifests/echo.yaml:")
    assert "/spec/inputArtifactBindings: model artifact gs://bucket/models/echo" in line
    assert "only file:, ai://, s3:// and https:// URLs can be mounted" in line
    assert "the gs: scheme is not supported yet" in line


def test_a_parameter_used_as_a_number(gitops):
    root = gitops(
        {
            "templates/echo.yaml": ECHO_TEMPLATE,
            "manifests/echo.yaml": with_bindings(ECHO_MANIFESTS, port="9001"),
        }
    )
    assert rendered(root)["spec"]["port"] == 9001
    root = gitops(
        {
            "templates/echo.yaml": ECHO_TEMPLATE,
            "manifests/echo.yaml": with_bindings(ECHO_MANIFESTS, port="ninety"),
        },
        name="bad",
    )
    (line,) = failure(root)
    assert "/spec/container/port: must be a whole number, not 'ninety'" in line
    assert "(rendering configuration echo-config)" in line


# -- the sandbox ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expression",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ inputs.parameters.greeting.__class__ }}",
        "{{ inputs.__class__.__init__.__globals__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ lipsum.__globals__['os'] }}",
        "{{ inputs.parameters.greeting|attr('__class__') }}",
        "{{ 'x' * 100000000 }}",
        "{{ 2 ** 100000 }}",
        "{{ inputs.parameters.update({'greeting': 'pwned'}) }}",
    ],
)
def test_template_escapes_fail_with_a_clear_error(gitops, expression):
    template = ECHO_TEMPLATE.replace(
        'GREETING: "{{ inputs.parameters.greeting }}"', f'GREETING: "{expression}"'
    )
    root = gitops({"templates/echo.yaml": template, "manifests/echo.yaml": ECHO_MANIFESTS})
    (line,) = failure(root)
    assert line.startswith("templates/echo.yaml:")
    assert "/spec/container/env/GREETING" in line
    assert re.search(r"unsafe|not declared|unknown variable|does not exist", line), line
    assert "pwned" not in line


def test_undeclared_placeholder_is_reported_at_the_template(gitops):
    template = ECHO_TEMPLATE.replace(
        'inputs.parameters.greeting }}"\n    port', 'inputs.parameters.greting }}"\n    port'
    )
    root = gitops({"templates/echo.yaml": template, "manifests/echo.yaml": ECHO_MANIFESTS})
    (line,) = failure(root)
    assert "templates/echo.yaml:" in line
    assert "inputs.parameters.greting is not declared" in line
    assert "did you mean 'greeting'" in line


def test_unknown_variable_and_unknown_group(gitops):
    template = ECHO_TEMPLATE.replace(
        'GREETING: "{{ inputs.parameters.greeting }}"',
        'GREETING: "{{ secrets.token }}"\n      OTHER: "{{ inputs.params.x }}"',
    )
    root = gitops({"templates/echo.yaml": template, "manifests/echo.yaml": ECHO_MANIFESTS})
    lines = failure(root)
    assert any("unknown variable 'secrets'" in line for line in lines)
    assert any("inputs.params does not exist" in line for line in lines)


def test_jinja_syntax_error_names_the_line_inside_a_block(gitops):
    template = (FIXTURES / "aicore/text-clf-serving.yaml").read_text()
    broken = template.replace(
        'value: "{{inputs.artifacts.textmodel}}"', 'value: "{{inputs.artifacts.textmodel"'
    )
    root = gitops({"templates/t.yaml": broken, "manifests/m.yaml": text_clf_manifests()})
    (line,) = failure(root)
    assert "/spec/template/spec: template syntax error" in line
    file_line = int(line.split(":")[1])
    assert '{{inputs.artifacts.textmodel"' in broken.splitlines()[file_line - 1]


def test_a_value_never_breaks_the_rendered_yaml(gitops):
    """A value that would not be valid YAML where its placeholder stands (unquoted) is still
    just the text of that scalar: values are put into the parsed YAML, never into its text."""
    template = (
        (FIXTURES / "aicore/greet-gpu-serving.yaml")
        .read_text()
        .replace(
            'value: "{{inputs.parameters.greetmessage}}"',
            "value: {{inputs.parameters.greetmessage}}",
        )
    )
    root = gitops(
        {"templates/t.yaml": template, "manifests/m.yaml": greet_manifests(greetmessage="a: b: c")}
    )
    assert rendered(root, "greet")["spec"]["env"]["greetingmessage"] == "a: b: c"


def test_compiled_templates_are_cached(echo_repo: Path):
    desired_state(echo_repo)
    misses = render_module._compile.cache_info().misses
    desired_state(echo_repo)
    assert render_module._compile.cache_info().misses == misses


# -- the AI Core (KServe) form --------------------------------------------------------------


def text_clf_manifests() -> str:
    return (
        SRV_MODELS
        + """---
apiVersion: reconciler/v1
kind: Artifact
metadata:
  name: textmodel-1
spec:
  kind: model
  url: file:///srv/models/text-clf/1
  scenarioId: text-clf-tutorial
---
apiVersion: reconciler/v1
kind: Configuration
metadata:
  name: text-clf-config
spec:
  executableId: text-clf-infer-tutorial
  scenarioId: text-clf-tutorial
  inputArtifactBindings:
    - key: textmodel
      artifactId: textmodel-1
---
apiVersion: reconciler/v1
kind: Deployment
metadata:
  name: text-clf
spec:
  configurationId: text-clf-config
"""
    )


def greet_manifests(**bindings: str) -> str:
    params = "".join(f'    - key: {k}\n      value: "{v}"\n' for k, v in bindings.items())
    return f"""
apiVersion: reconciler/v1
kind: Artifact
metadata:
  name: greet-model
spec:
  kind: model
  url: file:models/greet
  scenarioId: greet-scenario
---
apiVersion: reconciler/v1
kind: Configuration
metadata:
  name: greet-config
spec:
  executableId: greet-gpu-serving
  scenarioId: greet-scenario
  parameterBindings:
{params or "    []"}
  inputArtifactBindings:
    - key: greetmodel
      artifactId: greet-model
---
apiVersion: reconciler/v1
kind: Deployment
metadata:
  name: greet
spec:
  configurationId: greet-config
""".replace("  parameterBindings:\n    []\n", "")


LLM_MANIFESTS = """
apiVersion: reconciler/v1
kind: Configuration
metadata:
  name: mistral-latest
spec:
  executableId: vllm-open-llm
  scenarioId: foundation-models
  parameterBindings:
    - key: modelName
      value: mistralai--mistral-7b-instruct
---
apiVersion: reconciler/v1
kind: Configuration
metadata:
  name: mistral-pinned
spec:
  executableId: vllm-open-llm
  scenarioId: foundation-models
  parameterBindings:
    - key: modelName
      value: mistralai--mistral-7b-instruct
    - key: modelVersion
      value: "0.2"
---
apiVersion: reconciler/v1
kind: Deployment
metadata:
  name: mistral
spec:
  configurationId: mistral-latest
---
apiVersion: reconciler/v1
kind: Deployment
metadata:
  name: mistral-pinned
spec:
  configurationId: mistral-pinned
  targetStatus: STOPPED
"""


def test_upstream_custom_predictor_with_env(gitops):
    root = gitops(
        {
            "templates/t.yaml": (FIXTURES / "aicore/text-clf-serving.yaml").read_text(),
            "manifests/m.yaml": text_clf_manifests(),
        }
    )
    data = rendered(root, "text-clf")
    assert data["executableId"] == "text-clf-infer-tutorial"
    assert data["scenarioId"] == "text-clf-tutorial"
    spec = data["spec"]
    assert spec["image"] == "docker.io/sapdevs/text-clf-serve:0.0.1"
    assert spec["port"] == 9001
    assert spec["env"] == {"STORAGE_URI": "file:///srv/models/text-clf/1"}
    assert spec["model"]["hostPath"] == "/srv/models/text-clf/1"
    assert (spec["replicas"], spec["maxReplicas"]) == (1, 5)
    assert (spec["resourcePlan"], spec["cpus"], spec["gpus"]) == ("starter", 1, 0)
    assert spec["memory"] == 3 * 1024**3
    # No readiness probe in the template: ready when the port accepts connections (Knative's way).
    assert spec["readinessPath"] is None
    assert spec["annotations"]["autoscaling.knative.dev/target"] == "1"


def test_upstream_gpu_template_with_replicas_and_command(gitops):
    root = gitops(
        {
            "templates/t.yaml": (FIXTURES / "aicore/greet-gpu-serving.yaml").read_text(),
            "manifests/m.yaml": greet_manifests(),
        }
    )
    spec = rendered(root, "greet")["spec"]
    assert (spec["resourcePlan"], spec["gpus"], spec["cpus"]) == ("infer.s", 1, 3)
    assert spec["memory"] == 10 * 1024**3
    assert (spec["replicas"], spec["maxReplicas"]) == (1, 2)
    assert spec["command"] == ["/bin/sh", "-c"]
    assert spec["args"][0].startswith('set -e && echo "Starting" && gunicorn')
    assert spec["env"]["greetingmessage"] == "Hello from a GPU"
    assert spec["labels"] == {"ai.sap.com/resourcePlan": "infer.s"}


def test_upstream_generative_template(gitops):
    root = gitops(
        {
            "templates/t.yaml": (FIXTURES / "aicore/foundation-llm-serving.yaml").read_text(),
            "manifests/m.yaml": LLM_MANIFESTS,
        }
    )
    latest = rendered(root, "mistral")
    assert latest["scenarioId"] == "foundation-models"
    spec = latest["spec"]
    assert spec["env"]["MODEL_VERSION"] == "latest"
    # A hyphenated Argo-style parameter name works as a placeholder.
    assert spec["args"] == [
        "--model",
        "/models/mistralai--mistral-7b-instruct/latest",
        "--served-model-name",
        "mistralai--mistral-7b-instruct",
        "--max-model-len",
        "4096",
        "--port",
        "8000",
    ]
    assert spec["port"] == 8000
    assert spec["readinessPath"] == "/v1/models"
    assert (spec["resourcePlan"], spec["gpus"]) == ("infer.l", 1)
    assert spec["model"] is None
    # A secret-looking variable is never printed.
    assert spec["env"]["HF_TOKEN"] == "***" and spec["secretEnv"] == ["HF_TOKEN"]
    pinned = rendered(root, "mistral-pinned")
    assert pinned["spec"]["env"]["MODEL_VERSION"] == "0.2"
    assert pinned["targetStatus"] == "STOPPED"
    assert "not-a-real-token" not in cli("render", "mistral", "--root", root).out


def kserve_with(spec_text: str) -> str:
    template = (FIXTURES / "aicore/text-clf-serving.yaml").read_text()
    head = template[: template.index("    spec: |")]
    return head + "    spec: |\n" + "".join(f"      {line}\n" for line in spec_text.splitlines())


@pytest.mark.parametrize(
    ("spec_text", "message"),
    [
        (
            "predictor:\n  containers:\n  - name: x\n    imgae: foo\n",
            "at /predictor/containers/0/imgae: unknown field 'imgae' (did you mean 'image'?)",
        ),
        (
            "predictor:\n  sklearn:\n    storageUri: s3://x\n",
            "built-in 'sklearn' predictor is not supported",
        ),
        (
            "predictor:\n  containers:\n  - image: x\n    env:\n    - name: A\n      valueFrom: {secretKeyRef: {name: s, key: k}}\n",
            "valueFrom (Kubernetes secrets) is not supported",
        ),
        ("predictor:\n  minReplicas: many\n  containers:\n  - image: x\n", "must be an integer"),
        ("- just\n- a list\n", "must be a mapping with a predictor"),
    ],
)
def test_unsupported_or_mistyped_kserve_specs(gitops, spec_text, message):
    root = gitops(
        {
            "templates/t.yaml": kserve_with(spec_text).replace(
                "inputs:\n    parameters: []\n    artifacts:\n      - name: textmodel\n",
                "inputs: {}\n",
            ),
            "manifests/m.yaml": text_clf_manifests().replace(
                "  inputArtifactBindings:\n    - key: textmodel\n      artifactId: textmodel-1\n",
                "",
            ),
        }
    )
    (line,) = failure(root)
    assert line.startswith("templates/t.yaml:")
    assert "/spec/template/spec: in the rendered spec" in line
    assert message in line
    if "imgae" in message:  # every problem of the rendered spec is named, not just the first
        assert "at /predictor/containers/0: missing required field 'image'" in line


def test_gpu_limit_in_the_kserve_spec_overrides_the_plan(gitops):
    spec_text = (
        "predictor:\n  containers:\n  - image: x\n    resources:\n      limits:\n"
        "        nvidia.com/gpu: 2\n"
    )
    template = kserve_with(spec_text).replace(
        "inputs:\n    parameters: []\n    artifacts:\n      - name: textmodel\n", "inputs: {}\n"
    )
    manifests = text_clf_manifests().replace(
        "  inputArtifactBindings:\n    - key: textmodel\n      artifactId: textmodel-1\n", ""
    )
    root = gitops({"templates/t.yaml": template, "manifests/m.yaml": manifests})
    spec = rendered(root, "text-clf")["spec"]
    assert (spec["gpus"], spec["port"], spec["readinessPath"]) == (2, 8080, None)


def test_unknown_resource_plan(gitops):
    template = (
        (FIXTURES / "aicore/greet-gpu-serving.yaml").read_text().replace("infer.s", "infer.xs")
    )
    root = gitops({"templates/t.yaml": template, "manifests/m.yaml": greet_manifests()})
    (line,) = failure(root)
    assert "/spec/template/metadata/labels: resource plan 'infer.xs' not found" in line
    assert "did you mean 'infer.s'" in line


def test_a_repository_adds_and_overrides_resource_plans(gitops):
    plans = """
apiVersion: reconciler/v1
kind: ResourcePlan
metadata:
  name: infer.s
spec:
  cpus: 2
  memory: 6Gi
  gpus: 1
  gpuType: L4
---
apiVersion: reconciler/v1
kind: ResourcePlan
metadata:
  name: tiny
spec:
  cpus: 0.5
  memory: 512Mi
"""
    root = gitops(
        {
            "templates/t.yaml": (FIXTURES / "aicore/greet-gpu-serving.yaml").read_text(),
            "manifests/m.yaml": greet_manifests(),
            "manifests/plans.yaml": plans,
        }
    )
    spec = rendered(root, "greet")["spec"]
    assert (spec["cpus"], spec["memory"], spec["gpus"]) == (2, 6 * 1024**3, 1)
    state = desired_state(root)
    assert state.repo.plans["tiny"].memory == 512 * 1024**2
    assert state.repo.plans["infer.l"].cpus == 15


# -- the container form ---------------------------------------------------------------------


def test_container_form_with_every_field(gitops):
    template = """
apiVersion: reconciler/v1
kind: ServingTemplate
metadata:
  name: full-serving
spec:
  scenarioId: full
  versionId: "2.1"
  inputs:
    parameters:
      - name: gpus
        default: "1"
    artifacts:
      - name: weights
  container:
    image: registry.local/full:2
    command: ["python", "-m", "server"]
    args: ["--workers", "2"]
    env:
      - name: API_KEY
        value: s3cr3t
      - name: PLAIN
        value: visible
      - name: CUSTOM
        value: hidden-too
        secret: true
    port: 9000
    readinessPath: /healthz
    startupTimeout: 60
    resourcePlan: infer.m
    gpus: "{{ inputs.parameters.gpus }}"
    replicas: 2
    maxReplicas: 4
    modelArtifact: weights
    workingDir: /app
    restartPolicy: on-failure
    shmSize: 2g
    ipc: host
    volumes:
      - source: hf-cache
        target: /root/.cache/huggingface
      - source: ./data/extra
        target: /extra
        readOnly: true
      - source: /var/lib/models
        target: /models
"""
    manifests = """
apiVersion: reconciler/v1
kind: Artifact
metadata: {name: weights-1}
spec: {kind: model, url: "file:weights/1", scenarioId: full}
---
apiVersion: reconciler/v1
kind: Configuration
metadata: {name: full-config}
spec:
  executableId: full-serving
  scenarioId: full
  inputArtifactBindings: [{key: weights, artifactId: weights-1}]
---
apiVersion: reconciler/v1
kind: Deployment
metadata: {name: full}
spec: {configurationId: full-config}
"""
    root = gitops({"templates/t.yaml": template, "manifests/m.yaml": manifests})
    spec = rendered(root, "full")["spec"]
    real_root = root.resolve()
    assert spec["command"] == ["python", "-m", "server"] and spec["args"] == ["--workers", "2"]
    assert spec["env"] == {
        "API_KEY": "***",
        "PLAIN": "visible",
        "CUSTOM": "***",
        "STORAGE_URI": "file:weights/1",
    }
    assert spec["secretEnv"] == ["API_KEY", "CUSTOM"]
    assert (spec["port"], spec["readinessPath"], spec["startupTimeout"]) == (9000, "/healthz", 60)
    assert (spec["resourcePlan"], spec["cpus"], spec["gpus"]) == ("infer.m", 7, 1)
    assert (spec["replicas"], spec["maxReplicas"]) == (2, 4)
    assert spec["model"]["hostPath"] == str(real_root / "weights/1")
    assert spec["volumes"] == [
        {"source": "hf-cache", "target": "/root/.cache/huggingface", "readOnly": False},
        {"source": str(real_root / "data/extra"), "target": "/extra", "readOnly": True},
        {"source": "/var/lib/models", "target": "/models", "readOnly": False},
    ]
    assert (spec["workingDir"], spec["restartPolicy"], spec["shmSize"], spec["ipc"]) == (
        "/app",
        "on-failure",
        "2g",
        "host",
    )
    out = cli("render", "full", "--root", root).out
    assert "s3cr3t" not in out and "hidden-too" not in out


def test_container_form_model_artifact_must_be_declared(gitops):
    template = ECHO_TEMPLATE.replace("modelArtifact: model", "modelArtifact: modle")
    root = gitops({"templates/echo.yaml": template, "manifests/echo.yaml": ECHO_MANIFESTS})
    (line,) = failure(root)
    assert "/spec/container/modelArtifact: 'modle' is not a declared artifact input" in line


# -- ids and the render command -------------------------------------------------------------


def test_deployment_ids_are_stable_and_upstream_looking(echo_repo: Path, tmp_path: Path):
    first = rendered(echo_repo)["id"]
    assert re.fullmatch(r"d[0-9a-f]{15}", first)
    assert rendered(echo_repo)["id"] == first
    copy = tmp_path / "elsewhere"
    shutil.copytree(echo_repo, copy)
    assert rendered(copy)["id"] != first  # another root is another instance
    settings = "apiVersion: reconciler/v1\nkind: Settings\nmetadata: {name: host}\nspec: {instance: prod}\n"
    for root in (echo_repo, copy):
        (root / "manifests/settings.yaml").write_text(settings)
    assert rendered(echo_repo)["id"] == rendered(copy)["id"] != first


def test_render_by_id_and_ambiguous_names(gitops):
    other_rg = ECHO_MANIFESTS.replace("metadata:\n", "metadata:\n  resourceGroup: team-b\n")
    root = gitops(
        {
            "templates/echo.yaml": ECHO_TEMPLATE,
            "manifests/echo.yaml": ECHO_MANIFESTS,
            "manifests/team-b.yaml": other_rg,
        }
    )
    ambiguous = cli("render", "echo", "--root", root)
    assert ambiguous.code == 1
    assert "exists in several resource groups (default, team-b)" in ambiguous.err
    team_b = rendered_rg = cli("render", "echo", "-g", "team-b", "--root", root, "--json")
    assert team_b.code == 0
    dep_id = json.loads(rendered_rg.out)["id"]
    assert (
        json.loads(cli("render", dep_id, "--root", root, "--json").out)["resourceGroup"] == "team-b"
    )
    unknown = cli("render", "nope", "--root", root)
    assert unknown.code == 1 and "no deployment named or with id 'nope'" in unknown.err


def test_render_refuses_while_any_manifest_is_invalid(echo_repo: Path):
    (echo_repo / "manifests/broken.yaml").write_text("kind: [\n")
    result = cli("render", "echo", "--root", echo_repo)
    assert result.code == 1 and "manifests/broken.yaml" in result.err


def test_desired_state_raises_with_every_problem(gitops):
    root = gitops({"manifests/a.yaml": "kind: nope\n", "manifests/b.yaml": ""})
    with pytest.raises(ManifestError) as info:
        desired_state(root)
    assert [p.file for p in info.value.problems] == ["manifests/a.yaml", "manifests/b.yaml"]
