"""The AI API of `reconciler serve`, driven by SAP's own Python SDK (sap-ai-sdk-core), unchanged,
over real HTTP, with real OAuth2 tokens, a real git repository and the real Docker engine (the
tests marked `engine`; those that run no container need none)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from ai_api_client_sdk.exception import (
    AIAPIAuthenticatorAuthorizationException,
    AIAPINotFoundException,
    AIAPIPreconditionFailedException,
)
from ai_api_client_sdk.models.parameter_binding import ParameterBinding
from ai_api_client_sdk.models.status import Status
from ai_api_client_sdk.models.target_status import TargetStatus
from ai_core_sdk.ai_core_v2_client import AICoreV2Client

from tests.conftest import cli, git
from tests.engine_support import Server, configuration, docs, make_root, request, wait_for


def add_client(root: Path, credentials: Path, name: str, *groups: str) -> dict[str, Any]:
    args = [a for g in groups for a in ("-g", g)]
    result = cli(
        "clients", "add", name, *args, "--credentials", credentials, "--root", root, "--json"
    )
    assert result.code == 0, result.err
    return json.loads(result.out)


def serve_api(root: Path, tmp_path: Path) -> tuple[Server, dict[str, Any], dict[str, Any], Path]:
    """Make `root` a git-tracked GitOps root with one configuration, add two clients and start
    `reconciler serve` for it: the server, the clients, the credentials file."""
    (root / "manifests/app.yaml").write_text(docs(configuration("tiny-v1")))
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "initial manifests")
    credentials = tmp_path / "secrets" / "clients.json"
    team_a = add_client(root, credentials, "team-a", "default")
    team_b = add_client(root, credentials, "team-b", "other")
    return Server(root, "--credentials", str(credentials)), team_a, team_b, credentials


@pytest.fixture
def api(host, tmp_path):
    """`serve_api` on a host of the engine (its containers are removed afterwards)."""
    server, team_a, team_b, credentials = serve_api(host.root, tmp_path)
    yield host, server, team_a, team_b, credentials
    server.stop()


@pytest.fixture
def api_root(tmp_path):
    """`serve_api` with no engine, for what runs no container: the root instead of a host."""
    root, _ = make_root(tmp_path)
    server, team_a, team_b, credentials = serve_api(root, tmp_path)
    yield root, server, team_a, team_b, credentials
    server.stop()


def sdk(server: Server, client: dict[str, Any], group: str = "default") -> AICoreV2Client:
    return AICoreV2Client(
        base_url=f"{server.base}/v2",
        auth_url=f"{server.base}/oauth/token",
        client_id=client["clientId"],
        client_secret=client["clientSecret"],
        resource_group=group,
    )


def deploy_running(client: AICoreV2Client, configuration_id: str) -> Any:
    """POST a deployment through the SDK and wait until the API says it is RUNNING."""
    created = client.deployment.create(configuration_id=configuration_id)
    wait_for(
        lambda: client.deployment.get(created.id).status == Status.RUNNING,
        timeout=60,
        what=f"deployment {created.id} to run",
    )
    return created


def token(server: Server, client: dict[str, Any]) -> str:
    body = (
        f"grant_type=client_credentials&client_id={client['clientId']}"
        f"&client_secret={client['clientSecret']}"
    ).encode()
    code, _, raw = request(
        f"{server.base}/oauth/token",
        data=body,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert code == 200, raw
    answer = json.loads(raw)
    assert answer["token_type"] == "bearer" and answer["expires_in"] > 3600
    return answer["access_token"]


@pytest.mark.engine
def test_the_sdk_lists_creates_deploys_stops_and_reads_logs(api):
    host, server, team_a, _, _ = api
    client = sdk(server, team_a)

    scenarios = client.scenario.query()
    assert [s.id for s in scenarios.resources] == ["tiny"]
    executables = client.executable.query(scenario_id="tiny")
    (executable,) = executables.resources
    assert executable.id == "tiny-serving" and executable.deployable
    assert {p.name for p in executable.parameters} >= {"version", "readyDelay"}
    assert [c.id for c in client.configuration.query().resources] == ["tiny-v1"]

    created = client.configuration.create(
        name="tiny-v2 from the sdk",
        scenario_id="tiny",
        executable_id="tiny-serving",
        parameter_bindings=[ParameterBinding(key="version", value="2")],
    )
    assert created.id == "tiny-v2-from-the-sdk"
    path = host.root / "manifests/api/default/configuration-tiny-v2-from-the-sdk.yaml"
    assert "executableId: tiny-serving" in path.read_text()
    assert "AI API: POST /v2/lm/configurations" in git(host.root, "log", "-1", "--format=%B")
    assert git(host.root, "status", "--porcelain", "--", "manifests") == ""  # all committed
    assert client.configuration.count() == 2

    deployment = deploy_running(client, created.id)
    assert deployment.deployment_url == f"{server.base}/v2/inference/deployments/{deployment.id}"
    assert "AI API: POST /v2/lm/deployments" in git(host.root, "log", "-1", "--format=%B")
    got = client.deployment.get(deployment.id)
    assert got.configuration_id == created.id and got.scenario_id == "tiny"
    assert [d.id for d in client.deployment.query(status=Status.RUNNING).resources] == [
        deployment.id
    ]
    assert client.deployment.count(configuration_id=created.id) == 1

    bearer = {"Authorization": f"Bearer {token(server, team_a)}"}
    code, _, body = request(deployment.deployment_url + "/version", headers=bearer)
    assert (code, body) == (200, b"2\n")

    logs = client.deployment.query_logs(deployment.id)
    assert any("serving version 2" in line.msg for line in logs.data.result)

    client.deployment.modify(deployment.id, target_status=TargetStatus.STOPPED)
    assert "targetStatus: STOPPED" in next(
        p.read_text() for p in (host.root / "manifests/api/default").glob("deployment-*.yaml")
    )
    wait_for(
        lambda: client.deployment.get(deployment.id).status == Status.STOPPED,
        timeout=60,
        what="the deployment to stop",
    )
    assert host.containers() == []
    with pytest.raises(AIAPIPreconditionFailedException):
        client.deployment.modify(deployment.id, target_status=TargetStatus.STOPPED)

    client.deployment.delete(deployment.id)
    assert not list((host.root / "manifests/api/default").glob("deployment-*.yaml"))
    assert "AI API: DELETE /v2/lm/deployments" in git(host.root, "log", "-1", "--format=%B")

    def gone() -> bool:
        try:
            client.deployment.get(deployment.id)
        except AIAPINotFoundException:
            return True
        return False

    wait_for(gone, timeout=30, what="the deleted deployment to disappear")


def test_missing_expired_and_forged_tokens_are_401(api_root):
    _, server, team_a, _, credentials = api_root
    url = f"{server.base}/v2/lm/deployments"
    code, headers, body = request(url)
    assert code == 401 and headers["WWW-Authenticate"] == "Bearer"
    assert json.loads(body)["error"]["code"] == "401"

    good = token(server, team_a)
    claims = jwt.decode(good, options={"verify_signature": False})
    forged = jwt.encode(
        {**claims, "sub": team_a["clientId"]}, "not the signing key, " * 4, algorithm="HS256"
    )
    expired_claims = {**claims, "exp": int(time.time()) - 60}
    key = base64.b64decode(json.loads(credentials.read_text())["signingKey"])
    expired = jwt.encode(expired_claims, key, algorithm="HS256")
    for bad in (forged, expired, "garbage"):
        assert request(url, headers={"Authorization": f"Bearer {bad}"})[0] == 401
    assert request(url, headers={"Authorization": f"Bearer {good}"})[0] == 200

    wrong = sdk(server, {**team_a, "clientSecret": "wrong"})
    with pytest.raises(AIAPIAuthenticatorAuthorizationException, match="invalid client"):
        wrong.scenario.query()
    # The gateway checks tokens too.
    gateway = f"{server.base}/v2/inference/deployments/d0123456789abcde/v2"
    assert request(gateway)[0] == 401


@pytest.mark.engine
def test_another_tenants_deployment_is_not_found(api):
    _, server, team_a, team_b, _ = api
    mine = deploy_running(sdk(server, team_a), "tiny-v1")
    theirs = sdk(server, team_b, group="other")
    with pytest.raises(AIAPINotFoundException):
        theirs.deployment.get(mine.id)
    assert theirs.deployment.query().count == 0
    bearer = {"Authorization": f"Bearer {token(server, team_b)}"}
    code, _, body = request(mine.deployment_url + "/version", headers=bearer)
    assert code == 404 and "not found" in json.loads(body)["error"]["message"]
    # team b may not even name team a's resource group
    code, _, _ = request(
        f"{server.base}/v2/lm/deployments", headers={**bearer, "AI-Resource-Group": "default"}
    )
    assert code == 403
    with pytest.raises(AIAPIAuthenticatorAuthorizationException):
        AICoreV2Client(
            base_url=f"{server.base}/v2",
            auth_url=f"{server.base}/oauth/token",
            client_id=team_b["clientId"],
            client_secret=team_b["clientSecret"] + "x",
            resource_group="other",
        ).deployment.query()


def test_a_write_that_would_break_the_manifests_changes_nothing(api_root):
    root, server, team_a, _, _ = api_root
    bearer = {
        "Authorization": f"Bearer {token(server, team_a)}",
        "Content-Type": "application/json",
    }
    before = git(root, "rev-parse", "HEAD")
    body = {
        "name": "broken",
        "executableId": "tiny-serving",
        "scenarioId": "tiny",
        "parameterBindings": [{"key": "no-such-input", "value": "1"}],
    }
    code, _, raw = request(
        f"{server.base}/v2/lm/configurations", data=json.dumps(body).encode(), headers=bearer
    )
    error = json.loads(raw)["error"]
    assert code == 400 and "no-such-input" in error["message"]
    assert git(root, "rev-parse", "HEAD") == before
    assert not (root / "manifests/api").exists()
    code, _, raw = request(
        f"{server.base}/v2/lm/deployments",
        data=json.dumps({"configurationId": "tiny-v1", "ttl": "4.5h"}).encode(),
        headers=bearer,
    )
    assert code == 400 and "ttl" in json.loads(raw)["error"]["message"]
    # A ttl of 5000 digits: refused as input (it was a 500 when int() gave up on it).
    code, _, raw = request(
        f"{server.base}/v2/lm/deployments",
        data=json.dumps({"configurationId": "tiny-v1", "ttl": "9" * 5000 + "d"}).encode(),
        headers=bearer,
    )
    assert code == 400 and "ttl" in json.loads(raw)["error"]["message"]
    assert git(root, "rev-parse", "HEAD") == before


@pytest.mark.engine
def test_metrics_count_inference_requests_and_say_what_is_out_of_sync(api, docker_client):
    _, server, team_a, _, _ = api
    deployment = deploy_running(sdk(server, team_a), "tiny-v1")
    bearer = {"Authorization": f"Bearer {token(server, team_a)}"}
    for _ in range(3):
        assert request(deployment.deployment_url + "/version", headers=bearer)[0] == 200
    _, _, text = request(f"{server.base}/metrics")
    line = f'reconciler_inference_requests_total{{code="200",deployment="{deployment.id}"}} 3.0'
    assert line in text.decode()
    assert "reconciler_reconcile_passes_total" in text.decode()
    synced = f'reconciler_deployment_out_of_sync{{deployment="{deployment.id}"}}'
    assert f"{synced} 0.0" in text.decode()
    # Its container stopped by hand: out of sync (drift), as status --json's syncStatus says.
    (container,) = [
        c
        for c in docker_client.containers(all=True)
        if c["Labels"].get("reconciler.deployment-id") == deployment.id
    ]
    docker_client.stop(container["Id"], timeout=1)
    # (serve may answer from a container list up to routes.RECENT_SECONDS old)
    wait_for(
        lambda: f"{synced} 1.0" in request(f"{server.base}/metrics")[2].decode(),
        what="out of sync in /metrics",
    )


@pytest.mark.engine
def test_schemathesis_finds_no_server_error(api):
    """Fuzz every operation of the published OpenAPI document (coverage, fuzzing and stateful
    phases) with a valid token: no input may cause a 5xx."""
    _, server, team_a, _, _ = api
    bearer = f"Authorization: Bearer {token(server, team_a)}"
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "run",
            f"{server.base}/openapi.json",
            "--header",
            bearer,
            "--header",
            "AI-Resource-Group: default",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "25",
            "--generation-deterministic",
            "--request-timeout",
            "30",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    tail = result.stdout[-3000:] + result.stderr[-2000:]
    assert result.returncode == 0, tail
    assert "Test cases:" in result.stdout and " failed" not in result.stdout, tail
