"""Issue 13 ("Safe to expose"), attacked over real HTTP: a tenant of `reconciler serve` (a client
of one resource group, with a real OAuth2 token) against a real git-tracked GitOps root and the
real Docker engine. A tenant's input must never reach the host's files (finding 1b) nor the
structure of the container spec (finding 1a)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import git
from tests.engine_support import Host, Server, request, wait_for
from tests.test_ai_api import add_client, token

pytestmark = pytest.mark.engine

# The operator's executable, in AI Core's own YAML-text form: the tenant binds the values.
KSERVE_TINY = """
apiVersion: ai.sap.com/v1alpha1
kind: ServingTemplate
metadata:
  name: tiny-kserve
  annotations:
    scenarios.ai.sap.com/name: "tiny, AI Core form"
  labels:
    scenarios.ai.sap.com/id: "tiny-kserve"
    ai.sap.com/version: "1.0"
spec:
  inputs:
    parameters:
      - name: modelName
        type: string
        default: tiny
      - name: modelUri
        type: string
        default: ""
  template:
    apiVersion: "serving.kserve.io/v1beta1"
    metadata:
      labels: |
        ai.sap.com/resourcePlan: starter
    spec: |
      predictor:
        containers:
        - name: kserve-container
          image: "reconciler-test/busybox:2"
          ports:
            - containerPort: 8080
          readinessProbe:
            httpGet:
              path: /v2/health/ready
          env:
            - name: MODEL_NAME
              value: "{{inputs.parameters.modelName}}"
            - name: STORAGE_URI
              value: "{{inputs.parameters.modelUri}}"
"""

# Indented to the container's keys: on the old code this value gave the container a command, a
# working directory and every GPU of the host.
PAYLOAD = (
    'x"\n    command: [sh, -c, "sleep 600"]\n'
    "    resources: {limits: {nvidia.com/gpu: -1}}\n"
    '    workingDir: "/tmp'
)


@pytest.fixture
def tenant(host: Host, tmp_path: Path):
    """A git-tracked root with the operator's executable, a tenant of resource group default
    (the credentials file outside the root, as by default) and `reconciler serve` with auth."""
    (host.root / "templates/tiny-kserve.yaml").write_text(KSERVE_TINY)
    git(host.root, "init", "-q", "-b", "main")
    git(host.root, "add", "-A")
    git(host.root, "commit", "-q", "-m", "the operator's manifests")
    credentials = tmp_path / "secrets" / "clients.json"
    client = add_client(host.root, credentials, "tenant-a", "default")
    server = Server(host.root, "--credentials", str(credentials))
    headers = {
        "Authorization": f"Bearer {token(server, client)}",
        "Content-Type": "application/json",
    }
    yield host, server, headers, credentials
    server.stop()


def post(server: Server, path: str, headers: dict[str, str], body: dict[str, Any]) -> Any:
    code, _, raw = request(
        f"{server.base}/v2/lm/{path}", data=json.dumps(body).encode(), headers=headers
    )
    return code, json.loads(raw)


def test_a_tenant_cannot_point_an_artifact_at_the_hosts_files(tenant):
    host, server, headers, credentials = tenant
    root = host.root
    (root / "models").mkdir()
    (root / "models/escape").symlink_to(credentials.parent)  # a link inside, leading out
    head = git(root, "rev-parse", "HEAD")
    for url in (
        f"file://{credentials.parent}",  # the server's own signing key lives there
        f"file://{credentials}",
        f"file://localhost{credentials.parent}",
        "file:../..",
        f"file://{root}/models/../..",
        f"file://{root}/models/escape",
        f"file://{root}/models/%2e%2e/%2e%2e/secrets",
        f"file://{root}/state",  # inside the root, but not a model folder
        "file:///",
    ):
        code, answer = post(
            server,
            "artifacts",
            headers,
            {"name": "loot", "kind": "model", "url": url, "scenarioId": "tiny-kserve"},
        )
        assert code == 400, (url, answer)
        assert answer["error"]["code"] == "400" and answer["error"]["message"], answer
        assert "\n" not in answer["error"]["message"]
    # The same path through a parameter the template writes into STORAGE_URI: refused too.
    code, answer = post(
        server,
        "configurations",
        headers,
        {
            "name": "loot",
            "executableId": "tiny-kserve",
            "scenarioId": "tiny-kserve",
            "parameterBindings": [{"key": "modelUri", "value": f"file://{credentials.parent}"}],
        },
    )
    assert code == 400, answer
    assert "outside the folders artifacts of the AI API may use" in answer["error"]["message"]
    # Nothing was written, committed or deployed.
    assert git(root, "rev-parse", "HEAD") == head
    assert not (root / "manifests/api").exists()
    assert host.containers() == []
    # What the operator allows still works: the root's models/ folder.
    (root / "models/tiny").mkdir()
    code, answer = post(
        server,
        "artifacts",
        headers,
        {
            "name": "tiny",
            "kind": "model",
            "url": f"file://{root}/models/tiny",
            "scenarioId": "tiny-kserve",
        },
    )
    assert code == 201, answer


def test_a_tenants_parameter_value_is_one_scalar_of_the_running_container(tenant):
    host, server, headers, _ = tenant
    code, answer = post(
        server,
        "configurations",
        headers,
        {
            "name": "crafted",
            "executableId": "tiny-kserve",
            "scenarioId": "tiny-kserve",
            "parameterBindings": [{"key": "modelName", "value": PAYLOAD}],
        },
    )
    assert code == 201, answer
    code, answer = post(server, "deployments", headers, {"configurationId": answer["id"]})
    assert code in (200, 201, 202), answer
    deployment_id = answer["id"]

    rendered = host.cli("render", deployment_id, "--json")
    assert rendered.code == 0, rendered.err
    spec = json.loads(rendered.out)["spec"]
    assert (spec["command"], spec["args"], spec["workingDir"], spec["gpus"]) == (
        None,
        None,
        None,
        0,
    )
    assert spec["env"]["MODEL_NAME"] == PAYLOAD

    wait_for(
        lambda: host.status()[answer_name(host, deployment_id)]["status"] in ("RUNNING", "DEAD"),
        timeout=60,
        what="the deployment to start",
    )
    status = host.status()[answer_name(host, deployment_id)]
    assert status["status"] == "RUNNING", status
    (container,) = host.containers()
    inspected = host.client.inspect_container(container["Id"])
    config = inspected["Config"]
    assert config["Cmd"] == ["/bin/serve"] and not config["Entrypoint"]
    assert config["WorkingDir"] == ""
    assert f"MODEL_NAME={PAYLOAD}" in config["Env"]
    assert not inspected["HostConfig"].get("DeviceRequests")
    # Rendering is deterministic (the markers are random, the spec is not): nothing to change.
    assert host.plan()["changes"] == []


def answer_name(host: Host, deployment_id: str) -> str:
    return next(d["name"] for d in host.status().values() if d["id"] == deployment_id)
