"""The churn example with its model in an object store (issue 18), on the real engine: a real
S3-compatible server (s3s-fs on loopback), the secret added with the CLI or SAP's SDK, an
`ai://` artifact; predictions as from `file:`, two deployments share one cached copy, a new
upload under the same path rolls the deployment, a secret that does not exist ends DEAD with
one line, `watch` serves the model once a store that was down is back, and no credential is
written anywhere (plan, status, output, files, git history, serve's log)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PROJECT, cli_process, git
from tests.engine_support import Host, Server, make_host, request, wait_for
from tests.s3_support import (
    ACCESS_KEY,
    CHURN_RECORD,
    SECRET_KEY,
    FaultyLink,
    S3Server,
    churn_from_store,
    deployment,
    store_configuration,
)
from tests.test_ai_api import add_client, sdk
from tests.test_watch import Watch

pytestmark = [pytest.mark.engine, pytest.mark.timeout(600, func_only=True)]

S3_MANIFESTS = (
    store_configuration("s3", "ai://models/churn/1")
    + store_configuration("nowhere", "ai://nobody/churn/1")
    + deployment("churn-s3", "churn-s3")
    + deployment("churn-s3-twin", "churn-s3")
)
NOWHERE = deployment("churn-nowhere", "churn-nowhere")


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
        env={**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
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
        url, data=json.dumps(CHURN_RECORD).encode(), headers={"Content-Type": "application/json"}
    )
    assert code == 200, raw
    return json.loads(raw)["probabilities"][0]


def test_a_model_from_s3_serves_like_file_rolls_on_a_new_upload_and_leaks_nothing(churn_s3):
    host, server, bucket, tmp_path = churn_s3
    host.reconcile()
    status = host.status()
    assert status["churn"]["status"] == "RUNNING" and status["churn-s3"]["status"] == "RUNNING"
    assert predict(host, "churn-s3") == pytest.approx(predict(host, "churn"))  # as from file:
    assert predict(host, "churn-s3-twin") == pytest.approx(predict(host, "churn"))
    # One copy for both deployments of the model.
    (entry,) = [p for p in (tmp_path / "cache/reconciler/models").iterdir() if p.name[0] != "."]
    assert status["churn-s3"]["details"]["model"] == {"version": entry.name}
    assert (entry / "model.joblib").read_bytes() == (
        PROJECT / "models/churn/1/model.joblib"
    ).read_bytes()
    assert host.plan()["changes"] == []

    upload(server, bucket, 2)  # a new model under the same path
    changes = host.plan()["changes"]
    assert [c["name"] for c in changes] == ["churn-s3", "churn-s3-twin"], changes
    for change in changes:
        assert change["action"] == "replace", change
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


SDK_MANIFESTS = churn_from_store("sdk", "ai://sdk-models/churn/1")


def test_a_secret_made_with_saps_sdk_serves_the_model_too(churn_s3):
    host, server, bucket, tmp_path = churn_s3
    settings = host.root / "manifests/settings.yaml"
    git(host.root, "init", "-q")
    git(host.root, "add", "-A")
    git(host.root, "commit", "-qm", "the root")
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
    # The secret is nowhere in git: not committed by the API, not in any file of the root.
    git(host.root, "add", "-A")
    git(host.root, "commit", "-qm", "after the SDK's secret")
    history = git(host.root, "log", "--all", "-p", "--format=%H %s")
    log = serve.log.read_text()
    for text in (history, log, host.cli("plan", "--json").out, host.cli("status", "--json").out):
        assert SECRET_KEY not in text and ACCESS_KEY not in text


FLAKY_MANIFESTS = churn_from_store("flaky", "ai://flaky/churn/1")


def test_watch_serves_the_model_once_a_store_that_was_down_is_back(churn_s3):
    """The store is down when `watch` first needs the model: the deployment is DEAD with the
    store's line, and watch reads the store again on a backoff (not only at the next resync),
    so the deployment serves soon after the store is back, with nothing done by hand."""
    host, server, bucket, tmp_path = churn_s3
    link = FaultyLink(server.port)
    link.down_after = 0  # refuses every connection
    watch = None
    try:
        added = cli_process(
            "secrets", "objectstore", "add", "flaky", "--bucket", bucket,
            "--endpoint", link.endpoint, "--root", host.root,
            env={**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                 "AWS_SECRET_ACCESS_KEY": SECRET_KEY},
        )  # fmt: skip
        assert added.code == 0, added.err
        # Only the flaky one: another deployment's Docker events (its health checks) would
        # bring passes of their own, and this test is about watch's own retries.
        (host.root / "manifests/churn.yaml").unlink()
        (host.root / "manifests/s3.yaml").write_text(FLAKY_MANIFESTS)
        watch = Watch(host.root, tmp_path / "watch.log", "--resync", "300")
        waiting = watch.wait_pass(
            lambda p: "churn-flaky" in p.get("waitingForStores", ()), 60, "a store wait"
        )
        assert 0 < waiting["retryInSeconds"] <= 10, waiting
        dead = host.status()["churn-flaky"]
        assert dead["status"] == "DEAD" and "does not answer" in dead["statusMessage"], dead
        link.heal()  # the store is back
        wait_for(
            lambda: host.status()["churn-flaky"]["status"] == "RUNNING", 90, "churn-flaky serving"
        )
        assert len(predict(host, "churn-flaky")) == 2  # it serves the model
        healed = watch.wait_pass(lambda p: p.get("result") == "converged", what="the retry")
        assert healed["trigger"] == ["retry"], watch.text()
        assert SECRET_KEY not in watch.text() and ACCESS_KEY not in watch.text()
    finally:
        if watch is not None:
            watch.terminate()
        link.close()
