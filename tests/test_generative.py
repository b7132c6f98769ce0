"""Generative models: the catalog (kind Model), `latest`, pinned versions, retirement; and the
CPU embeddings runtime served end to end through the gateway."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PROJECT, cli, git
from tests.engine_support import (
    configuration,
    deployment,
    docs,
    request,
    serve_root,
    served_host,
    wait_for,
)

TEMPLATE = (PROJECT / "templates/embeddings-serving.yaml").read_text()


def catalog(latest: str = "1.0", retire_10: str | None = None, retire_11: str | None = None) -> str:
    def version(name: str, normalize: str, retire: str | None) -> str:
        lines = [
            f'    - name: "{name}"',
            f"      isLatest: {'true' if name == latest else 'false'}",
            "      contextLength: 256",
            "      capabilities: [embeddings]",
            '      suggestedReplacements: ["1.1"]' if name == "1.0" else "",
            f'      retirementDate: "{retire}"' if retire else "",
            f'      parameters: {{normalize: "{normalize}"}}',
        ]
        return "\n".join(line for line in lines if line)

    return f"""
apiVersion: reconciler/v1
kind: Model
metadata:
  name: all-minilm-l6-v2
spec:
  executableId: embeddings-serving
  displayName: all-MiniLM-L6-v2
  provider: sentence-transformers
  versions:
{version("1.0", "false", retire_10)}
{version("1.1", "true", retire_11)}
"""


def config(name: str, model: str = "all-minilm-l6-v2", version: str | None = None) -> str:
    pinned = {"modelVersion": version} if version else {}
    return configuration(name, "embeddings-serving", "foundation-models", modelName=model, **pinned)


def day(offset: int) -> str:
    return (datetime.now(UTC) + timedelta(days=offset)).strftime("%Y-%m-%d")


@pytest.fixture
def repo(gitops):
    def make(manifests: str, models: str | None = None) -> Path:
        return gitops(
            {
                "templates/embeddings.yaml": TEMPLATE,
                "manifests/models.yaml": models if models is not None else catalog(),
                "manifests/app.yaml": manifests,
            }
        )

    return make


# -- validation and rendering (no Docker) --------------------------------------------------


def test_latest_resolves_to_the_catalogs_latest_and_pinned_stays(repo):
    root = repo(
        docs(config("follow"), config("pinned", version="1.0")),
        catalog(latest="1.1"),
    )
    docs_ = root / "manifests/app.yaml"
    docs_.write_text(
        docs_.read_text()
        + docs("", deployment("a-follow", "follow"), deployment("b-pin", "pinned"))
    )
    follow = json.loads(cli("render", "a-follow", "--json", "--root", root).out)
    pinned = json.loads(cli("render", "b-pin", "--json", "--root", root).out)
    assert follow["model"] == "all-minilm-l6-v2:1.1"
    assert follow["spec"]["env"]["MODEL_VERSION"] == "1.1"
    assert follow["spec"]["env"]["NORMALIZE"] == "true"  # from the catalog version
    assert pinned["model"] == "all-minilm-l6-v2:1.0"
    assert pinned["spec"]["env"]["NORMALIZE"] == "false"


def test_a_configurations_own_binding_wins_over_the_catalog(repo):
    text = configuration(
        "own-config",
        "embeddings-serving",
        "foundation-models",
        modelName="all-minilm-l6-v2",
        normalize="false",
    )
    root = repo(docs(text, deployment("own-deploy", "own-config")), catalog(latest="1.1"))
    spec = json.loads(cli("render", "own-deploy", "--json", "--root", root).out)["spec"]
    assert spec["env"]["NORMALIZE"] == "false" and spec["env"]["MODEL_VERSION"] == "1.1"


def test_unknown_model_or_version_names_the_valid_choices(repo):
    root = repo(docs(config("bad-model", model="all-minilm"), config("bad-version", version="2.0")))
    result = cli("validate", "--root", root)
    assert result.code == 1
    assert (
        "manifests/app.yaml:10: /spec/parameterBindings/0/value: modelName 'all-minilm' is not in "
        "the model catalog (did you mean 'all-minilm-l6-v2'?): executable embeddings-serving "
        "serves all-minilm-l6-v2"
    ) in result.err
    assert "model all-minilm-l6-v2 has no version '2.0'" in result.err
    assert "(versions: 1.0, 1.1, or latest)" in result.err


def test_catalog_rules(repo):
    broken = (
        catalog(latest="none")
        .replace("executableId: embeddings-serving", "executableId: embeddings-servin")
        .replace('- name: "1.1"', '- name: "1.1"\n      retirementDate: "2026-02-30"')
        .replace('{normalize: "false"}', '{normalise: "false"}')
    )
    result = cli("validate", "--root", repo(config("fine"), broken))
    assert result.code == 1
    err = result.err
    assert "/spec/versions: model all-minilm-l6-v2 has 0 versions marked isLatest" in err
    assert "executable 'embeddings-servin' not found (did you mean 'embeddings-serving'?)" in err
    assert "'2026-02-30' is not a date (YYYY-MM-DD)" in err
    assert "has no parameter 'normalise' (did you mean 'normalize'?)" not in err  # no template
    two_latest = catalog(latest="1.0").replace("isLatest: false", "isLatest: true")
    result = cli("validate", "--root", repo(config("fine"), two_latest))
    assert "has 2 versions marked isLatest: mark exactly one" in result.err
    # A version's serving parameters must be inputs of its (existing) executable.
    typo = catalog(latest="1.0").replace('{normalize: "false"}', '{normalise: "false"}')
    result = cli("validate", "--root", repo(config("fine"), typo))
    assert result.code == 1
    assert (
        "/spec/versions/0/parameters/normalise: executable embeddings-serving has no parameter "
        "'normalise' (did you mean 'normalize'?)"
    ) in result.err


def test_the_vllm_gpu_template_renders_with_gpus_ipc_cache_and_readiness():
    result = cli("render", "qwen-chat", "--json", "--root", PROJECT)
    assert result.code == 0, result.err
    rendered = json.loads(result.out)
    spec = rendered["spec"]
    assert rendered["model"] == "qwen2.5-7b-instruct:2.5"
    assert spec["image"] == "vllm/vllm-openai:v0.6.3"
    assert spec["args"][:4] == [
        "--model",
        "Qwen/Qwen2.5-7B-Instruct",
        "--served-model-name",
        "qwen2.5-7b-instruct",
    ]
    assert spec["gpus"] == 1 and spec["resourcePlan"] == "infer.l"
    assert spec["ipc"] == "host"
    assert {"source": "hf-cache", "target": "/root/.cache/huggingface", "readOnly": False} in spec[
        "volumes"
    ]
    assert spec["readinessPath"] == "/v1/models" and spec["port"] == 8000
    assert rendered["targetStatus"] == "STOPPED"


# -- served: on the engine (marked), and the catalog through the AI API (no engine) -------


@pytest.fixture(scope="module")
def embeddings_image() -> None:
    subprocess.run(
        [PROJECT / "scripts/build-images"], check=True, capture_output=True, timeout=1800
    )


@pytest.fixture
def served(tmp_path: Path, docker_client, embeddings_image):
    """A root with the embeddings template and a catalog, served by the gateway."""

    def populate(root: Path) -> None:
        shutil.copy(PROJECT / "templates/embeddings-serving.yaml", root / "templates")

    host, server = served_host(tmp_path, docker_client, populate)
    yield host, server
    server.stop()
    host.cleanup()


@pytest.fixture
def served_catalog(tmp_path: Path):
    """The same root and server, with no engine (and no image): for what runs no container.
    Yields the root and the server."""

    def populate(root: Path) -> None:
        shutil.copy(PROJECT / "templates/embeddings-serving.yaml", root / "templates")

    root, _, server = serve_root(tmp_path, populate)
    yield root, server
    server.stop()


def embed(url: str, text: str = "a deployment URL that stays") -> tuple[int, str | None, Any]:
    code, headers, raw = request(
        url + "/v1/embeddings",
        data=json.dumps({"model": "all-minilm-l6-v2", "input": text}).encode(),
        headers={"Content-Type": "application/json"},
    )
    return code, headers.get("X-Model-Version"), json.loads(raw)


@pytest.mark.engine
@pytest.mark.timeout(300, func_only=True)  # (`served` may build an image: minutes)
def test_latest_moves_with_a_commit_and_the_deployment_follows_with_no_failed_request(served):
    host, _ = served
    host.write(catalog(latest="1.0"), "manifests/models.yaml")
    host.write(
        docs(
            config("follow"),
            config("pinned", version="1.0"),
            deployment("follow", "follow"),
            deployment("pinned", "pinned"),
        )
    )
    git(host.root, "init", "-q", "-b", "main")
    git(host.root, "add", "-A")
    git(host.root, "commit", "-q", "-m", "catalog with 1.0 as latest")
    host.reconcile()
    status = host.status()
    url, pinned_url = status["follow"]["deploymentUrl"], status["pinned"]["deploymentUrl"]
    code, version, body = embed(url)
    assert code == 200 and version == "1.0", body
    vector = body["data"][0]["embedding"]
    assert len(vector) == 384 and body["model"] == "all-minilm-l6-v2"
    pinned_container = host.container_of("pinned")["Id"]

    answers: list[tuple[int, str | None]] = []
    done = threading.Event()

    def client() -> None:
        while not done.is_set():
            code, version, _ = embed(url)
            answers.append((code, version))

    thread = threading.Thread(target=client)
    thread.start()
    try:
        wait_for(lambda: len(answers) > 3, what="embeddings of version 1.0")
        host.write(catalog(latest="1.1"), "manifests/models.yaml")
        git(host.root, "commit", "-q", "-am", "latest is 1.1")
        changes = host.plan()["changes"]
        assert [(c["action"], c["name"], c["cause"]) for c in changes] == [
            ("replace", "follow", "latest moved: 1.0 → 1.1")
        ]
        host.reconcile()
        n = len(answers)
        wait_for(lambda: len(answers) > n + 5, what="embeddings after the switch")
    finally:
        done.set()
        thread.join()
    assert {code for code, _ in answers} == {200}, [a for a in answers if a[0] != 200][:3]
    versions = [v for _, v in answers]
    switch = versions.index("1.1")
    assert set(versions[:switch]) == {"1.0"} and set(versions[switch:]) == {"1.1"}
    code, version, body = embed(url)
    norm = sum(x * x for x in body["data"][0]["embedding"]) ** 0.5
    assert version == "1.1" and abs(norm - 1.0) < 1e-3  # 1.1 serves unit vectors
    # The pinned deployment never moved.
    assert host.container_of("pinned")["Id"] == pinned_container
    assert embed(pinned_url)[1] == "1.0"


@pytest.mark.engine
@pytest.mark.timeout(300, func_only=True)  # (`served` may build an image: minutes)
def test_retirement_warns_in_the_window_then_stops_with_the_reason(served):
    host, _ = served
    host.write(catalog(latest="1.1", retire_10=day(10)), "manifests/models.yaml")
    host.write(docs(config("pinned", version="1.0"), deployment("pinned", "pinned")))
    plan = host.plan()
    warning = f"pinned: model all-minilm-l6-v2:1.0 retires on {day(10)} (in 10 days); suggested replacement: 1.1"
    assert warning in plan["warnings"]
    host.reconcile()
    result = host.cli("status", "--json")
    assert warning in json.loads(result.out)["warnings"]
    assert f"warning: {warning}" in result.err
    assert host.status()["pinned"]["status"] == "RUNNING"

    host.write(catalog(latest="1.1", retire_10=day(0)), "manifests/models.yaml")
    changes = host.plan()["changes"]
    assert [(c["action"], c["cause"]) for c in changes] == [
        ("stop", f"model all-minilm-l6-v2:1.0 retired on {day(0)}")
    ]
    host.reconcile()
    status = host.status()["pinned"]
    assert status["status"] == "STOPPED"
    assert status["statusMessage"] == (
        f"stopped: model all-minilm-l6-v2:1.0 retired on {day(0)}; suggested replacement: 1.1"
    )
    assert host.containers() == []
    assert host.cli("plan", "--detailed-exitcode").code == 0  # stays stopped, no error


def test_the_ai_api_lists_the_catalog_for_sap_sdk(served_catalog):
    from ai_core_sdk.ai_core_v2_client import AICoreV2Client

    root, server = served_catalog
    (root / "manifests/models.yaml").write_text(catalog(latest="1.1", retire_10="2027-06-30"))
    (root / "manifests/app.yaml").write_text(config("follow"))
    client = AICoreV2Client(
        base_url=f"{server.base}/v2",
        token_creator=lambda: "Bearer unused",
        resource_group="default",
    )
    (model,) = client.model.query().resources
    assert (model.model, model.executable_id, model.display_name) == (
        "all-minilm-l6-v2",
        "embeddings-serving",
        "all-MiniLM-L6-v2",
    )
    versions = {v.name: v for v in model.versions}
    assert versions["1.1"].is_latest and not versions["1.0"].is_latest
    assert versions["1.0"].retirement_date == "2027-06-30"
    assert versions["1.0"].suggested_replacements == ["1.1"]
    assert versions["1.1"].context_length == 256 and versions["1.1"].capabilities == ["embeddings"]
