"""The churn example with its model in an object store (issue 18), on the real engine: a real
S3-compatible server (s3s-fs on loopback), the secret added with the CLI, an `ai://` artifact;
predictions as from `file:`, a new upload under the same path rolls the deployment, a secret
that does not exist ends DEAD with one line, and no credential is written anywhere."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PROJECT, cli_process
from tests.engine_support import Host, Server, make_host, request
from tests.s3_support import ACCESS_KEY, SECRET_KEY, S3Server
from tests.test_ai_api import add_client, sdk

pytestmark = [pytest.mark.engine, pytest.mark.timeout(600, func_only=True)]

RECORD = {
    "region": 3, "tenure": 37, "age": 53, "address": 13, "income": 48, "employ": 10,
    "gender": 0, "equip": 0,
}  # fmt: skip
S3_MANIFESTS = """
apiVersion: reconciler/v1
kind: Artifact
metadata: {name: churn-model-s3}
spec: {kind: model, url: "ai://models/churn/1", scenarioId: churn}
---
apiVersion: reconciler/v1
kind: Artifact
metadata: {name: churn-model-nowhere}
spec: {kind: model, url: "ai://nobody/churn/1", scenarioId: churn}
---
apiVersion: reconciler/v1
kind: Configuration
metadata: {name: churn-s3}
spec:
  executableId: churn-serving
  scenarioId: churn
  versionId: "1"
  inputArtifactBindings: [{key: churnmodel, artifactId: churn-model-s3}]
---
apiVersion: reconciler/v1
kind: Configuration
metadata: {name: churn-nowhere}
spec:
  executableId: churn-serving
  scenarioId: churn
  versionId: "1"
  inputArtifactBindings: [{key: churnmodel, artifactId: churn-model-nowhere}]
---
apiVersion: reconciler/v1
kind: Deployment
metadata: {name: churn-s3}
spec: {configurationId: churn-s3}
"""
NOWHERE = """
---
apiVersion: reconciler/v1
kind: Deployment
metadata: {name: churn-nowhere}
spec: {configurationId: churn-nowhere}
"""


@pytest.fixture
def churn_s3(tmp_path: Path, docker_client, s3_server: S3Server, monkeypatch) -> Any:
    subprocess.run(
        [PROJECT / "scripts/build-images"], check=True, capture_output=True, timeout=1800
    )
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    host = make_host(tmp_path, docker_client)
    shutil.copytree(PROJECT / "templates", host.root / "templates", dirs_exist_ok=True)
    shutil.copy(PROJECT / "manifests/churn.yaml", host.root / "manifests/churn.yaml")
    (host.root / "models").symlink_to(PROJECT / "models")
    bucket = s3_server.bucket()
    upload(s3_server, bucket, 1)
    added = cli_process(
        "secrets", "objectstore", "add", "models", "--bucket", bucket,
        "--endpoint", s3_server.endpoint, "--root", host.root,
        env={**__import__("os").environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
             "AWS_SECRET_ACCESS_KEY": SECRET_KEY},
    )  # fmt: skip
    assert added.code == 0, added.err
    (host.root / "manifests/s3.yaml").write_text(S3_MANIFESTS)
    yield host, s3_server, bucket, tmp_path
    host.cleanup()


def upload(server: S3Server, bucket: str, version: int) -> None:
    """models/churn/<version>/ of this project to churn/1/ in the bucket."""
    s3 = server.client()
    for f in sorted((PROJECT / "models/churn" / str(version)).iterdir()):
        s3.put_object(Bucket=bucket, Key=f"churn/1/{f.name}", Body=f.read_bytes())


def predict(host: Host, name: str) -> list[float]:
    url = host.status()[name]["deploymentUrl"] + "/v1/models/churn:predict"
    code, _, raw = request(
        url, data=json.dumps(RECORD).encode(), headers={"Content-Type": "application/json"}
    )
    assert code == 200, raw
    return json.loads(raw)["probabilities"][0]


def test_a_model_from_s3_serves_like_file_rolls_on_a_new_upload_and_leaks_nothing(churn_s3):
    host, server, bucket, tmp_path = churn_s3
    host.reconcile()
    status = host.status()
    assert status["churn"]["status"] == "RUNNING" and status["churn-s3"]["status"] == "RUNNING"
    assert predict(host, "churn-s3") == pytest.approx(predict(host, "churn"))  # as from file:
    (entry,) = [p for p in (tmp_path / "cache/reconciler/models").iterdir() if p.name[0] != "."]
    assert (entry / "model.joblib").read_bytes() == (
        PROJECT / "models/churn/1/model.joblib"
    ).read_bytes()
    assert host.plan()["changes"] == []

    upload(server, bucket, 2)  # a new model under the same path
    (change,) = host.plan()["changes"]
    assert change["action"] == "replace" and change["name"] == "churn-s3", change
    assert change["cause"].startswith("artifact changed: ai://models/churn/1 (version "), change
    host.reconcile()
    v1 = predict(host, "churn")
    assert predict(host, "churn-s3") != pytest.approx(v1)  # version 2's model serves now

    # A secret that does not exist: that deployment is DEAD with one line; the others serve.
    (host.root / "manifests/s3.yaml").write_text(S3_MANIFESTS + NOWHERE)
    result = host.reconcile(ok=False)
    assert result.code != 0
    nowhere = host.status()["churn-nowhere"]
    assert nowhere["status"] == "DEAD", nowhere
    assert "no object-store secret nobody in resource group default" in nowhere["statusMessage"]
    assert host.status()["churn-s3"]["status"] == "RUNNING"

    # No credential in plan, status, the state folder or anything under the root.
    seen = [
        host.cli("plan", "--json").out,
        host.cli("status", "--json").out,
        result.out + result.err,
        *(p.read_text(errors="replace") for p in host.root.rglob("*") if p.is_file()
          and "models" not in p.parts),
    ]  # fmt: skip
    for text in seen:
        assert SECRET_KEY not in text and ACCESS_KEY not in text


SDK_MANIFESTS = """
apiVersion: reconciler/v1
kind: Artifact
metadata: {name: churn-model-sdk}
spec: {kind: model, url: "ai://sdk-models/churn/1", scenarioId: churn}
---
apiVersion: reconciler/v1
kind: Configuration
metadata: {name: churn-sdk}
spec:
  executableId: churn-serving
  scenarioId: churn
  versionId: "1"
  inputArtifactBindings: [{key: churnmodel, artifactId: churn-model-sdk}]
---
apiVersion: reconciler/v1
kind: Deployment
metadata: {name: churn-sdk}
spec: {configurationId: churn-sdk}
"""


def test_a_secret_made_with_saps_sdk_serves_the_model_too(churn_s3):
    host, server, bucket, tmp_path = churn_s3
    settings = host.root / "manifests/settings.yaml"
    settings.write_text(settings.read_text() + f"  objectStoreEndpoints: [{server.endpoint}]\n")
    credentials = tmp_path / "clients.json"
    team = add_client(host.root, credentials, "team-a", "default")
    serve = Server(host.root, "--credentials", str(credentials))
    try:
        client = sdk(serve, team)
        client.object_store_secrets.create(
            name="sdk-models", type="S3", bucket=bucket, endpoint=server.endpoint,
            data={"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY},
        )  # fmt: skip
    finally:
        serve.stop()
    (host.root / "manifests/sdk.yaml").write_text(SDK_MANIFESTS)
    host.reconcile()
    assert host.status()["churn-sdk"]["status"] == "RUNNING"
    assert predict(host, "churn-sdk") == pytest.approx(predict(host, "churn"))
