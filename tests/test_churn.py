"""The churn example end to end: the project's own manifests, the real runtime image, the
deployment URL from `reconciler status --json`, and the requests of AI Core's documentation."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PROJECT
from tests.engine_support import request, served_host, wait_for

# The image build in this module's fixtures (minutes from nothing) has its own limit, 1800 s:
# the per-test limit covers the test itself.
pytestmark = [pytest.mark.engine, pytest.mark.timeout(300, func_only=True)]

# Seed 000: the flat record posted to $deploymentUrl/v1/models/churn:predict.
SEED_RECORD = {
    "region": 3, "tenure": 37, "age": 53, "address": 13, "income": 48, "employ": 10,
    "gender": 0, "equip": 0,
}  # fmt: skip
# Seed 002: an Open Inference Protocol request with MLServer-style parameters.
SEED_V2 = {
    "id": "seed-002",
    "parameters": {"content_type": "pd", "headers": {}},
    "inputs": [
        {"name": k, "shape": [1], "datatype": "INT64", "parameters": {"headers": {}}, "data": [v]}
        for k, v in SEED_RECORD.items()
    ],
}


@pytest.fixture(scope="module")
def runtime_image() -> None:
    subprocess.run(
        [PROJECT / "scripts/build-images"], check=True, capture_output=True, timeout=1800
    )


@pytest.fixture
def churn(tmp_path: Path, docker_client, runtime_image) -> Any:
    """A copy of this repository's churn example as its own instance, served by the gateway."""

    def populate(root: Path) -> None:
        shutil.copytree(PROJECT / "templates", root / "templates", dirs_exist_ok=True)
        shutil.copy(PROJECT / "manifests/churn.yaml", root / "manifests/churn.yaml")
        (root / "models").symlink_to(PROJECT / "models")

    host, server = served_host(tmp_path, docker_client, populate)
    yield host
    server.stop()
    host.cleanup()


def post(url: str, body: Any) -> tuple[int, Any]:
    code, _, raw = request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    return code, json.loads(raw)


def test_seed_requests_get_predictions_through_the_deployment_url(churn):
    churn.reconcile()
    status = churn.status()["churn"]
    assert status["status"] == "RUNNING"
    url = status["deploymentUrl"]
    assert url.endswith(f"/v2/inference/deployments/{status['id']}")

    code, v1 = post(url + "/v1/models/churn:predict", SEED_RECORD)
    assert code == 200, v1
    assert v1["predictions"] in ([0], [1])
    ((p0, p1),) = v1["probabilities"]
    assert p0 + p1 == pytest.approx(1.0)

    code, v2 = post(url + "/v2/models/churn/infer", SEED_V2)
    assert code == 200, v2
    assert (v2["id"], v2["model_name"], v2["model_version"]) == ("seed-002", "churn", "1")
    outputs = {o["name"]: o["data"] for o in v2["outputs"]}
    assert outputs["predict"] == v1["predictions"]
    assert outputs["predict_proba"] == pytest.approx([p0, p1])

    code, error = post(url + "/v1/models/churn:predict", {"region": "three"})
    assert code == 400 and "error" in error


def test_switching_to_model_version_2_fails_no_request(churn):
    churn.reconcile()
    url = churn.status()["churn"]["deploymentUrl"] + "/v2/models/churn/infer"
    answers: list[tuple[int, str | None]] = []
    done = threading.Event()

    def client() -> None:
        while not done.is_set():
            code, body = post(url, SEED_V2)
            answers.append((code, body.get("model_version")))

    thread = threading.Thread(target=client)
    thread.start()
    try:
        wait_for(lambda: len(answers) > 5, what="predictions of version 1")
        manifests = churn.root / "manifests/churn.yaml"
        text = manifests.read_text()
        assert "configurationId: churn-v1" in text
        manifests.write_text(text.replace("configurationId: churn-v1", "configurationId: churn-v2"))
        plan = churn.plan()["changes"]
        assert [(c["action"], c["name"]) for c in plan] == [("replace", "churn")]
        assert "configuration churn-v1 → churn-v2" in plan[0]["cause"]
        churn.reconcile()
        n = len(answers)
        wait_for(lambda: len(answers) > n + 10, what="predictions after the switch")
    finally:
        done.set()
        thread.join()
    assert {code for code, _ in answers} == {200}, [a for a in answers if a[0] != 200][:3]
    versions = [v for _, v in answers]
    switch = versions.index("2")
    assert set(versions[:switch]) == {"1"} and set(versions[switch:]) == {"2"}
    status = churn.status()["churn"]
    assert status["latestRunningConfigurationId"] == "churn-v2"
    assert status["lastOperation"] == "UPDATE"
